"""FAR: the frame-autoregressive video transformer of "Long-Context Autoregressive Video Modeling with
Next-Frame Prediction" (Gu, Mao, Shou 2025), and its paper sizes FAR-B/M/L/XL.

A clip of latents ``[B, T, C, H, W]`` becomes T frames of tokens. Each frame carries its own timestep
(flow matching, ``-1`` = clean context frame) and condition (class label or per-frame action), which
modulate the frame's tokens through adaLN-zero. Attention is full inside a frame and causal across
frames, with 3-axis RoPE (frame, row, column) and an optional linear temporal bias. The model predicts
the flow-matching velocity ``noise - x0`` of every frame.

Parameter names are those of the published FAR checkpoints, which load strictly; the forward pass
matches the reference implementation numerically (see tests/test_far_model.py).
"""
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.models.modeling_utils import ModelMixin
from einops import rearrange

from ..conditions import Condition, Conditions
from ..registry import MODELS, variant
from .attention import BACKENDS, FrameCausalAttention, Segment, SlotAttention
from .blocks import FARBlock, FrameModulation, Rope, modulate
from .embeddings import FrameRotaryEmbedding, condition_embedding
from .kv_cache import KVCache, SlotKVCache

class TokenStream(NamedTuple):
    """Frames of one patch size, as tokens grouped by frame, with what the blocks need to process them."""
    tokens: torch.Tensor         # [B, T, n, D]
    emb: torch.Tensor            # [B, T, D] per-frame conditioning (timestep + condition)
    rope: Rope                   # cos, sin [T * n, head_dim]
    segment: Optional[Segment]   # (first_frame, T, n); None in a slot pass, whose frames are a tensor
    patch_size: int
    proj_out: nn.Linear


class StreamLayout(NamedTuple):
    """How frames of one stream become tokens: patch size, input projection, output projection."""
    patch_size: int
    embedder: nn.Linear
    proj_out: nn.Linear


@MODELS.register()
class FAR(ModelMixin, ConfigMixin):
    """Frame-autoregressive transformer.

    Args:
        patch_size: spatial patch size of a frame's latent.
        in_channels / out_channels: latent channels.
        num_layers, attention_head_dim, num_attention_heads: transformer size (width = heads x head dim).
        axes_dims_rope: RoPE channels of the (frame, row, column) axes; they sum to the head dim.
        slope_scale: linear temporal attention bias ``slope * (j - i)`` from a query of frame i to a key
            of frame j <= i (0 disables it). ``model.slope_scale`` overrides it at test time.
        short_term_ctx_winsize: FAR-Long's short-term window (frames at full resolution); the trainer
            computes the loss on the last this-many frames of a clip.
        condition_cfg: ``None``, ``{'type': 'label', 'num_classes': N}`` or
            ``{'type': 'action', 'num_action_classes': N}`` (see ``far.conditions``); id N is the null id of
            guidance. Parsed once into ``model.condition``.
        condition_dropout: probability of replacing a label/action by the null id while training
            (0 turns it off).
        reference_dtype_rounding: when the model computes in a 16-bit dtype (bf16 autocast or weights), round
            the timesteps and the RoPE positions to that dtype before embedding them, as the released FAR
            checkpoints saw them in bf16 (the 1000 training timesteps collapse to 506 values; frame 257 reads
            256). Off: exact positions, the better choice for new training.
    """

    _supports_gradient_checkpointing = True
    _no_split_modules = ['FARBlock']
    has_long_term_stream = False  # FAR-Long adds the long-term stream
    condition_kinds = ('label', 'action')
    family = 'FAR'  # what samplers and trainers accept (model_families)

    @register_to_config
    def __init__(
        self,
        *,
        patch_size: int = 1,
        in_channels: int = 32,
        out_channels: int = 32,
        num_layers: int = 12,
        attention_head_dim: int = 64,
        num_attention_heads: int = 12,
        axes_dims_rope: List[int] = (16, 24, 24),
        slope_scale: float = 0.0,
        short_term_ctx_winsize: int = 16,
        condition_cfg: Optional[dict] = None,
        condition_dropout: float = 0.1,
        reference_dtype_rounding: bool = False,
    ):
        super().__init__()
        name = type(self).__name__
        if sum(axes_dims_rope) != attention_head_dim:
            raise ValueError(f'{name}: axes_dims_rope {list(axes_dims_rope)} must sum to attention_head_dim '
                             f'({attention_head_dim})')
        try:
            self.condition = Condition.parse(condition_cfg, self.condition_kinds)
        except ValueError as error:
            raise ValueError(f'{name}: {error}') from None
        dim = num_attention_heads * attention_head_dim
        self.inner_dim = dim

        # ----- embeddings: tokens, per-frame timestep and condition, rotary positions -----
        self.x_embedder = nn.Linear(in_channels * patch_size * patch_size, dim)
        self.time_proj = Timesteps(num_channels=256, flip_sin_to_cos=True, downscale_freq_shift=1)
        self.timestep_embedder = TimestepEmbedding(in_channels=256, time_embed_dim=dim)
        if self.condition is not None:
            embedder = condition_embedding(self.condition.num_classes, dim, condition_dropout)
            setattr(self, f'{self.condition.kind}_embedder', embedder)  # label_embedder / action_embedder
        self.rope = FrameRotaryEmbedding(axes_dims_rope)

        # ----- transformer -----
        self.transformer_blocks = nn.ModuleList([
            FARBlock(dim, num_attention_heads, attention_head_dim, long_term=self.has_long_term_stream,
                     long_term_out=i < num_layers - 1)
            for i in range(num_layers)
        ])

        # ----- output: adaLN (scale, shift) + linear back to patches -----
        self.norm_out = FrameModulation(dim, 2)
        self.proj_out = nn.Linear(dim, patch_size * patch_size * out_channels)
        self._build_long_term_stream()

        self.slope_scale = slope_scale
        self.attention_backend: Optional[str] = None  # None: FlexAttention on CUDA, SDPA elsewhere
        self.gradient_checkpointing = False
        self._attention_cache: Dict[tuple, FrameCausalAttention] = {}
        self.initialize_weights()

    def _build_long_term_stream(self):
        """FAR has no long-term stream (see FAR_Long)."""

    def initialize_weights(self):
        """DiT initialisation: Xavier linears, small embeddings, zero adaLN and output layers."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        if self.condition is not None:
            nn.init.normal_(getattr(self, f'{self.condition.kind}_embedder').embedding_table.weight, std=0.02)
        nn.init.normal_(self.timestep_embedder.linear_1.weight, std=0.02)
        nn.init.normal_(self.timestep_embedder.linear_2.weight, std=0.02)
        zero = [self.norm_out.linear, self.proj_out]
        zero += [m for block in self.transformer_blocks for m in (block.norm1.linear, block.norm2.linear)]
        for linear in zero:
            nn.init.zeros_(linear.weight)
            nn.init.zeros_(linear.bias)

    # ----- frame layout -----

    def num_long_term_frames(self, total_frames: int) -> int:
        """How many leading frames of a ``total_frames`` clip are long-term context: none in FAR."""
        return 0

    def make_kv_cache(self, batch_size: int, num_frames: int, height: int, width: int) -> KVCache:
        """An empty KV cache for sampling up to ``num_frames`` frames of ``height x width`` latents."""
        cfg, device = self.config, self.device
        # keys/values are stored in the dtype they are computed in (the autocast dtype under autocast)
        dtype = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else self.dtype
        return KVCache(cfg.num_layers, batch_size, cfg.num_attention_heads, cfg.attention_head_dim,
                       self._kv_cache_tokens(num_frames, height, width), device, dtype)

    def _kv_cache_tokens(self, num_frames: int, height: int, width: int) -> int:
        return num_frames * self.tokens_per_frame(height, width)

    def tokens_per_frame(self, height: int, width: int, long_term: bool = False) -> int:
        patch = self.stream_layout(long_term).patch_size
        return (height // patch) * (width // patch)

    def make_slot_cache(self, batch_size: int, num_frames: int, height: int, width: int) -> SlotKVCache:
        """An empty static-shape cache for sampling up to ``num_frames`` frames (``far.pipelines.static_sampling``):
        slots for the long-term frames (FAR-Long), then the short-term window, and the rotary tables of every
        frame."""
        cfg, device = self.config, self.device
        dtype = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else self.dtype
        cache = SlotKVCache(cfg.num_layers, batch_size, cfg.num_attention_heads, cfg.attention_head_dim,
                            self._kv_cache_tokens(num_frames, height, width), device, dtype)
        for long_term in ((False, True) if self.has_long_term_stream else (False,)):
            patch = self.stream_layout(long_term).patch_size
            rows, cols = height // patch, width // patch
            cos, sin = self.rope(0, num_frames, rows, cols, patch // cfg.patch_size, device,
                                 round_to=self.rounding_dtype())
            cache.rope[patch] = (cos.view(num_frames, rows * cols, -1), sin.view(num_frames, rows * cols, -1))
        return cache

    def _attention(self, q_segments: Sequence[Segment], k_segments: Sequence[Segment],
                   device: torch.device) -> FrameCausalAttention:
        """Attention (and its masks) for a token layout, built once per layout."""
        backend = self.attention_backend or ('flex' if device.type == 'cuda' else 'sdpa')
        if backend not in BACKENDS:
            raise ValueError(f"{type(self).__name__}.attention_backend must be None or one of {BACKENDS}, "
                             f"got '{backend}'")
        key = (tuple(q_segments), tuple(k_segments), float(self.slope_scale), backend, str(device))
        if key not in self._attention_cache:
            if len(self._attention_cache) >= 16:
                self._attention_cache.pop(next(iter(self._attention_cache)))
            self._attention_cache[key] = FrameCausalAttention(q_segments, k_segments, self.slope_scale,
                                                              backend, device)
        return self._attention_cache[key]

    def condition_frames(self, conditions: Conditions, start: int, end: Optional[int] = None) -> Conditions:
        """The conditions of frames ``start:end`` (actions sliced, a label kept; nothing for no condition)."""
        return None if self.condition is None else self.condition.frames(conditions, start, end)

    # ----- embedding and output -----

    def rounding_dtype(self) -> Optional[torch.dtype]:
        """The 16-bit dtype timesteps and positions are rounded to (``reference_dtype_rounding``), or None."""
        if not self.config.reference_dtype_rounding:
            return None
        device = self.x_embedder.weight.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else self.dtype
        return dtype if dtype in (torch.bfloat16, torch.float16) else None

    def _frame_embedding(self, timestep: torch.Tensor, conditions: Conditions) -> torch.Tensor:
        """Per-frame conditioning ``[B, T, D]``: timestep embedding + label/action embedding."""
        batch, frames = timestep.shape
        dtype = self.x_embedder.weight.dtype
        rounding = self.rounding_dtype()
        if rounding is not None:
            timestep = timestep.to(rounding).to(timestep.dtype)
        emb = self.timestep_embedder(self.time_proj(timestep.reshape(-1)).to(dtype)).unflatten(0, (batch, frames))
        if self.condition is None:
            return emb
        if not self.condition.per_frame:
            return emb + self.label_embedder(conditions['label'])[:, None]
        # one dropout draw per frame, as in training of the released checkpoints
        return emb + self.action_embedder(conditions['action'].reshape(-1)).unflatten(0, (batch, frames))

    def stream_layout(self, long_term: bool = False) -> StreamLayout:
        """FAR has one stream (FAR-Long adds the long-term one)."""
        return StreamLayout(self.config.patch_size, self.x_embedder, self.proj_out)

    def _fed_long_term_frames(self, first_frame: int, num_frames: int, kv_cache: Optional[KVCache]) -> int:
        """How many of the fed frames are long-term frames: none in FAR."""
        return 0

    def _tokens(self, latents: torch.Tensor, layout: StreamLayout) -> torch.Tensor:
        """``[B, T, C, H, W]`` -> embedded patches ``[B, T, n, D]``."""
        p = layout.patch_size
        patches = rearrange(latents.to(layout.embedder.weight.dtype), 'b t c (h p) (w q) -> b t (h w) (c p q)',
                            p=p, q=p)
        return layout.embedder(patches)

    def _stream(self, latents: torch.Tensor, timestep: torch.Tensor, conditions: Conditions, first_frame: int,
                layout: StreamLayout) -> TokenStream:
        _, frames, _, height, width = latents.shape
        rows, cols = height // layout.patch_size, width // layout.patch_size
        # RoPE positions in units of the full-resolution patch, so coarse patches share the same grid
        rope = self.rope(first_frame, frames, rows, cols, layout.patch_size // self.config.patch_size,
                         latents.device, round_to=self.rounding_dtype())
        return TokenStream(self._tokens(latents, layout), self._frame_embedding(timestep, conditions), rope,
                           (first_frame, frames, rows * cols), layout.patch_size, layout.proj_out)

    def _slot_stream(self, latents: torch.Tensor, timestep: torch.Tensor, conditions: Conditions,
                     frames: torch.Tensor, layout: StreamLayout, cache: SlotKVCache) -> TokenStream:
        """A stream whose frame indices are a tensor: its rotary rows are gathered from the cache's tables."""
        cos, sin = cache.rope[layout.patch_size]                        # [F, n, d]
        rope = (cos[frames].flatten(0, 1), sin[frames].flatten(0, 1))   # [T * n, d]
        return TokenStream(self._tokens(latents, layout), self._frame_embedding(timestep, conditions), rope,
                           None, layout.patch_size, layout.proj_out)

    def _streams(self, latents: torch.Tensor, timestep: torch.Tensor, conditions: Conditions, num_long: int,
                 build) -> Tuple[TokenStream, Optional[TokenStream]]:
        """The fed frames as (short-term stream, long-term stream or None) when their first ``num_long`` are
        long-term frames; ``build(latents, timestep, conditions, offset, layout)`` makes one stream."""
        short = build(latents[:, num_long:], timestep[:, num_long:], self.condition_frames(conditions, num_long),
                      num_long, self.stream_layout())
        if num_long == 0:
            return short, None
        # long-term frames are embedded at twice their timestep (a clean one at -2), as the released
        # FAR-Long models were trained
        long = build(latents[:, :num_long], 2 * timestep[:, :num_long], self.condition_frames(conditions, 0, num_long),
                     0, self.stream_layout(long_term=True))
        return short, long

    def _transform(self, short: TokenStream, long: Optional[TokenStream], attend, kv_cache):
        """The transformer blocks over both streams: ``(x [B, T, n, D], x_long or None)``."""
        x, x_long, long_emb, long_rope = short.tokens, None, None, None
        if long is not None:
            x_long, long_emb, long_rope = long.tokens, long.emb, long.rope
        for index, block in enumerate(self.transformer_blocks):
            layer_cache = kv_cache.layer(index) if kv_cache is not None else None
            args = (x, short.emb, short.rope, attend, x_long, long_emb, long_rope, layer_cache)
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                x, x_long = self._gradient_checkpointing_func(block, *args)
            else:
                x, x_long = block(*args)
        return x, x_long

    def _unembed(self, x: torch.Tensor, stream: TokenStream, height: int) -> torch.Tensor:
        scale, shift = self.norm_out(stream.emb)
        patches = stream.proj_out(modulate(x, shift, scale))
        p = stream.patch_size
        return rearrange(patches, 'b t (h w) (c p q) -> b t c (h p) (w q)', h=height // p, p=p, q=p)

    # ----- forward -----

    def _check_inputs(self, latents: torch.Tensor, timestep: torch.Tensor,
                      conditions: Conditions, kv_cache: Optional[KVCache],
                      cache_frames: int) -> torch.Tensor:
        """Validate the inputs; return per-frame timesteps ``[B, T]``."""
        name, cfg = type(self).__name__, self.config
        if latents.ndim != 5 or latents.shape[2] != cfg.in_channels:
            raise ValueError(f'{name}: latents must be [B, T, {cfg.in_channels}, H, W], got {tuple(latents.shape)}')
        batch, frames, _, height, width = latents.shape
        if height % cfg.patch_size or width % cfg.patch_size:
            raise ValueError(f'{name}: latent size {height}x{width} must be divisible by patch_size={cfg.patch_size}')
        if timestep.shape == (batch,):
            timestep = timestep[:, None].expand(batch, frames)
        if timestep.shape != (batch, frames):
            raise ValueError(f'{name}: timestep must be [B] or [B, T] = [{batch}, {frames}], '
                             f'got {tuple(timestep.shape)}')
        if self.condition is not None:
            self.condition.check(conditions, batch, frames, name)
        if cache_frames and (kv_cache is None or not 0 <= cache_frames <= frames):
            raise ValueError(f'{name}: cache_frames={cache_frames} needs a kv_cache and at most {frames} frames')
        return timestep

    def forward(
        self,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        conditions: Conditions = None,
        kv_cache: Optional[KVCache] = None,
        cache_frames: int = 0,
        return_dict: bool = True,
    ):
        """Velocity ``noise - x0`` of every fed frame, ``[B, T, C, H, W]``.

        Args:
            latents: ``[B, T, C, H, W]`` noisy or clean frames.
            timestep: ``[B, T]`` (or ``[B]``) in [0, 1000); ``-1`` marks a clean context frame.
            conditions: ``{'label': [B]}``, ``{'action': [B, T]}`` or ``None``, as configured.
            kv_cache: frames already encoded; the fed frames continue them (frame index = cached
                frames + position) and attend to them. Their keys/values are written into the cache.
            cache_frames: how many leading fed frames stay in ``kv_cache`` (the clean ones).
        """
        timestep = self._check_inputs(latents, timestep, conditions, kv_cache, cache_frames)
        height = latents.shape[3]
        first_frame = 0 if kv_cache is None else kv_cache.num_frames
        num_long = self._fed_long_term_frames(first_frame, latents.shape[1], kv_cache)

        def build(frames, steps, conds, offset, layout):
            return self._stream(frames, steps, conds, first_frame + offset, layout)

        short, long = self._streams(latents, timestep, conditions, num_long, build)

        # long-term tokens first, as in the released FAR-Long models
        segments = ([long.segment] if long is not None else []) + [short.segment]
        cached = kv_cache.segments if kv_cache is not None else []
        attend = self._attention(segments, cached + segments, latents.device).prepare(short.tokens.dtype)
        x, x_long = self._transform(short, long, attend, kv_cache)
        if kv_cache is not None:
            num_long = long.segment[1] if long is not None else 0
            kv_cache.commit(segments, cache_frames, num_long_term_frames=min(cache_frames, num_long))

        out = self._unembed(x, short, height)
        if long is not None:
            out = torch.cat([self._unembed(x_long, long, height), out], dim=1)
        if not return_dict:
            return (out,)
        return Transformer2DModelOutput(sample=out)


    def forward_slots(self, latents: torch.Tensor, timestep: torch.Tensor, conditions: Conditions, *,
                      cache: SlotKVCache, frames: torch.Tensor, num_long_term: int = 0) -> torch.Tensor:
        """One static-shape sampling pass (see ``SlotKVCache``): the velocity of the fed short-term frames.

        Args:
            latents: ``[B, m, C, H, W]`` fed frames; the first ``num_long_term`` are long-term frames (FAR-Long).
            timestep: ``[B, m]`` (``-1`` for a clean frame).
            conditions: the conditions of the fed frames.
            cache: their keys/values go to ``cache.write_slots`` (long-term tokens first); they attend to every
                slot of a frame up to their own (``cache.slot_frames``).
            frames: ``[m]`` frame index of each fed frame (its RoPE position).

        Returns ``[B, m - num_long_term, C, H, W]``. Shapes depend only on ``m`` and ``num_long_term``.
        """
        height = latents.shape[3]

        def build(part, steps, conds, offset, layout):
            return self._slot_stream(part, steps, conds, frames[offset:offset + part.shape[1]], layout, cache)

        short, long = self._streams(latents, timestep, conditions, num_long_term, build)
        streams = ([long] if long is not None else []) + [short]
        fed = [frames[:num_long_term], frames[num_long_term:]][-len(streams):]
        query_frames = torch.cat([f.repeat_interleave(s.tokens.shape[2]) for f, s in zip(fed, streams)])
        dtype = short.tokens.dtype if short.tokens.numel() else long.tokens.dtype
        attend = SlotAttention(query_frames, cache.slot_frames, self.slope_scale, dtype)
        x, _ = self._transform(short, long, attend, cache)
        return self._unembed(x, short, height)

# ----- paper sizes (v3 Table 1): 32 latent channels, patch 1, head dim 64 -----
_PAPER = dict(in_channels=32, out_channels=32, patch_size=1, attention_head_dim=64)
FAR_B = MODELS.register(variant(FAR, 'FAR_B', num_layers=12, num_attention_heads=12, **_PAPER))
FAR_M = MODELS.register(variant(FAR, 'FAR_M', num_layers=12, num_attention_heads=16, **_PAPER))
FAR_L = MODELS.register(variant(FAR, 'FAR_L', num_layers=24, num_attention_heads=16, **_PAPER))
FAR_XL = MODELS.register(variant(FAR, 'FAR_XL', num_layers=28, num_attention_heads=18, **_PAPER))
