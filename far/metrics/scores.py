"""A protocol's scores of one seed, where they come from frame by frame, and their mean over seeds.

``Scores`` is the ``{name: value}`` dict a protocol reports (with, when the protocol scores buckets of frames,
``buckets``: a list of ``{'frames': [first, last], metric: value, ...}``), carrying ``frames``: per frame metric, the
scores ``[B, F]`` over the predicted frames of the trajectory that metric chose for each video (the metric is
their mean over frames, then over videos), and ``categories``: masks ``[B, F]`` of predicted frames that the
protocol also scores apart (e.g. the memory protocol's revisits). Its ``curves`` follow a metric along the
roll-out: the mean over videos per predicted frame.
"""
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

Curves = Dict[str, List[Optional[float]]]
BUCKETS = 'buckets'


class Scores(dict):
    """``{name: value}`` with ``frames`` (``{metric: [B, F] scores}``) and ``categories`` (``{name: [B, F] mask}``)."""

    def __init__(self, values=(), *, frames: Optional[Dict[str, torch.Tensor]] = None,
                 categories: Optional[Dict[str, torch.Tensor]] = None):
        super().__init__(values)
        self.frames = dict(frames or {})
        self.categories = dict(categories or {})

    def curves(self) -> Curves:
        """Per predicted frame, the mean over videos: ``{metric: [...]}``, and ``{metric_<category>: [...]}`` over
        the videos whose frame is in the category (None where no video's is)."""
        curves = {}
        for metric, scores in self.frames.items():
            curves[metric] = scores.mean(dim=0).tolist()
            for category, mask in self.categories.items():
                counts = mask.sum(dim=0)
                sums = (scores * mask).sum(dim=0)
                curves[f'{metric}_{category}'] = [s / c if c else None for s, c in zip(sums.tolist(), counts.tolist())]
        return curves


def mean_curves(per_seed: Sequence[Curves]) -> Curves:
    """The mean over seeds of each curve, frame by frame, over the seeds that have a value there."""
    means = {}
    for name in per_seed[0]:
        columns = zip(*(curves[name] for curves in per_seed))
        means[name] = [None if not values else sum(values) / len(values)
                       for values in ([v for v in column if v is not None] for column in columns)]
    return means


def bucket_means(frames: Dict[str, torch.Tensor], buckets: Sequence[Tuple[int, int]],
                 first_predicted: int) -> List[dict]:
    """Per bucket ``(first, last)`` of absolute frame indices, every metric's mean over those frames of ``frames``
    (``{metric: [B, F] scores over the predicted frames}``), pooled over videos."""
    return [{'frames': [first, last], **{metric: scores[:, first - first_predicted:last + 1 - first_predicted]
                                         .mean().item() for metric, scores in frames.items()}}
            for first, last in buckets]


def mean_and_std(per_seed: Sequence[dict]) -> dict:
    """Mean and (population) std over seeds of every value, ``{'psnr': m, 'psnr_std': s, ...}``; buckets bucket by
    bucket (their ``frames`` kept)."""
    results = {}
    for key in per_seed[0]:
        if key == BUCKETS:
            results[key] = [{'frames': seeds[0]['frames'], **mean_and_std([
                {name: value for name, value in bucket.items() if name != 'frames'} for bucket in seeds])}
                for seeds in zip(*(scores[key] for scores in per_seed))]
            continue
        values = np.array([scores[key] for scores in per_seed], dtype=np.float64)
        results[key], results[f'{key}_std'] = float(values.mean()), float(values.std())
    return results
