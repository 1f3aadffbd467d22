"""The ``memory`` protocol: long-context prediction, scored separately where long-term memory is needed.

TECO-style prediction (the first ``context_length`` frames of each video as context, the next
``unroll_length`` frames predicted, pixel metrics on predicted frames) on videos whose items carry a
per-frame ``revisit`` mask, such as ``far.data.maze_memory``: True where the frame shows a place last
seen more than a short-term window ago, i.e. a frame only a model with long-term memory can predict, and
optionally a ``first_visit`` mask: places never seen before, which no model can predict.

Every metric is reported over all predicted frames (per frame -> mean over frames -> best trajectory
per video -> mean over videos, as in the other protocols), and averaged over the predicted frames of
each category, pooled over videos, for that same best trajectory:

* ``<metric>_revisit``: frames where ``revisit`` is True;
* ``<metric>_other``: every other predicted frame (new places, and places seen within the window);
* ``<metric>_first_visit``: frames where ``first_visit`` is True (a subset of ``other``), when given;
* ``<metric>_frames_<a>-<b>``: frames ``a..b`` (absolute indices), in buckets of ``bucket_size``,
  to follow quality along a roll-out.

Frames repeat exactly in these videos (the copy-last-frame baseline is exact whenever the agent stands
where it stood at the end of the context), so PSNR is capped at 20 log10(255) = 48.1 dB, the PSNR of an
error of one 8-bit level everywhere, instead of being infinite.

A category without frames in the evaluated videos is left out. With ``sliding_window_baseline: N``
the test runner also samples every video with the pipeline's ``context_window=N`` (the same weights,
restricted to the last N frames) and scores it as the ``sliding_window`` baseline.
"""
import math
from typing import Dict, Literal, Optional, Sequence, Union

import torch

from ..registry import METRICS, PROTOCOLS
from .pixel import PSNR
from .protocols import Protocol
from .scores import Scores

FrameMetricName = Literal['mse', 'psnr', 'ssim', 'lpips']
MAX_PSNR = 20 * math.log10(255)


@METRICS.register()
class CappedPSNR(PSNR):
    """PSNR of at most ``MAX_PSNR``: an exactly repeated frame scores 48.1 dB, not infinity."""

    def score(self, sample: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        return super().score(sample, gt).clamp(max=MAX_PSNR)


@PROTOCOLS.register(aliases=('memory',))
class MemoryProtocol(Protocol):
    """Long-context prediction on videos with a ``revisit`` mask (``far.data.maze_memory``).

    Args:
        context_length / unroll_length: context frames given, frames predicted.
        num_trajectories: samples per video; each metric keeps each video's best one.
        num_videos / every: the first ``num_videos`` videos (all if null), every ``every``-th.
        seeds: sampling seeds, aggregated as mean and std.
        metrics: per-frame metrics; ``lpips`` needs its weight files (see ``far.metrics.weights``).
        sliding_window_baseline: also score the model sampled with a sliding window of this many frames.
        bucket_size: also report predicted frames in buckets of this many frames.
        weights: explicit weight files, e.g. ``{alexnet: ..., lpips_alex: ...}``.
        frame_batch_size: frames scored at once.
    """

    name = 'memory'
    frame_fields = ('revisit', 'first_visit')  # per-frame dataset fields that `evaluate` takes
    curve_categories = ('revisit', 'first_visit')  # followed frame by frame as well (`Scores.curves`)
    metric_types = {'psnr': 'CappedPSNR'}

    def __init__(self, *, context_length: int = 32, unroll_length: int = 16, num_trajectories: int = 1,
                 num_videos: Optional[int] = None, every: int = 1, seeds: Sequence[int] = (0, ),
                 metrics: Sequence[FrameMetricName] = ('mse', 'psnr', 'ssim'),
                 sliding_window_baseline: Optional[int] = None, bucket_size: Optional[int] = None,
                 weights: Optional[Dict[str, str]] = None, frame_batch_size: int = 256):
        if 'fvd' in metrics:
            raise ValueError('memory protocol: metrics are per frame (mse, psnr, ssim, lpips); FVD is the teco_fvd '
                             'protocol')
        if sliding_window_baseline is not None and sliding_window_baseline < 1:
            raise ValueError(f'memory protocol: sliding_window_baseline must be >= 1 or null, '
                             f'got {sliding_window_baseline}')
        if bucket_size is not None and bucket_size < 1:
            raise ValueError(f'memory protocol: bucket_size must be >= 1 or null, got {bucket_size}')
        super().__init__(context_length=context_length, unroll_length=unroll_length,
                         num_trajectories=num_trajectories, num_videos=num_videos, seeds=seeds, metrics=metrics,
                         every=every, reference_quirks=False, annotate_context=False, weights=weights,
                         fvd_min_frames=10, fvd_frames=None, fvd_resolution=None, fvd_batch_size=32,
                         frame_batch_size=frame_batch_size)
        self.sliding_window_baseline, self.bucket_size = sliding_window_baseline, bucket_size

    @staticmethod
    def check_experiment(experiment, path: str):
        """A sliding-window baseline needs a sampler with a sliding window (``context_window``), narrower than the
        videos sampled (see ``far.checks``)."""
        settings = experiment.settings(path)
        window, sampler = settings['sliding_window_baseline'], experiment.options.test.sampler
        if window is None:
            return
        if 'context_window' not in sampler.settings:
            experiment.fail(f'{path}.sliding_window_baseline',
                            f"needs a sampler with a sliding window (context_window); test.sampler.type "
                            f"{sampler['type']} has none: remove the baseline or change the sampler")
        frames = settings['context_length'] + settings['unroll_length']
        if window >= frames:
            experiment.fail(f'{path}.sliding_window_baseline',
                            f'is {window} frames, but the protocol samples only {frames} (context_length + '
                            f'unroll_length): such a window sees everything and is no baseline; make it smaller')

    def sampler_baselines(self) -> Dict[str, dict]:
        """The same sampler restricted to the last ``sliding_window_baseline`` frames (no long-term memory)."""
        if self.sliding_window_baseline is None:
            return {}
        return {'sliding_window': {'context_window': self.sliding_window_baseline}}

    def frame_masks(self, revisit: torch.Tensor,
                    first_visit: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        """The scored categories as masks ``[B, unroll_length]`` over the predicted frames."""
        predicted = revisit[:, self.context_length:]
        masks = {'revisit': predicted, 'other': ~predicted}
        if first_visit is not None:
            masks['first_visit'] = first_visit[:, self.context_length:]
        if self.bucket_size is not None:
            frames = self.context_length + self.unroll_length
            for start in range(self.context_length, frames, self.bucket_size):
                end = min(start + self.bucket_size, frames)
                bucket = torch.zeros_like(predicted)
                bucket[:, start - self.context_length:end - self.context_length] = True
                masks[f'frames_{start}-{end - 1}'] = bucket
        return masks

    @torch.no_grad()
    def evaluate(self, samples: torch.Tensor, gt: torch.Tensor, revisit: torch.Tensor,
                 first_visit: Optional[torch.Tensor] = None,
                 device: Optional[Union[str, torch.device]] = None) -> Scores:
        """Scores of one seed: ``samples [B,n,F,3,H,W]``, ``gt [B,F,3,H,W]`` in [0,1], ``revisit`` and optionally
        ``first_visit`` BoolTensors ``[B,F]`` -> ``{metric: value, metric_revisit: value, ...}``."""
        for name, mask in (('revisit', revisit), ('first_visit', first_visit)):
            if mask is not None and (mask.dtype != torch.bool or tuple(mask.shape) != tuple(gt.shape[:2])):
                raise ValueError(f'memory protocol: {name} must be a BoolTensor [B, F] = {list(gt.shape[:2])}, '
                                 f'got {mask.dtype} {list(mask.shape)}')
        results = super().evaluate(samples, gt, device)
        masks = self.frame_masks(revisit.cpu(), None if first_visit is None else first_visit.cpu())
        for name, scores in results.frames.items():
            for category, mask in masks.items():
                if mask.any():
                    results[f'{name}_{category}'] = scores[mask].mean().item()
        results.categories = {name: masks[name] for name in self.curve_categories if name in masks}
        return results

    def describe(self) -> dict:
        info = super().describe()
        info['scoring'] = {
            'pixel': ('predicted frames; mean over frames; best trajectory per video; mean over videos; PSNR capped '
                      f'at {MAX_PSNR:.2f} dB'),
            'categories': ('<metric>_<category>: mean over the predicted frames of the category, pooled over '
                           "videos, best trajectory; revisit: the dataset's revisit mask (a place last seen more "
                           'than the short-term window ago); other: the remaining predicted frames; first_visit: '
                           "the dataset's first_visit mask (places never seen before), a subset of other"
                           + (f'; frames_<a>-<b>: buckets of {self.bucket_size} frames' if self.bucket_size else '')),
        }
        info['sliding_window_baseline'] = self.sliding_window_baseline
        return info
