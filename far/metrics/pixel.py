"""Pixel metrics per frame: MSE, PSNR and SSIM on videos in [0,1], and the mean intensity of the predicted and of the
true frames.

PSNR and SSIM are torchmetrics' functional versions with the settings FAR's evaluation uses:
PSNR ``10 log10(1/MSE)`` with the MSE over (C,H,W) of each frame; SSIM with an 11x11 Gaussian
window (sigma 1.5, k1 0.01, k2 0.03), reflect padding and the mean over (C,H,W).
"""
import copy
from typing import Dict

import torch

from ..registry import METRICS
from .base import FrameMetric


@METRICS.register(aliases=('mse',))
class MSE(FrameMetric):
    name, higher_is_better = 'mse', False
    quirk = 'the worst trajectory of each video'

    def published(self) -> Dict[str, FrameMetric]:
        worst = copy.copy(self)
        worst.trajectory = 'worst'
        return {self.name: worst}

    def score(self, sample: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        return (sample - gt).square().mean(dim=(1, 2, 3))


class RangeMetric(FrameMetric):
    """A per-frame metric that needs the range the pixel values span, ``data_range``."""

    def __init__(self, data_range: float = 1.0, batch_size: int = 256):
        super().__init__(batch_size)
        self.data_range = data_range


@METRICS.register(aliases=('psnr',))
class PSNR(RangeMetric):
    name, higher_is_better = 'psnr', True

    def score(self, sample: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        from torchmetrics.functional.image import peak_signal_noise_ratio  # ~1 s to import: training never scores
        return peak_signal_noise_ratio(sample, gt, data_range=self.data_range, reduction='none', dim=(1, 2, 3))


@METRICS.register(aliases=('ssim',))
class SSIM(RangeMetric):
    name, higher_is_better = 'ssim', True

    def score(self, sample: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        from torchmetrics.functional.image import structural_similarity_index_measure  # see PSNR
        return structural_similarity_index_measure(sample, gt, data_range=self.data_range, reduction='none')


@METRICS.register(aliases=('mean_intensity',))
class MeanIntensity(FrameMetric):
    """The mean pixel value of each predicted frame over (C,H,W). Set beside ``mean_intensity_gt`` it shows a
    prediction that fades or brightens, which PSNR may hide (a dark frame is close to a mostly dark one). A
    statistic, not a score: it ranks no trajectory, the trajectories are averaged."""
    name = 'mean_intensity'

    @property
    def aggregation(self) -> str:
        return 'predicted frames; mean over frames; mean over trajectories; mean over videos'

    def chosen_trajectories(self, samples: torch.Tensor, gt: torch.Tensor, device=None) -> torch.Tensor:
        gt = gt if gt.dim() == samples.dim() else gt.unsqueeze(1)
        return self(samples, gt, device).double().mean(dim=1)

    def score(self, sample: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        return sample.mean(dim=(1, 2, 3))


@METRICS.register(aliases=('mean_intensity_gt',))
class GroundTruthMeanIntensity(MeanIntensity):
    """The mean pixel value of each true frame over (C,H,W), what ``mean_intensity`` is compared with."""
    name = 'mean_intensity_gt'

    def score(self, sample: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        return gt.mean(dim=(1, 2, 3))
