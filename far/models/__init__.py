"""Models: the FAR, Video DiT and NBP transformers (registry MODELS) and the autoencoders and video tokenizers
(registry AUTOENCODERS)."""
from ..registry import MODELS
from . import autoencoders  # noqa: F401  (registers the autoencoders)
from .far import FAR, FAR_B, FAR_L, FAR_M, FAR_XL
from .far_long import FAR_B_Long, FAR_Long, FAR_M_Long
from .fsq import FSQ
from .kv_cache import SlotKVCache
from .nbp import NBP_3b, NBP_base, NBP_xl, NBPTransformer
from .nbp_tokenizer import NBPTokenizer
from .video_dit import VideoDiT

__all__ = ['FAR', 'FAR_B', 'FAR_M', 'FAR_L', 'FAR_XL', 'FAR_Long', 'FAR_B_Long', 'FAR_M_Long', 'SlotKVCache',
           'NBPTransformer', 'NBP_base', 'NBP_xl', 'NBP_3b', 'NBPTokenizer', 'FSQ', 'VideoDiT', 'build_model']


def build_model(name: str, **kwargs):
    """Build a registered model (``'FAR'``, ``'FAR_B'``, ``'FAR_B_Long'``, ``'NBP_base'``, ...) from keyword
    arguments."""
    return MODELS.get(name)(**kwargs)
