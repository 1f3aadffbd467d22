"""Preallocated key/value caches, for every transformer layer: ``KVCache`` (frames, growing: FAR's eager
sampler), ``SlotKVCache`` (fixed slots addressed by tensors: FAR's static-shape sampler) and ``TokenKVCache``
(tokens: NBP's block sampler), on the same buffers (``KVBuffers``).

Frames are stored in encoding order along the token axis, after RMS norm and RoPE, so a cached frame is
never recomputed. A forward pass with a cache writes the K/V of the frames it feeds right after the
committed ones (inside the same buffer: no concatenation of the whole cache) and attends to both;
``commit`` then keeps the leading fed frames (the clean context) while the rest (the noisy frame) is
overwritten by the next pass.

FAR-Long uses it as a two-level cache: the long-term frames (level two, few tokens each, append-only)
come first, then the short-term window (level one, full resolution). When the window slides, the
caller truncates the cache to level two and the model re-encodes the window after the new long-term
frame, because every short-term frame attends to all long-term frames.
"""
from typing import Dict, List, Sequence, Tuple

import torch

from .attention import Segment


class LayerKVCache:
    """One layer's view of a :class:`KVCache`."""

    def __init__(self, cache: 'KVCache', index: int):
        self.cache, self.index = cache, index

    def extend(self, key: torch.Tensor, value: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Write ``[B, H, n, head_dim]`` new keys/values after the committed ones; return all of them."""
        cache = self.cache
        start = cache.num_tokens
        end = start + key.shape[2]
        if key.shape[0] != cache.batch_size:
            raise ValueError(f'KV cache was built for batch size {cache.batch_size}, got {key.shape[0]} '
                             '(with classifier-free guidance the batch is doubled)')
        if end > cache.max_tokens:
            raise ValueError(f'KV cache is full: {end} tokens needed, {cache.max_tokens} allocated; '
                             'build it for more frames')
        keys, values = cache.keys[self.index], cache.values[self.index]
        keys[:, :, start:end] = key
        values[:, :, start:end] = value
        return keys[:, :, :end], values[:, :, :end]


class KVBuffers:
    """Preallocated keys/values ``[num_layers, B, H, max_tokens, head_dim]``, written in place by the layers."""

    def __init__(self, num_layers: int, batch_size: int, num_heads: int, head_dim: int, max_tokens: int,
                 device: torch.device, dtype: torch.dtype):
        shape = (num_layers, batch_size, num_heads, max_tokens, head_dim)
        # zeros, not empty: a masked slot never holds NaN that a zero attention weight would spread
        self.keys = torch.zeros(shape, device=device, dtype=dtype)
        self.values = torch.zeros(shape, device=device, dtype=dtype)
        self.batch_size, self.max_tokens = batch_size, max_tokens


class KVCache(KVBuffers):
    """Keys/values ``[num_layers, B, H, max_tokens, head_dim]`` of the frames encoded so far.

    ``segments`` lists the committed frames as ``(first_frame, num_frames, tokens_per_frame)``; the first
    ``num_long_term_frames`` of them are FAR-Long long-term frames (level two).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.segments: List[Segment] = []
        self.num_long_term_frames = 0

    @property
    def num_frames(self) -> int:
        return sum(count for _, count, _ in self.segments)

    @property
    def num_tokens(self) -> int:
        return sum(count * tokens for _, count, tokens in self.segments)

    def layer(self, index: int) -> LayerKVCache:
        return LayerKVCache(self, index)

    def commit(self, segments: Sequence[Segment], num_frames: int, num_long_term_frames: int = 0):
        """Keep the first ``num_frames`` of the frames the last forward pass wrote (its ``segments``)."""
        self.segments += _first_frames(segments, num_frames)
        self.num_long_term_frames += num_long_term_frames

    def truncate(self, num_frames: int):
        """Forget every frame after the first ``num_frames``; their slots are overwritten next."""
        self.segments = _first_frames(self.segments, num_frames)
        self.num_long_term_frames = min(self.num_long_term_frames, num_frames)



class TokenKVCache(KVBuffers):
    """Keys/values of the tokens fed so far (NBP): a pass writes its tokens after the committed ones."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.length = 0  # tokens committed so far = position of the next fed token

    def extend(self, layer: int, key: torch.Tensor, value: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Write ``[B, H, n, head_dim]`` after the committed tokens; return the keys/values up to them."""
        end = self.length + key.shape[2]
        if key.shape[0] != self.batch_size or end > self.max_tokens:
            raise ValueError(f'KV cache holds {self.max_tokens} tokens of batch {self.batch_size}: cannot add '
                             f'{key.shape[2]} tokens of batch {key.shape[0]} after {self.length}')
        self.keys[layer, :, :, self.length:end] = key
        self.values[layer, :, :, self.length:end] = value
        return self.keys[layer, :, :, :end], self.values[layer, :, :, :end]

def _first_frames(segments: Sequence[Segment], num_frames: int) -> List[Segment]:
    kept = []
    for first, count, tokens in segments:
        if num_frames <= 0:
            break
        kept.append((first, min(count, num_frames), tokens))
        num_frames -= count
    return kept


class SlotKVCache(KVBuffers):
    """Keys/values in fixed slots for static-shape sampling: every pass has the same shapes, whatever the frame.

    A pass writes the keys/values of the tokens it feeds into the slots ``write_slots`` and attends over all
    ``num_slots`` slots, masked by ``slot_frames`` (the frame in each slot, -1 for an empty slot; see
    ``far.models.attention.slot_mask``). The sampler plans which frame lives in which slot and updates
    ``slot_frames`` and ``write_slots`` in place before each pass, so a compiled (or CUDA-graph captured) pass
    is replayed for every frame of a rollout. ``rope`` holds the rotary tables of every frame the slots can
    hold, per patch size, gathered by frame index inside the pass.
    """

    def __init__(self, num_layers: int, batch_size: int, num_heads: int, head_dim: int, num_slots: int,
                 device: torch.device, dtype: torch.dtype):
        super().__init__(num_layers, batch_size, num_heads, head_dim, num_slots, device, dtype)
        self.slot_frames = torch.full((num_slots,), -1, dtype=torch.long, device=device)
        self.write_slots = torch.zeros(0, dtype=torch.long, device=device)
        self.rope: Dict[int, Tuple[torch.Tensor, torch.Tensor]] = {}  # patch size -> cos, sin [frames, n, d]
        self.num_slots = num_slots

    def layer(self, index: int) -> 'SlotLayerKVCache':
        return SlotLayerKVCache(self, index)


class SlotLayerKVCache:
    """One layer's view of a :class:`SlotKVCache` (the interface of :class:`LayerKVCache`)."""

    def __init__(self, cache: SlotKVCache, index: int):
        self.cache, self.index = cache, index

    def extend(self, key: torch.Tensor, value: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Write ``[B, H, n, head_dim]`` keys/values into the cache's ``write_slots``; return every slot."""
        keys, values = self.cache.keys[self.index], self.cache.values[self.index]
        keys.index_copy_(2, self.cache.write_slots, key.to(keys.dtype))
        values.index_copy_(2, self.cache.write_slots, value.to(values.dtype))
        return keys, values
