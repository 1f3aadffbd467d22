"""A protocol's scores of one seed, and where they come from frame by frame.

``Scores`` is the ``{name: value}`` dict a protocol reports, carrying ``frames``: per frame metric, the
scores ``[B, F]`` over the predicted frames of the trajectory that metric chose for each video (the metric is
their mean over frames, then over videos), and ``categories``: masks ``[B, F]`` of predicted frames that the
protocol also scores apart (e.g. the memory protocol's revisits). Its ``curves`` follow a metric along the
roll-out: the mean over videos per predicted frame.
"""
from typing import Dict, List, Optional, Sequence

import torch

Curves = Dict[str, List[Optional[float]]]


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
