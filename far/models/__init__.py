"""Models: the FAR transformers (registry MODELS) and the latent autoencoders (registry AUTOENCODERS)."""
from ..registry import MODELS
from . import autoencoders  # noqa: F401  (registers the autoencoders)
from .far import FAR, FAR_B, FAR_L, FAR_M, FAR_XL
from .far_long import FAR_B_Long, FAR_Long, FAR_M_Long
from .kv_cache import KVCache

__all__ = ['FAR', 'FAR_B', 'FAR_M', 'FAR_L', 'FAR_XL', 'FAR_Long', 'FAR_B_Long', 'FAR_M_Long', 'KVCache',
           'build_model']


def build_model(name: str, **kwargs):
    """Build a registered model (``'FAR'``, ``'FAR_B'``, ``'FAR_B_Long'``, ...) from keyword arguments."""
    return MODELS.get(name)(**kwargs)
