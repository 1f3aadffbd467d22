"""Preallocated key/value caches, for every transformer layer: ``SlotKVCache`` (frames in slots: FAR's cached
sampler, ``far.pipelines.cached_sampling``) and ``TokenKVCache`` (tokens: NBP's block sampler), on the same buffers
(``KVBuffers``).

Keys and values are stored after RMS norm and RoPE, so a cached frame is never recomputed.
"""
from typing import Dict, Optional, Tuple, Union

import torch

FrameIndex = Union[range, torch.Tensor]  # frames of a pass: a range (eager) or an index tensor (compiled)


def select_frames(tensor: torch.Tensor, dim: int, frames: FrameIndex) -> torch.Tensor:
    """``tensor``'s rows ``frames`` along ``dim``: a view for a range, a gather for an index tensor."""
    if isinstance(frames, range):
        return tensor.narrow(dim, frames.start, len(frames))
    return tensor.index_select(dim, frames)


class KVBuffers:
    """Preallocated keys/values ``[num_layers, B, H, max_tokens, head_dim]``, written in place by the layers."""

    def __init__(self, num_layers: int, batch_size: int, num_heads: int, head_dim: int, max_tokens: int,
                 device: torch.device, dtype: torch.dtype):
        shape = (num_layers, batch_size, num_heads, max_tokens, head_dim)
        # zeros, not empty: a masked slot never holds NaN that a zero attention weight would spread
        self.keys = torch.zeros(shape, device=device, dtype=dtype)
        self.values = torch.zeros(shape, device=device, dtype=dtype)
        self.batch_size, self.max_tokens = batch_size, max_tokens


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


class SlotKVCache(KVBuffers):
    """Keys/values of FAR's cached sampling in ``num_slots`` token slots, written in place by the layers.

    Before each pass the sampler sets where the fed tokens' keys/values go, ``write`` (a slice; an index tensor in a
    compiled pass, whose shapes must not change), and how many leading slots the pass attends to, ``visible``
    (``None``: every slot, masked by ``slot_frames``, the frame of each slot or -1). ``rope`` holds the rotary tables
    of every frame the slots can hold, per patch size, read by frame inside the pass.
    """

    def __init__(self, num_layers: int, batch_size: int, num_heads: int, head_dim: int, num_slots: int,
                 device: torch.device, dtype: torch.dtype):
        super().__init__(num_layers, batch_size, num_heads, head_dim, num_slots, device, dtype)
        self.slot_frames = torch.full((num_slots,), -1, dtype=torch.long, device=device)
        self.write: Union[slice, torch.Tensor] = slice(0, 0)
        self.visible: Optional[int] = None
        self.rope: Dict[int, Tuple[torch.Tensor, torch.Tensor]] = {}  # patch size -> cos, sin [frames, n, d]
        self.num_slots = num_slots

    def layer(self, index: int) -> 'SlotLayerKVCache':
        return SlotLayerKVCache(self, index)


class SlotLayerKVCache:
    """One layer's view of a :class:`SlotKVCache`."""

    def __init__(self, cache: SlotKVCache, index: int):
        self.cache, self.index = cache, index

    def extend(self, key: torch.Tensor, value: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Write ``[B, H, n, head_dim]`` keys/values into the cache's ``write`` slots; return the visible slots."""
        cache = self.cache
        keys, values = cache.keys[self.index], cache.values[self.index]
        if isinstance(cache.write, slice):
            keys[:, :, cache.write] = key
            values[:, :, cache.write] = value
        else:
            keys.index_copy_(2, cache.write, key.to(keys.dtype))
            values.index_copy_(2, cache.write, value.to(values.dtype))
        return keys[:, :, :cache.visible], values[:, :, :cache.visible]
