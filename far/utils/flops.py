"""FLOPs of a FAR training step, counted from the model's structure (the numerator of model FLOPs utilisation).

A clip of T frames of n tokens each (batch B, width D = heads x head dim, L blocks, patch inputs P_in = C_in p^2
and outputs P_out = C_out p^2); a matrix product of (a x b) by (b x c) is 2abc FLOPs. The forward pass:

    per token:  2 D P_in  +  L (4 x 2 D^2  +  2 x 2 D 4D)  +  2 D P_out
                (x_embedder; per block q, k, v and output projections, then the MLP D -> 4D -> D; proj_out)
    per frame:  2 (256 D + D^2)  +  L (2 x 2 D 3D)  +  2 D 2D
                (timestep embedding; per block the adaLN linears norm1 and norm2; norm_out): they act on the
                frame's conditioning, once per frame, and their output is broadcast over the frame's tokens
    attention:  L x 4 D x pairs: QK^T and AV, 2 D FLOPs each per query-key pair the kernel computes

    forward = B T n (per token) + B T (per frame) + B (attention);  a training step = 3 x forward.

The step counts the backward pass as twice the forward (gradients of inputs and of weights), the usual
model-FLOPs convention: attention's recomputation in its backward kernel is not counted.

Attention is frame-causal: frame i's queries see the keys of frames 0..i, ``n^2 T (T + 1) / 2`` visible pairs.
The pairs counted are those the kernel computes, in square tiles of ``attention_block`` tokens: a tile holding any
visible pair is computed whole, a tile of masked pairs only is skipped. FlexAttention (CUDA) works in tiles of
128 (``FLEX_BLOCK``): the masked pairs inside the diagonal tiles are counted, the masked tiles are not.
``attention_block=None`` counts the dense S x S product (S = T n) that SDPA computes with a mask (CPU), and
``attention_block=1`` the visible pairs only. Not counted: normalisations, RoPE, activations, softmax, residual
adds and the optimizer (a few FLOPs per element, not per multiply of a matrix product).
"""
import math
from typing import Dict, Optional

import torch

FLEX_BLOCK = 128  # FlexAttention's default tile of queries and keys
TIMESTEP_CHANNELS = 256  # sinusoidal timestep features fed to the timestep embedder
MLP_RATIO = 4  # hidden width of the blocks' feed-forward over the model width


def attention_pairs(frames: int, tokens: int, block: Optional[int]) -> int:
    """Query-key pairs of one clip's frame-causal attention computed in ``block`` x ``block`` tiles (module
    docstring); ``None``: every pair of the ``S x S`` product."""
    length = frames * tokens
    if block is None:
        return length * length
    pairs = 0
    for start in range(0, length, block):
        queries = min(start + block, length) - start
        last_frame = (start + queries - 1) // tokens       # the latest frame a query of this tile belongs to
        keys = min(math.ceil((last_frame + 1) * tokens / block) * block, length)  # tiles up to its last key
        pairs += queries * keys
    return pairs


def forward_flops(model: torch.nn.Module, *, batch: int, frames: int, height: int, width: int,
                  attention_block: Optional[int]) -> Dict[str, int]:
    """FLOPs of FAR's forward pass over ``batch`` clips of ``frames`` latents of ``height x width``, by term:
    ``{'tokens', 'frames', 'attention', 'total'}`` (formula in the module docstring)."""
    if getattr(model, 'has_long_term_stream', True):
        raise ValueError(f'forward_flops counts FAR (one token stream), not {type(model).__name__}')
    cfg = model.config
    dim = cfg.num_attention_heads * cfg.attention_head_dim
    patch_in, patch_out = cfg.in_channels * cfg.patch_size ** 2, cfg.out_channels * cfg.patch_size ** 2
    tokens = model.tokens_per_frame(height, width)
    layers = cfg.num_layers
    per_token = 2 * dim * patch_in + layers * (4 * 2 * dim * dim + 2 * 2 * dim * MLP_RATIO * dim) + 2 * dim * patch_out
    per_frame = 2 * (TIMESTEP_CHANNELS * dim + dim * dim) + layers * 2 * 2 * dim * 3 * dim + 2 * dim * 2 * dim
    attention = layers * 4 * dim * attention_pairs(frames, tokens, attention_block)
    counts = {'tokens': batch * frames * tokens * per_token, 'frames': batch * frames * per_frame,
              'attention': batch * attention}
    return {**counts, 'total': sum(counts.values())}


def training_step_flops(model: torch.nn.Module, *, batch: int, frames: int, height: int, width: int,
                        attention_block: Optional[int]) -> int:
    """FLOPs of one training step (forward and backward): three times the forward (module docstring)."""
    return 3 * forward_flops(model, batch=batch, frames=frames, height=height, width=width,
                             attention_block=attention_block)['total']
