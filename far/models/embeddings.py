"""Embeddings of the FAR transformers: condition ids and 3-axis rotary positions.

Timesteps use diffusers' ``Timesteps`` + ``TimestepEmbedding`` directly (see ``far.py``).
"""
from typing import Dict, Optional, Sequence, Tuple

import torch
from diffusers.models.embeddings import LabelEmbedding, get_1d_rotary_pos_embed


def condition_embedding(num_classes: int, dim: int, dropout: float) -> LabelEmbedding:
    """Class/action embedding with a null id (= ``num_classes``) for classifier-free guidance.

    During training each id is replaced by the null id with probability ``dropout``. The table always
    has the null row, whatever the dropout: guidance needs it and the released checkpoints have it
    (``LabelEmbedding`` only adds the row for a positive rate, hence the rate is set afterwards).
    """
    embedding = LabelEmbedding(num_classes, dim, dropout_prob=1.0)
    embedding.dropout_prob = dropout
    return embedding


class FrameRotaryEmbedding:
    """3-axis RoPE (frame, row, column) for a grid of frames, as FLUX's ``FluxPosEmbed`` computes it.

    Token ids are the absolute frame index and the row/column of the patch in units of the model's
    patch size (``stride`` > 1 for coarser patches, e.g. FAR-Long's long-term frames). The cos/sin tables
    depend only on that layout, so they are cached: training reuses one table per clip shape and cached
    sampling computes only the rows of the frames it feeds.
    """

    def __init__(self, axes_dims: Sequence[int], theta: float = 10000.0, max_cached: int = 64):
        self.axes_dims = tuple(axes_dims)
        self.theta = theta
        self.max_cached = max_cached
        self._cache: Dict[tuple, Tuple[torch.Tensor, torch.Tensor]] = {}

    def _axis(self, dim: int, positions: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return get_1d_rotary_pos_embed(
            dim, positions, theta=self.theta, use_real=True, repeat_interleave_real=True, freqs_dtype=torch.float64)

    def __call__(self, first_frame: int, num_frames: int, height: int, width: int, stride: int,
                 device: torch.device, round_to: Optional[torch.dtype] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """cos, sin of shape ``[num_frames * height * width, sum(axes_dims)]``, frame-major token order.

        ``round_to``: positions rounded to that dtype first (e.g. bfloat16: frame 257 -> 256), as the released
        FAR models computed them when they ran in bf16.
        """
        key = (first_frame, num_frames, height, width, stride, str(device), round_to)
        if key not in self._cache:
            if len(self._cache) >= self.max_cached:
                self._cache.pop(next(iter(self._cache)))
            positions = (torch.arange(first_frame, first_frame + num_frames, dtype=torch.float64),
                         torch.arange(height, dtype=torch.float64) * stride,
                         torch.arange(width, dtype=torch.float64) * stride)
            if round_to is not None:
                positions = tuple(p.to(round_to).double() for p in positions)
            cos_sin = [self._axis(dim, pos) for dim, pos in zip(self.axes_dims, positions)]
            grid = (num_frames, height, width)

            def table(part: int) -> torch.Tensor:
                # broadcast each axis over the other two, then concatenate along the feature dimension
                f, r, c = (t[part] for t in cos_sin)
                columns = [f[:, None, None].expand(*grid, -1), r[None, :, None].expand(*grid, -1),
                           c[None, None, :].expand(*grid, -1)]
                return torch.cat(columns, dim=-1).reshape(num_frames * height * width, -1).to(device)

            self._cache[key] = (table(0), table(1))
        return self._cache[key]
