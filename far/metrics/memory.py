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

and, with ``bucket_size``, in buckets of frames to follow quality along a roll-out (``buckets``, as every protocol).

Frames repeat exactly in these videos (the copy-last-frame baseline is exact whenever the agent stands
where it stood at the end of the context), so PSNR is capped at 20 log10(255) = 48.1 dB, the PSNR of an
error of one 8-bit level everywhere, instead of being infinite.

A category without frames in the evaluated videos is left out. With ``sliding_window_baseline: N``
the test runner also samples every video with the pipeline's ``context_window=N`` (the same weights,
restricted to the last N frames) and scores it as the ``sliding_window`` baseline.
"""
import math
from typing import Dict, Optional, Sequence, Union

import torch

from ..registry import METRICS, PROTOCOLS
from .pixel import PSNR
from .protocols import MetricEntry, Protocol
from .scores import Scores

MAX_PSNR = 20 * math.log10(255)


@METRICS.register()
class CappedPSNR(PSNR):
    """PSNR of at most ``MAX_PSNR``: an exactly repeated frame scores 48.1 dB, not infinity."""

    def score(self, sample: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        return super().score(sample, gt).clamp(max=MAX_PSNR)

    @property
    def aggregation(self) -> str:
        return f'{super().aggregation}; PSNR capped at {MAX_PSNR:.2f} dB'


@PROTOCOLS.register(aliases=('memory',))
class MemoryProtocol(Protocol):
    """Long-context prediction on videos with a ``revisit`` mask (``far.data.maze_memory``).

    ``sliding_window_baseline``: also score the model sampled with a sliding window of this many frames; the
    other arguments as :class:`Protocol`, whose metrics here are per frame (``lpips`` needs its weight files, see
    ``far.metrics.weights``).
    """

    name = 'memory'
    fixed_kwargs = {'reference_quirks': False, 'annotate_context': False}
    frame_fields = ('revisit', 'first_visit')  # per-frame dataset fields that `evaluate` takes
    curve_categories = ('revisit', 'first_visit')  # followed frame by frame as well (`Scores.curves`)
    metric_needs = ('frames', )
    metric_types = {'PSNR': 'CappedPSNR'}

    def __init__(self, *, context_length: int = 32, unroll_length: int = 16,
                 metrics: Sequence[MetricEntry] = ('mse', 'psnr', 'ssim'),
                 sliding_window_baseline: Optional[int] = None, **options):
        if sliding_window_baseline is not None and sliding_window_baseline < 1:
            raise ValueError(f'memory protocol: sliding_window_baseline must be >= 1 or null, '
                             f'got {sliding_window_baseline}')
        super().__init__(**self.fixed_kwargs, context_length=context_length, unroll_length=unroll_length,
                         metrics=metrics, **options)
        self.sliding_window_baseline = sliding_window_baseline

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

    def scoring(self) -> Dict[str, str]:
        return {**super().scoring(), 'categories': (
            '<metric>_<category>: mean over the predicted frames of the category, pooled over videos, best '
            "trajectory; revisit: the dataset's revisit mask (a place last seen more than the short-term window "
            "ago); other: the remaining predicted frames; first_visit: the dataset's first_visit mask (places never "
            'seen before), a subset of other')}

    def describe(self) -> dict:
        return {**super().describe(), 'sliding_window_baseline': self.sliding_window_baseline}
