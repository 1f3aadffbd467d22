"""Frame-causal attention: full inside a frame, causal across frames, optional linear temporal bias (and
``FullAttention``, over the whole clip, for the video diffusion baseline).

A token sequence is described by *segments* ``(first_frame, num_frames, tokens_per_frame)``, frame-major,
so that masks can be built (and cached) from the layout alone. Two backends:

- ``sdpa``: ``F.scaled_dot_product_attention`` with a boolean mask (a float mask only when a temporal
  bias is used); CPU and CUDA, forward and backward.
- ``flex``: FlexAttention with a block mask built from the frame ids; it never materialises a dense
  mask. It serves full-sequence attention (training, uncached sampling), where an S x S mask is
  costly; a few frames attending to a KV cache use SDPA, whose mask is then only a few rows. For
  CUDA: on CPU FlexAttention has no backward pass (it runs there unfused, for tests).
"""
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

Segment = Tuple[int, int, int]  # (first_frame, num_frames, tokens_per_frame)

BACKENDS = ('sdpa', 'flex')

_compiled_flex_attention = None


def _flex_attention(device: torch.device):
    """FlexAttention is only fused (fast, memory-light) when compiled: compiled once, on CUDA only, and never while
    Dynamo traces a compiled block (which inlines FlexAttention itself and must not leave its state behind)."""
    global _compiled_flex_attention
    if device.type != 'cuda' or torch.compiler.is_compiling():
        return flex_attention
    if _compiled_flex_attention is None:
        # default dynamic=None: after a second sequence length it recompiles once for dynamic shapes
        _compiled_flex_attention = torch.compile(flex_attention)
    return _compiled_flex_attention


def frame_ids(segments: Sequence[Segment], device: torch.device) -> torch.Tensor:
    """Frame index of every token of a frame-major sequence."""
    return torch.cat([torch.arange(first, first + count, device=device).repeat_interleave(tokens)
                      for first, count, tokens in segments])


def frame_causal_mask(query_frames: torch.Tensor, key_frames: torch.Tensor, slope: float,
                      dtype: torch.dtype) -> torch.Tensor:
    """SDPA mask ``[Sq, Sk]`` from each token's frame index: a query of frame i sees the keys of frames
    ``0 <= j <= i`` (-1 marks an empty key slot); boolean (True = attend), or additive float with the temporal
    bias ``slope * (j - i)`` when ``slope != 0``."""
    q, k = query_frames[:, None], key_frames[None, :]
    allowed = (q >= k) & (k >= 0)
    if slope == 0:
        return allowed
    return (slope * (k - q).float()).masked_fill(~allowed, float('-inf')).to(dtype)


class FrameCausalAttention:
    """Attention of query tokens (``q_segments``) over key tokens (``k_segments``).

    A query of frame i sees the keys of frames j <= i, with the score bias ``slope * (j - i)`` when
    ``slope != 0``. Masks are built lazily, once per instance; callers cache instances per layout.
    """

    def __init__(self, q_segments: Sequence[Segment], k_segments: Sequence[Segment], slope: float,
                 backend: str, device: torch.device):
        if backend not in BACKENDS:
            raise ValueError(f"attention backend '{backend}' is not one of {BACKENDS}")
        self.q_segments, self.k_segments = tuple(q_segments), tuple(k_segments)
        self.slope, self.backend, self.device = float(slope), backend, device
        q_first = min(first for first, _, _ in self.q_segments)
        k_last = max(first + count - 1 for first, count, _ in self.k_segments)
        # e.g. a new frame denoised against the cache: every query sees every key, so no mask at all
        self.unmasked = q_first >= k_last
        self._frames: Optional[Tuple[torch.Tensor, torch.Tensor]] = None
        self._dense: Optional[torch.Tensor] = None
        self._block_mask = None
        self._score_mod = None

    def frames(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """Frame index of every query token and of every key token."""
        if self._frames is None:
            self._frames = frame_ids(self.q_segments, self.device), frame_ids(self.k_segments, self.device)
        return self._frames

    def dense_mask(self, dtype: torch.dtype) -> Optional[torch.Tensor]:
        """SDPA mask ``[Sq, Sk]``: boolean (True = attend), or additive float when a bias is used."""
        if self.unmasked and self.slope == 0:
            return None
        if self._dense is None or (self.slope != 0 and self._dense.dtype != dtype):
            self._dense = frame_causal_mask(*self.frames(), self.slope, dtype)
        return self._dense

    def block_mask(self):
        """FlexAttention's block-sparse mask (fully masked 128x128 blocks are skipped)."""
        if self._block_mask is None:
            frame_of = self._frame_arithmetic()

            def frame_causal(b, h, q_idx, kv_idx):
                return frame_of(q_idx) >= frame_of(kv_idx)

            length = sum(count * tokens for _, count, tokens in self.q_segments)
            self._block_mask = create_block_mask(frame_causal, None, None, length, length, device=self.device)
        return self._block_mask

    def score_mod(self):
        """FlexAttention's temporal bias, or None; one function per instance, so compiled kernels are reused."""
        if self.slope != 0 and self._score_mod is None:
            frame_of, slope = self._frame_arithmetic(), self.slope

            def temporal_bias(score, b, h, q_idx, kv_idx):
                return score + slope * (frame_of(kv_idx) - frame_of(q_idx)).to(score.dtype)

            self._score_mod = temporal_bias
        return self._score_mod

    def _frame_arithmetic(self):
        """The frame of a token index of the (query = key) sequence, computed from the segments rather than read
        from memory: ``first + (index - offset) // tokens_per_frame`` in each segment."""
        bounds, offset = [], 0
        for first, count, tokens in self.q_segments:
            bounds.append((offset, offset + count * tokens, first, tokens))
            offset += count * tokens

        def frame_of(index):
            frame = None
            for start, end, first, tokens in reversed(bounds):
                inside = first + (index - start) // tokens
                frame = inside if frame is None else torch.where(index < end, inside, frame)
            return frame

        return frame_of

    @property
    def uses_flex(self) -> bool:
        return self.backend == 'flex' and not self.unmasked and self.q_segments == self.k_segments

    def prepare(self, dtype: torch.dtype) -> 'FrameCausalAttention':
        """Build the masks now, outside compiled blocks: a block then never traces their construction (a
        compiled block that saw a mask built would recompile once it is cached)."""
        if self.uses_flex:
            self.block_mask(), self.score_mod()
        else:
            self.dense_mask(dtype)
        return self

    def __call__(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """``[B, H, S, head_dim]`` tensors in, ``[B, H, Sq, head_dim]`` out."""
        if self.uses_flex:
            flex = _flex_attention(query.device)
            return flex(query, key, value, score_mod=self.score_mod(), block_mask=self.block_mask())
        return F.scaled_dot_product_attention(query, key, value, attn_mask=self.dense_mask(query.dtype))


class FullAttention:
    """Attention of every query over every key, earlier and later frames alike (a video diffusion transformer)."""

    def prepare(self, dtype: torch.dtype) -> 'FullAttention':
        """Nothing to build ahead of the blocks: there is no mask."""
        return self

    def __call__(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(query, key, value)


class SlotAttention:
    """Attention of the fed tokens over every slot of a ``SlotKVCache`` (a compiled pass: the same shapes for every
    frame), masked by the frame of each slot."""

    def __init__(self, query_frames: torch.Tensor, slot_frames: torch.Tensor, slope: float):
        self.query_frames, self.slot_frames, self.slope = query_frames, slot_frames, slope

    def __call__(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        mask = frame_causal_mask(self.query_frames, self.slot_frames, self.slope, query.dtype)
        return F.scaled_dot_product_attention(query, key, value, attn_mask=mask)
