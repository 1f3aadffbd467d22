"""The transformer over frames that FAR, FAR-Long and the Video DiT share: a clip of latents ``[B, T, C, H, W]``
becomes T frames of tokens. Each frame carries its own timestep (flow matching, ``-1`` = clean context frame) and
condition (class label or per-frame action), which modulate the frame's tokens through adaLN-zero; 3-axis RoPE
(frame, row, column); the model predicts the flow-matching velocity ``noise - x0`` of every frame. How frames
attend to each other is the family's (``FAR``: causal across frames; ``VideoDiT``: the whole clip).

Parameter names are those of the published FAR checkpoints, which load strictly.
"""
from typing import ClassVar, Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.models.modeling_utils import ModelMixin
from einops import rearrange

from ..conditions import Condition, Conditions
from .attention import Segment
from .blocks import FARBlock, FrameModulation, Rope, modulate
from .embeddings import FrameRotaryEmbedding, condition_embedding


class TokenStream(NamedTuple):
    """Frames of one patch size, as tokens grouped by frame, with what the blocks need to process them."""
    tokens: torch.Tensor         # [B, T, n, D]
    emb: torch.Tensor            # [B, T, D] per-frame conditioning (timestep + condition)
    rope: Rope                   # cos, sin [T * n, head_dim]
    segment: Optional[Segment]   # (first_frame, T, n); None in a cached pass
    patch_size: int
    proj_out: nn.Linear


class StreamLayout(NamedTuple):
    """How frames of one stream become tokens: patch size, input projection, output projection."""
    patch_size: int
    embedder: nn.Linear
    proj_out: nn.Linear


class FrameTransformer(ModelMixin, ConfigMixin):
    """A transformer over frames of latent tokens: per-frame embeddings, ``FARBlock``s, per-frame unembedding.

    A family says how its frames attend to each other (``attention_for``) and declares what it is and supports:
    ``family`` (the name samplers and trainers accept, ``model_families``), ``attention`` (``'frame_causal'`` or
    ``'full'``), ``supports_kv_cache`` (cached sampling, ``far.pipelines.cached_sampling``),
    ``has_long_term_stream`` (FAR-Long's coarse distant frames) and ``condition_kinds``. Samplers, trainers and
    checks read these declarations.

    Args:
        patch_size: spatial patch size of a frame's latent.
        in_channels / out_channels: latent channels.
        num_layers, attention_head_dim, num_attention_heads: transformer size (width = heads x head dim).
        axes_dims_rope: RoPE channels of the (frame, row, column) axes; they sum to the head dim.
        slope_scale: linear temporal attention bias ``slope * (j - i)`` from a query of frame i to a key
            of frame j <= i (0 disables it) in ``forward``; samplers pass their own (``FARSampling.slope_scale``).
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
    family: ClassVar[str]
    attention: ClassVar[str]
    supports_kv_cache: ClassVar[bool] = False
    has_long_term_stream: ClassVar[bool] = False
    condition_kinds: ClassVar[Tuple[str, ...]] = ('label', 'action')

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
        if self.has_long_term_stream:
            self._build_long_term_stream()

        self.slope_scale = slope_scale
        self.attention_backend: Optional[str] = None  # None: FlexAttention on CUDA, SDPA elsewhere
        self.gradient_checkpointing = False
        self._attention_cache: Dict[tuple, object] = {}  # attention_for's, per token layout
        self.initialize_weights()

    def _build_long_term_stream(self):
        """The long-term stream's own modules (``has_long_term_stream``), built before the weights are initialised so
        that a seed gives the same initial weights as ever."""

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
        """How many leading frames of a ``total_frames`` clip are long-term context (none without the stream)."""
        return 0

    def attention_for(self, q_segments: Sequence[Segment], k_segments: Sequence[Segment], device: torch.device,
                      slope: float):
        """The attention of query tokens (``q_segments``) over key tokens (``k_segments``) with temporal bias
        ``slope``: a callable ``(query, key, value) -> output`` with ``prepare(dtype)``; each family has its own."""
        raise NotImplementedError(f'{type(self).__name__} does not say how its frames attend (attention_for)')

    def tokens_per_frame(self, height: int, width: int, long_term: bool = False) -> int:
        patch = self.stream_layout(long_term).patch_size
        return (height // patch) * (width // patch)

    def condition_frames(self, conditions: Conditions, start: int, end: Optional[int] = None) -> Conditions:
        """The conditions of frames ``start:end`` (actions sliced, a label kept; nothing for no condition)."""
        return None if self.condition is None else self.condition.frames(conditions, start, end)

    # ----- embedding and output -----

    def rounding_dtype(self) -> Optional[torch.dtype]:
        """The 16-bit dtype timesteps and positions are rounded to (``reference_dtype_rounding``), or None."""
        if not self.config.reference_dtype_rounding:
            return None
        dtype = self.compute_dtype()
        return dtype if dtype in (torch.bfloat16, torch.float16) else None

    def compute_dtype(self) -> torch.dtype:
        """The dtype the blocks compute in: autocast's when it is on for the model's device, else the weights'."""
        device = self.x_embedder.weight.device.type
        return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else self.x_embedder.weight.dtype

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
        """The full-resolution stream (FAR-Long adds the long-term one)."""
        return StreamLayout(self.config.patch_size, self.x_embedder, self.proj_out)

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

    def _check_inputs(self, latents: torch.Tensor, timestep: torch.Tensor, conditions: Conditions) -> torch.Tensor:
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
        return timestep

    def forward(self, latents: torch.Tensor, timestep: torch.Tensor, conditions: Conditions = None,
                return_dict: bool = True, slope_scale: Optional[float] = None):
        """Velocity ``noise - x0`` of every frame, ``[B, T, C, H, W]`` (the whole clip, no cache: training and
        uncached sampling).

        Args:
            latents: ``[B, T, C, H, W]`` noisy or clean frames.
            timestep: ``[B, T]`` (or ``[B]``) in [0, 1000); ``-1`` marks a clean context frame.
            conditions: ``{'label': [B]}``, ``{'action': [B, T]}`` or ``None``, as configured.
            slope_scale: the temporal attention bias (``None``: the model's ``slope_scale``).
        """
        timestep = self._check_inputs(latents, timestep, conditions)
        slope = self.slope_scale if slope_scale is None else slope_scale
        height = latents.shape[3]
        num_long = self.num_long_term_frames(latents.shape[1])

        def build(frames, steps, conds, offset, layout):
            return self._stream(frames, steps, conds, offset, layout)

        short, long = self._streams(latents, timestep, conditions, num_long, build)
        # long-term tokens first, as in the released FAR-Long models
        segments = ([long.segment] if long is not None else []) + [short.segment]
        attend = self.attention_for(segments, segments, latents.device, slope).prepare(short.tokens.dtype)
        x, x_long = self._transform(short, long, attend, None)

        out = self._unembed(x, short, height)
        if long is not None:
            out = torch.cat([self._unembed(x_long, long, height), out], dim=1)
        if not return_dict:
            return (out,)
        return Transformer2DModelOutput(sample=out)
