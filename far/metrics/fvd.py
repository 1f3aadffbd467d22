"""Fréchet Video Distance (Unterthiner et al. 2018) with the TF-Hub I3D, as StyleGAN-V computes it.

Videos in [0,1] are mapped to [-1,1], resized to 224x224 (trilinear, every frame kept), and
described by I3D's 400 time-averaged logits. The distance between two sets of features uses the
unbiased covariance and the real part of ``scipy.linalg.sqrtm``.
"""
import warnings
from typing import Optional, Union

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F

from ..registry import METRICS
from .base import Metric, exact_math
from .i3d import load_i3d
from .weights import resolve_weights


def frechet_distance(features_a: Union[np.ndarray, torch.Tensor], features_b: Union[np.ndarray, torch.Tensor]) -> float:
    """``||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 sqrt(S_a S_b))`` of two ``[N,D]`` feature sets (float64)."""
    a, b = np.asarray(features_a, dtype=np.float64), np.asarray(features_b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f'Fréchet distance needs two [N>=2, D] feature sets, got {a.shape} and {b.shape}')
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    with warnings.catch_warnings():
        # With fewer videos than feature dimensions the covariances are singular; sqrtm still
        # returns the right (real part of the) root and warns every time.
        warnings.simplefilter('ignore', scipy.linalg.LinAlgWarning)
        root = scipy.linalg.sqrtm(cov_a @ cov_b)
    mean_term = np.square(a.mean(axis=0) - b.mean(axis=0)).sum()
    return float(np.real(mean_term + np.trace(cov_a + cov_b - 2 * root)))


@METRICS.register(aliases=('fvd',))
class FVD(Metric):
    """``FVD()(fake, real) -> float`` for two sets of videos ``[N,T,3,H,W]`` in [0,1], T >= ``min_frames``.

    ``frames: N`` scores the first N frames only (NBP's gFVD: the first 16 of 17) and ``resolution: R`` resizes
    the frames to R x R (bilinear) before I3D's own resizing (NBP's K600 numbers: 64). ``features`` is exposed so
    that a protocol can reuse the features of the real videos. I3D runs on ``batch_size`` videos at a time.
    """

    name, needs = 'fvd', 'videos'

    def __init__(self, weights: Optional[str] = None, batch_size: int = 32, frames: Optional[int] = None,
                 resolution: Optional[int] = None, min_frames: int = 10):
        if batch_size < 1 or (frames is not None and frames < 1) or (resolution is not None and resolution < 1):
            raise ValueError(f'FVD: batch_size must be >= 1 and frames, resolution >= 1 or null, got {batch_size}, '
                             f'{frames}, {resolution}')
        self.batch_size, self.frames, self.resolution, self.min_frames = batch_size, frames, resolution, min_frames
        self.weight_files = {'i3d': resolve_weights('i3d', weights)}
        self.network = load_i3d(str(self.weight_files['i3d']))

    @property
    def aggregation(self) -> str:
        frames = 'all frames' if self.frames is None else f'the first {self.frames} frames'
        size = '' if self.resolution is None else f'resized to {self.resolution}x{self.resolution} (bilinear), then '
        return (f'{frames}; {size}I3D Kinetics-400 (TF-Hub) logits of [-1,1] videos resized to 224x224 (trilinear); '
                f'mean of per-trajectory FVDs; at least {self.min_frames} frames')

    def problem(self, *, frames: int, videos: Optional[int]) -> Optional[str]:
        if self.frames is not None and self.frames > frames:
            return f'frames must be in [1, {frames}] (the frames of a video) or null for all, got {self.frames}'
        scored = self.frames or frames
        if scored < self.min_frames:
            return f'FVD needs at least min_frames={self.min_frames} frames, the protocol scores {scored}; drop fvd'
        if videos is not None and videos < 2:
            return f'FVD compares sets of at least 2 videos, got {videos}'
        return None

    def _scored(self, videos: torch.Tensor) -> torch.Tensor:
        """The frames FVD scores: the first ``frames``, at ``resolution``."""
        videos = videos[..., :self.frames, :, :, :]
        if self.resolution is None:
            return videos
        flat = videos.reshape(-1, *videos.shape[-3:]).float()
        resized = F.interpolate(flat, size=(self.resolution, self.resolution), mode='bilinear', align_corners=False)
        return resized.reshape(*videos.shape[:-2], self.resolution, self.resolution)

    @torch.no_grad()
    def features(self, videos: torch.Tensor, device: Optional[Union[str, torch.device]] = None) -> torch.Tensor:
        """``[..., T, 3, H, W]`` in [0,1] -> I3D logits ``[..., 400]`` (float64, CPU) of the scored frames."""
        if videos.dim() < 5 or videos.shape[-3] != 3:
            raise ValueError(f'FVD expects videos [..., T, 3, H, W], got {tuple(videos.shape)}')
        device = torch.device(device) if device is not None else videos.device
        network = self.network.to(device)
        videos = self._scored(videos)
        lead, flat = videos.shape[:-4], videos.reshape(-1, *videos.shape[-4:])
        features = []
        with exact_math():
            for start in range(0, len(flat), self.batch_size):
                x = flat[start:start + self.batch_size].to(device, torch.float32).transpose(1, 2)
                x = F.interpolate(2 * x - 1, size=(x.shape[2], 224, 224), mode='trilinear', align_corners=False)
                features.append(network(x).double().cpu())
        return torch.cat(features).reshape(*lead, -1)

    def __call__(self, fake: torch.Tensor, real: torch.Tensor,
                 device: Optional[Union[str, torch.device]] = None) -> float:
        if fake.dim() != 5 or real.dim() != 5:
            raise ValueError(f'FVD expects two sets of videos [N,T,3,H,W], got {tuple(fake.shape)} and '
                             f'{tuple(real.shape)}')
        return frechet_distance(self.features(fake, device), self.features(real, device))

    def mean_over_trajectories(self, samples: torch.Tensor, gt: torch.Tensor,
                               device: Optional[Union[str, torch.device]] = None) -> float:
        """``samples [B,n,F,3,H,W]``, ``gt [B,F,3,H,W]`` or ``[B,n,F,3,H,W]`` -> the mean over k of the FVD between
        the B samples of trajectory k and their ground truths."""
        fake = self.features(samples, device)  # [B, n, D]
        # The ground truth's features are computed once unless each trajectory has its own copy.
        real = self.features(gt, device)
        real = real if real.dim() == fake.dim() else real.unsqueeze(1).expand_as(fake)
        return float(np.mean([frechet_distance(fake[:, k], real[:, k]) for k in range(fake.shape[1])]))
