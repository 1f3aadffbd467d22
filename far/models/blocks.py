"""The FAR transformer block: adaLN-zero modulation per frame, RMS-normed q/k attention with RoPE, MLP.

Tokens are kept grouped by frame, ``[B, T, n, D]``, so that per-frame conditioning ``[B, T, D]`` is
projected once per frame and broadcast over the frame's n tokens.

One block class serves both models. FAR feeds one token stream. FAR-Long feeds a second, *long-term*
stream (distant frames, coarsely patchified) that has its own q/k/v/output projections and q/k norms
(``add_*`` / ``norm_added_*`` / ``to_add_out``) and shares everything else; both streams attend jointly,
long-term tokens first. Parameter names are those of the released FAR checkpoints.
"""
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.models.attention import FeedForward
from diffusers.models.embeddings import apply_rotary_emb
from diffusers.models.normalization import RMSNorm

from .attention import FrameCausalAttention
from .kv_cache import SlotLayerKVCache

Rope = Tuple[torch.Tensor, torch.Tensor]


class FrameModulation(nn.Module):
    """adaLN: ``num_chunks`` vectors (shift/scale/gate...) per frame from the frame's conditioning.

    ``[B, T, D]`` in, ``num_chunks`` tensors ``[B, T, 1, D]`` out, ready to broadcast over tokens.
    """

    def __init__(self, dim: int, num_chunks: int):
        super().__init__()
        self.num_chunks = num_chunks
        self.linear = nn.Linear(dim, num_chunks * dim)

    def forward(self, emb: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        return self.linear(F.silu(emb)).unsqueeze(2).chunk(self.num_chunks, dim=-1)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], eps=1e-6) * (1 + scale) + shift


class FrameAttention(nn.Module):
    """Multi-head attention with RMS-normed q/k and 3-axis RoPE; optional long-term stream."""

    def __init__(self, dim: int, num_heads: int, head_dim: int, long_term: bool = False,
                 long_term_out: bool = True):
        super().__init__()
        inner = num_heads * head_dim
        self.num_heads, self.head_dim = num_heads, head_dim
        self.to_q, self.to_k, self.to_v = nn.Linear(dim, inner), nn.Linear(dim, inner), nn.Linear(dim, inner)
        self.norm_q, self.norm_k = RMSNorm(head_dim, eps=1e-6), RMSNorm(head_dim, eps=1e-6)
        self.to_out = nn.ModuleList([nn.Linear(inner, dim)])  # a list only for the checkpoint name `to_out.0`
        self.long_term = long_term
        if long_term:
            self.add_q_proj, self.add_k_proj = nn.Linear(dim, inner), nn.Linear(dim, inner)
            self.add_v_proj = nn.Linear(dim, inner)
            self.norm_added_q, self.norm_added_k = RMSNorm(head_dim, eps=1e-6), RMSNorm(head_dim, eps=1e-6)
            # the released FAR-Long checkpoints have no long-term output projection in the last layer
            self.to_add_out = nn.Linear(inner, dim) if long_term_out else None

    def _heads(self, x: torch.Tensor, linear: nn.Linear) -> torch.Tensor:
        batch, tokens, _ = x.shape
        return linear(x).view(batch, tokens, self.num_heads, self.head_dim).transpose(1, 2)

    def _qkv(self, x, rope, to_q, to_k, to_v, norm_q, norm_k):
        query = apply_rotary_emb(norm_q(self._heads(x, to_q)), rope)
        key = apply_rotary_emb(norm_k(self._heads(x, to_k)), rope)
        return query, key, self._heads(x, to_v)

    def forward(self, x: torch.Tensor, rope: Rope, attend: FrameCausalAttention,
                long: Optional[torch.Tensor] = None, long_rope: Optional[Rope] = None,
                kv_cache: Optional[SlotLayerKVCache] = None) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """``x`` ``[B, S, D]`` (and ``long`` ``[B, S_long, D]``) -> attention outputs of the same shapes."""
        query, key, value = self._qkv(x, rope, self.to_q, self.to_k, self.to_v, self.norm_q, self.norm_k)
        num_long = 0
        if long is not None:
            num_long = long.shape[1]
            long_qkv = self._qkv(long, long_rope, self.add_q_proj, self.add_k_proj, self.add_v_proj,
                                 self.norm_added_q, self.norm_added_k)
            query, key, value = (torch.cat(pair, dim=2) for pair in zip(long_qkv, (query, key, value)))
        if kv_cache is not None:
            key, value = kv_cache.extend(key, value)

        out = attend(query, key, value)
        out = out.transpose(1, 2).reshape(out.shape[0], out.shape[2], -1)
        out_long, out = out[:, :num_long], out[:, num_long:]
        out = self.to_out[0](out)
        if long is None:
            return out, None
        return out, (self.to_add_out(out_long) if self.to_add_out is not None else out_long)


class FARBlock(nn.Module):
    """adaLN-zero transformer block over frame-grouped tokens ``[B, T, n, D]``."""

    def __init__(self, dim: int, num_heads: int, head_dim: int, long_term: bool = False,
                 long_term_out: bool = True):
        super().__init__()
        self.norm1 = FrameModulation(dim, 3)
        self.attn = FrameAttention(dim, num_heads, head_dim, long_term, long_term_out)
        self.norm2 = FrameModulation(dim, 3)
        self.mlp = FeedForward(dim=dim, dim_out=dim, activation_fn='gelu-approximate')

    def forward(self, x: torch.Tensor, emb: torch.Tensor, rope: Rope, attend: FrameCausalAttention,
                long: Optional[torch.Tensor] = None, long_emb: Optional[torch.Tensor] = None,
                long_rope: Optional[Rope] = None,
                kv_cache: Optional[SlotLayerKVCache] = None) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """``x`` ``[B, T, n, D]`` with per-frame ``emb`` ``[B, T, D]``; ``long`` likewise (FAR-Long)."""
        shift, scale, gate = self.norm1(emb)
        h = modulate(x, shift, scale).flatten(1, 2)
        h_long = None
        if long is not None:
            shift_long, scale_long, gate_long = self.norm1(long_emb)
            h_long = modulate(long, shift_long, scale_long).flatten(1, 2)

        a, a_long = self.attn(h, rope, attend, h_long, long_rope, kv_cache)
        x = self._feed_forward(x + gate * a.reshape_as(x), emb)
        if long is not None:
            long = self._feed_forward(long + gate_long * a_long.reshape_as(long), long_emb)
        return x, long

    def _feed_forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        shift, scale, gate = self.norm2(emb)
        return x + gate * self.mlp(modulate(x, shift, scale))
