"""FAR-Long: FAR with a long-term context of coarsely patchified distant frames.

The last ``short_term_ctx_winsize`` frames (the short-term window) are tokenised at full resolution as
in FAR; older frames are patchified with ``context_patch_size`` (e.g. 4x4 latent patches: 4 tokens per
8x8 frame) and pass through their own input, q/k/v and output projections inside the same transformer
blocks (``FARBlock``'s long-term stream). Every token keeps the absolute frame index as its RoPE frame
position, and long-term patches use full-resolution RoPE coordinates (row, column scaled by
``context_patch_size / patch_size``), so attention stays frame-causal over the whole video.

Parameter names are those of the published FAR-Long checkpoints, which load strictly.
"""
import torch
import torch.nn as nn
from diffusers.configuration_utils import register_to_config

from ..registry import MODELS, variant
from ..conditions import Conditions
from .far import FAR
from .frame_transformer import StreamLayout


@MODELS.register()
class FAR_Long(FAR):
    """FAR with long-term context: ``context_patch_size``, the patch size of frames older than the short-term window
    of ``short_term_ctx_winsize`` frames; every other argument is :class:`FAR`'s (``options``)."""

    has_long_term_stream = True
    ignore_for_config = ['options']

    @register_to_config
    def __init__(self, *, context_patch_size: int = 4, **options):
        super().__init__(**options)
        cfg = self.config
        if context_patch_size % cfg.patch_size:
            raise ValueError(f'FAR_Long: context_patch_size={context_patch_size} must be a multiple of '
                             f'patch_size={cfg.patch_size}')
        if cfg.short_term_ctx_winsize < 1:
            raise ValueError(f'FAR_Long: short_term_ctx_winsize must be >= 1, got {cfg.short_term_ctx_winsize}')

    @staticmethod
    def _get_init_keys(input_class) -> set:
        """The config keys of the constructor: its own and those ``options`` hands to FAR (for ``from_config``)."""
        return FAR._get_init_keys(input_class) | FAR._get_init_keys(FAR)

    def _build_long_term_stream(self):
        patch, channels = self.config.context_patch_size, self.config.in_channels
        self.context_embedder = nn.Linear(channels * patch * patch, self.inner_dim)
        self.context_proj_out = nn.Linear(self.inner_dim, patch * patch * self.config.out_channels)

    def initialize_weights(self):
        super().initialize_weights()
        nn.init.zeros_(self.context_proj_out.weight)
        nn.init.zeros_(self.context_proj_out.bias)

    def num_long_term_frames(self, total_frames: int) -> int:
        return max(total_frames - self.config.short_term_ctx_winsize, 0)

    def _kv_cache_tokens(self, num_frames: int, height: int, width: int) -> int:
        window = min(num_frames, self.config.short_term_ctx_winsize)
        long_patch = self.config.context_patch_size
        long_tokens = (num_frames - window) * (height // long_patch) * (width // long_patch)
        return long_tokens + super()._kv_cache_tokens(window, height, width)

    def _check_inputs(self, latents: torch.Tensor, timestep: torch.Tensor, conditions: Conditions) -> torch.Tensor:
        timestep = super()._check_inputs(latents, timestep, conditions)
        patch = self.config.context_patch_size
        if latents.shape[3] % patch or latents.shape[4] % patch:
            raise ValueError(f'FAR_Long: latent size {latents.shape[3]}x{latents.shape[4]} must be divisible '
                             f'by context_patch_size={patch}')
        return timestep

    def stream_layout(self, long_term: bool = False) -> StreamLayout:
        if not long_term:
            return super().stream_layout()
        return StreamLayout(self.config.context_patch_size, self.context_embedder, self.context_proj_out)


# ----- paper sizes (v3 Table 1): 32 latent channels, patch 1, head dim 64 -----
_PAPER = dict(in_channels=32, out_channels=32, patch_size=1, attention_head_dim=64)
FAR_B_Long = MODELS.register(variant(FAR_Long, 'FAR_B_Long', num_layers=12, num_attention_heads=12, **_PAPER))
FAR_M_Long = MODELS.register(variant(FAR_Long, 'FAR_M_Long', num_layers=12, num_attention_heads=16, **_PAPER))
