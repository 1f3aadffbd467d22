"""The ``rollout`` protocol: prediction scored along the roll-out, to see how quality holds up as a model
predicts further, e.g. beyond the clip length it was trained on.

As the ``mcvd`` protocol (the first ``context_length`` frames of each video given, the next ``unroll_length``
predicted; per frame -> mean over frames -> best trajectory per video -> mean over videos), and every per-frame
metric again over each bucket of ``bucket_size`` predicted frames, for that same best trajectory, pooled over
videos: ``<metric>_frames_<a>-<b>`` (absolute frame indices, both included).
"""
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch

from ..registry import PROTOCOLS
from .base import FrameMetric
from .protocols import MetricName, Protocol


@PROTOCOLS.register(aliases=('rollout',))
class RolloutProtocol(Protocol):
    """Prediction with per-bucket scores. ``bucket_size``: predicted frames per bucket (the last may be shorter);
    the other arguments as :class:`MCVDProtocol`."""

    name = 'rollout'

    def __init__(self, *, context_length: int, unroll_length: int, bucket_size: int, num_trajectories: int = 1,
                 num_videos: Optional[int] = None, every: int = 1, seeds: Sequence[int] = (0, ),
                 metrics: Sequence[MetricName] = ('mse', 'psnr', 'ssim'), weights: Optional[Dict[str, str]] = None,
                 fvd_min_frames: int = 10, fvd_batch_size: int = 32, frame_batch_size: int = 256):
        if bucket_size < 1:
            raise ValueError(f'rollout protocol: bucket_size must be >= 1, got {bucket_size}')
        super().__init__(context_length=context_length, unroll_length=unroll_length,
                         num_trajectories=num_trajectories, num_videos=num_videos, seeds=seeds, metrics=metrics,
                         every=every, reference_quirks=False, annotate_context=False, weights=weights,
                         fvd_min_frames=fvd_min_frames, fvd_batch_size=fvd_batch_size,
                         frame_batch_size=frame_batch_size)
        self.bucket_size = bucket_size

    def buckets(self) -> List[Tuple[int, int]]:
        """``(first, last)`` absolute frame index of every bucket of predicted frames."""
        frames = self.context_length + self.unroll_length
        return [(start, min(start + self.bucket_size, frames) - 1)
                for start in range(self.context_length, frames, self.bucket_size)]

    @torch.no_grad()
    def evaluate(self, samples: torch.Tensor, gt: torch.Tensor,
                 device: Optional[Union[str, torch.device]] = None) -> Dict[str, float]:
        results = super().evaluate(samples, gt, device)
        predicted = slice(self.context_length, None)
        for name, metric in self._frame_metrics.items():
            scores = self._best_trajectory(metric, samples[:, :, predicted], gt[:, predicted], device)
            for first, last in self.buckets():
                bucket = scores[:, first - self.context_length:last + 1 - self.context_length]
                results[f'{name}_frames_{first}-{last}'] = bucket.mean().item()
        return results

    @staticmethod
    def _best_trajectory(metric: FrameMetric, samples: torch.Tensor, gt: torch.Tensor, device) -> torch.Tensor:
        """Per-frame scores ``[B, F]`` of each video's best trajectory (by its mean over frames)."""
        scores = metric(samples, gt.unsqueeze(1), device).double()  # [B, n, F]
        per_trajectory = scores.mean(dim=-1)
        best = per_trajectory.argmax(dim=1) if metric.higher_is_better else per_trajectory.argmin(dim=1)
        return scores[torch.arange(len(scores)), best]

    def describe(self) -> dict:
        info = super().describe()
        info['scoring']['buckets'] = (f'<metric>_frames_<a>-<b>: mean over predicted frames a..b (buckets of '
                                      f'{self.bucket_size}), pooled over videos, best trajectory per video')
        return info
