"""FAR: the frame-autoregressive video transformer of "Long-Context Autoregressive Video Modeling with
Next-Frame Prediction" (Gu, Mao, Shou 2025), and its paper sizes FAR-B/M/L/XL.

A ``FrameTransformer`` whose attention is full inside a frame and causal across frames, with an optional linear
temporal bias, and which samples frame by frame through a KV cache (``forward_cached``).

Parameter names are those of the published FAR checkpoints, which load strictly; the forward pass
matches the reference implementation numerically (see tests/test_far_model.py).
"""
from typing import Sequence

import torch

from ..conditions import Conditions
from ..registry import MODELS, variant
from .attention import BACKENDS, FrameCausalAttention, Segment
from .frame_transformer import FrameTransformer, StreamLayout, TokenStream
from .kv_cache import FrameIndex, SlotKVCache, select_frames


@MODELS.register()
class FAR(FrameTransformer):
    """Frame-autoregressive transformer. Arguments as :class:`FrameTransformer`."""

    attention = 'frame_causal'
    supports_kv_cache = True
    family = 'FAR'  # what samplers and trainers accept (model_families)

    def _kv_cache_tokens(self, num_frames: int, height: int, width: int) -> int:
        return num_frames * self.tokens_per_frame(height, width)


    def make_slot_cache(self, batch_size: int, num_frames: int, height: int, width: int) -> SlotKVCache:
        """An empty cache for sampling up to ``num_frames`` frames (``far.pipelines.cached_sampling``): slots for the
        long-term frames (FAR-Long) and the short-term window, and the rotary tables of every frame."""
        cfg, device = self.config, self.device
        cache = SlotKVCache(cfg.num_layers, batch_size, cfg.num_attention_heads, cfg.attention_head_dim,
                            self._kv_cache_tokens(num_frames, height, width), device, self.compute_dtype())
        for long_term in ((False, True) if self.has_long_term_stream else (False,)):
            patch = self.stream_layout(long_term).patch_size
            rows, cols = height // patch, width // patch
            cos, sin = self.rope(0, num_frames, rows, cols, patch // cfg.patch_size, device,
                                 round_to=self.rounding_dtype())
            cache.rope[patch] = (cos.view(num_frames, rows * cols, -1), sin.view(num_frames, rows * cols, -1))
        return cache

    def attention_for(self, q_segments: Sequence[Segment], k_segments: Sequence[Segment], device: torch.device,
                      slope: float) -> FrameCausalAttention:
        """Attention (and its masks) of a token layout with temporal bias ``slope``, built once per layout."""
        backend = self.attention_backend or ('flex' if device.type == 'cuda' else 'sdpa')
        if backend not in BACKENDS:
            raise ValueError(f"{type(self).__name__}.attention_backend must be None or one of {BACKENDS}, "
                             f"got '{backend}'")
        key = (tuple(q_segments), tuple(k_segments), float(slope), backend, str(device))
        if key not in self._attention_cache:
            if len(self._attention_cache) >= 16:
                self._attention_cache.pop(next(iter(self._attention_cache)))
            self._attention_cache[key] = FrameCausalAttention(q_segments, k_segments, slope,
                                                              backend, device)
        return self._attention_cache[key]


    def _cached_stream(self, latents: torch.Tensor, timestep: torch.Tensor, conditions: Conditions,
                       frames: FrameIndex, layout: StreamLayout, cache: SlotKVCache) -> TokenStream:
        """A stream of a cached pass: its rotary rows are read from the cache's tables."""
        cos, sin = cache.rope[layout.patch_size]                        # [F, n, d]
        rope = tuple(select_frames(table, 0, frames).flatten(0, 1) for table in (cos, sin))  # [T * n, d]
        return TokenStream(self._tokens(latents, layout), self._frame_embedding(timestep, conditions), rope,
                           None, layout.patch_size, layout.proj_out)


    def forward_cached(self, latents: torch.Tensor, timestep: torch.Tensor, conditions: Conditions, *,
                       cache: SlotKVCache, frames: FrameIndex, attend, num_long_term: int = 0) -> torch.Tensor:
        """One pass of cached sampling (``far.pipelines.cached_sampling``): the velocity of the fed short-term frames.

        Args:
            latents: ``[B, m, C, H, W]`` fed frames; the first ``num_long_term`` are long-term frames (FAR-Long).
            timestep: ``[B, m]`` (``-1`` for a clean frame).
            conditions: the conditions of the fed frames.
            cache: their keys/values go to ``cache.write`` (long-term tokens first); they attend to the visible slots.
            frames: the ``m`` RoPE frame positions (a range, or an index tensor in a compiled pass).
            attend: the attention of the fed tokens over the visible slots (its mask and temporal bias).

        Returns ``[B, m - num_long_term, C, H, W]``.
        """
        height = latents.shape[3]

        def build(part, steps, conds, offset, layout):
            return self._cached_stream(part, steps, conds, frames[offset:offset + part.shape[1]], layout, cache)

        short, long = self._streams(latents, timestep, conditions, num_long_term, build)
        x, _ = self._transform(short, long, attend, cache)
        return self._unembed(x, short, height)


# ----- paper sizes (v3 Table 1): 32 latent channels, patch 1, head dim 64 -----
_PAPER = dict(in_channels=32, out_channels=32, patch_size=1, attention_head_dim=64)
FAR_B = MODELS.register(variant(FAR, 'FAR_B', num_layers=12, num_attention_heads=12, **_PAPER))
FAR_M = MODELS.register(variant(FAR, 'FAR_M', num_layers=12, num_attention_heads=16, **_PAPER))
FAR_L = MODELS.register(variant(FAR, 'FAR_L', num_layers=24, num_attention_heads=16, **_PAPER))
FAR_XL = MODELS.register(variant(FAR, 'FAR_XL', num_layers=28, num_attention_heads=18, **_PAPER))
