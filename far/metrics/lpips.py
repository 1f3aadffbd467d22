"""LPIPS v0.1 (Zhang et al. 2018) with AlexNet or VGG16 features, without torchvision.

``LPIPS`` is a differentiable ``nn.Module`` (per-image distances; the VGG variant is the
autoencoder's perceptual loss), ``LPIPSMetric`` the per-frame video metric registered as
``lpips``. Both match the ``lpips`` package's numbers with the same weights (see ``weights.py``).
"""
import copy
from typing import Dict, Literal, Optional

import torch
import torch.nn as nn

from ..registry import METRICS
from .base import FrameMetric
from .weights import load_state_dict, resolve_weights


def _conv(cin: int, cout: int, kernel: int, stride: int = 1, padding: int = 0) -> nn.Module:
    return nn.Conv2d(cin, cout, kernel, stride, padding)


def _alexnet_features() -> nn.Sequential:
    # torchvision's alexnet().features layout, so 'features.<i>.*' keys load as they are.
    return nn.Sequential(
        _conv(3, 64, 11, 4, 2), nn.ReLU(), nn.MaxPool2d(3, 2),
        _conv(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        _conv(192, 384, 3, padding=1), nn.ReLU(),
        _conv(384, 256, 3, padding=1), nn.ReLU(),
        _conv(256, 256, 3, padding=1), nn.ReLU(),
    )


def _vgg16_features() -> nn.Sequential:
    # torchvision's vgg16().features without the last max-pool (LPIPS stops at relu5_3).
    layers, cin = [], 3
    for block, (cout, convs) in enumerate([(64, 2), (128, 2), (256, 3), (512, 3), (512, 3)]):
        if block:
            layers.append(nn.MaxPool2d(2, 2))
        for _ in range(convs):
            layers += [_conv(cin, cout, 3, padding=1), nn.ReLU()]
            cin = cout
    return nn.Sequential(*layers)


# Per backbone: builder, weight files (backbone, heads), indices of the tapped ReLUs, their widths.
_NETS = {
    'alex': (_alexnet_features, 'alexnet', 'lpips_alex', (1, 4, 7, 9, 11), (64, 192, 384, 256, 256)),
    'vgg': (_vgg16_features, 'vgg16', 'lpips_vgg', (3, 8, 15, 22, 29), (64, 128, 256, 512, 512)),
}


class LPIPS(nn.Module):
    """``forward(x, y, normalize=False) -> [N]``: LPIPS distance of each image pair ``[N,3,H,W]``.

    Inputs are in [-1,1], or in [0,1] with ``normalize=True``. The weights are frozen but the
    distance is differentiable in the inputs.
    """

    def __init__(self, net: Literal['alex', 'vgg'] = 'alex', backbone_weights: Optional[str] = None,
                 head_weights: Optional[str] = None):
        super().__init__()
        if net not in _NETS:
            raise ValueError(f"LPIPS: net must be one of {sorted(_NETS)}, got '{net}'")
        build, backbone_file, head_file, self.taps, widths = _NETS[net]
        self.net = net
        self.features = build()
        self.heads = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in widths)
        self.register_buffer('shift', torch.tensor([-.030, -.088, -.188]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer('scale', torch.tensor([.458, .448, .450]).view(1, 3, 1, 1), persistent=False)

        self.weight_files = {backbone_file: resolve_weights(backbone_file, backbone_weights),
                             head_file: resolve_weights(head_file, head_weights)}
        backbone = load_state_dict(self.weight_files[backbone_file])
        # Full torchvision files also hold the classifier; only the conv part is used.
        self.features.load_state_dict(
            {k[len('features.'):]: v for k, v in backbone.items() if k.startswith('features.')}, strict=True)
        heads = load_state_dict(self.weight_files[head_file])
        self.heads.load_state_dict({f'{i}.weight': heads[f'lin{i}.model.1.weight'] for i in range(len(widths))})
        self.eval().requires_grad_(False)

    def forward(self, x: torch.Tensor, y: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        if x.shape != y.shape or x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f'LPIPS expects two [N,3,H,W] images, got {tuple(x.shape)} and {tuple(y.shape)}')
        if normalize:
            x, y = 2 * x - 1, 2 * y - 1
        h = (torch.cat([x, y]) - self.shift) / self.scale  # one pass for both images
        distance, heads = 0, iter(self.heads)
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in self.taps:
                # Unit-normalise the channels, then a learned weighting of the squared difference.
                f = h / (h.square().sum(dim=1, keepdim=True).sqrt() + 1e-10)
                fx, fy = f.chunk(2)
                distance = distance + next(heads)((fx - fy).square()).mean(dim=(1, 2, 3))
        return distance


@METRICS.register(aliases=('lpips',))
class LPIPSMetric(FrameMetric):
    """LPIPS per frame of videos in [0,1].

    ``normalize=False`` feeds the [0,1] frames to the network as if they were in [-1,1]; that is
    how FAR's published numbers were computed (lower than correct LPIPS), kept for comparisons.
    """

    name, higher_is_better = 'lpips', False
    quirk = '[0,1] frames fed to the network as if they were in [-1,1]'

    def __init__(self, net: Literal['alex', 'vgg'] = 'alex', normalize: bool = True,
                 backbone_weights: Optional[str] = None, head_weights: Optional[str] = None,
                 batch_size: int = 256):
        super().__init__(batch_size)
        self.normalize = normalize
        self.network = LPIPS(net, backbone_weights, head_weights)
        self.weight_files = self.network.weight_files

    def published(self) -> Dict[str, FrameMetric]:
        """The unnormalized LPIPS under the plain name, the correct one as ``lpips_normalized``."""
        unnormalized, normalized = copy.copy(self), copy.copy(self)
        unnormalized.normalize, normalized.normalize = False, True
        return {self.name: unnormalized, f'{self.name}_normalized': normalized}

    def score(self, sample: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        return self.network.to(sample.device)(sample, gt, normalize=self.normalize)
