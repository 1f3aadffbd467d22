"""Finite scalar quantization (FSQ, "Finite Scalar Quantization: VQ-VAE Made Simple", Mentzer et al. 2023),
as the NBP video tokenizer uses it.

Each of the D latent channels is squashed into a bounded range and rounded to one of ``levels[i]`` values;
the codebook is implicit (the product of the levels: 8*8*8*5*5*5 = 64000 for NBP). Codes are rescaled to
[-1, 1]: L = 5 gives {-1, -0.5, 0, 0.5, 1} and an even L = 8 gives {-1, -0.75, ..., 0.75}.

Details that the released NBP tokenizer depends on:
- the bound is ``tanh(z + shift) * half_l - offset`` with ``half_l = (L - 1)(1 - 1e-3) / 2``, offset 0.5
  for even levels (0 for odd ones) and ``shift = tan(offset / half_l)``, as in the FSQ paper's listing;
- rounding is straight-through (identity gradient);
- in the index, the first channel varies fastest: ``index = sum_i digit_i * prod(levels[:i])``.
"""
from typing import Sequence, Tuple

import torch
import torch.nn as nn

BOUND_EPS = 1e-3  # keeps the bounded value strictly inside the outermost rounding cells


class FSQ(nn.Module):
    """Quantize ``[B, D, ...]`` latents channel-wise to ``levels`` (D = ``len(levels)``); no parameters.

    ``codes, indices = fsq(z)``: codes ``[B, D, ...]`` in [-1, 1], indices ``[B, ...]`` int32 (as the
    reference tokenizer returns them). ``fsq.indices_to_codes(indices)`` inverts the index.
    """

    def __init__(self, levels: Sequence[int]):
        super().__init__()
        levels = [int(level) for level in levels]
        if not levels or min(levels) < 2:
            raise ValueError(f'FSQ levels must be a non-empty list of integers >= 2, got {levels}')
        self.levels = levels
        self.codebook_size = 1
        for level in levels:
            self.codebook_size *= level
        level_tensor = torch.tensor(levels, dtype=torch.int32)
        self.register_buffer('_levels', level_tensor, persistent=False)
        self.register_buffer('_basis', torch.cumprod(torch.tensor([1] + levels[:-1]), 0).to(torch.int32),
                             persistent=False)
        self.register_buffer('_half_width', level_tensor // 2, persistent=False)

    @property
    def dim(self) -> int:
        return len(self.levels)

    def bound(self, z: torch.Tensor) -> torch.Tensor:
        """Channels-last ``[..., D]`` -> values in (-L/2, L/2), before rounding."""
        half_l = (self._levels - 1) * (1 - BOUND_EPS) / 2
        offset = torch.where(self._levels % 2 == 0, 0.5, 0.0)
        shift = (offset / half_l).tan()
        return (z + shift).tanh() * half_l - offset

    def quantize(self, z: torch.Tensor) -> torch.Tensor:
        """Channels-last ``[..., D]`` -> codes in [-1, 1], with straight-through rounding."""
        bounded = self.bound(z)
        rounded = bounded + (bounded.round() - bounded).detach()
        return rounded / self._half_width

    def codes_to_indices(self, codes: torch.Tensor) -> torch.Tensor:
        """Channels-last codes ``[..., D]`` -> int32 indices ``[...]``."""
        digits = codes * self._half_width + self._half_width
        return (digits * self._basis).sum(dim=-1).to(torch.int32)

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """Indices ``[B, ...]`` (any integer dtype) -> codes ``[B, D, ...]``."""
        digits = (indices[..., None] // self._basis) % self._levels
        codes = (digits - self._half_width) / self._half_width
        return codes.movedim(-1, 1)

    def forward(self, z: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        if z.ndim < 3 or z.shape[1] != self.dim:
            raise ValueError(f'FSQ with {self.dim} levels expects [B, {self.dim}, ...] latents, got {tuple(z.shape)}')
        codes = self.quantize(z.movedim(1, -1))
        return codes.movedim(-1, 1), self.codes_to_indices(codes)

    def extra_repr(self) -> str:
        return f'levels={self.levels}, codebook_size={self.codebook_size}'
