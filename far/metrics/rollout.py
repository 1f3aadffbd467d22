"""The ``rollout`` protocol: prediction scored along the roll-out, to see how quality holds up as a model
predicts further, e.g. beyond the clip length it was trained on.

As the ``mcvd`` protocol (the first ``context_length`` frames of each video given, the next ``unroll_length``
predicted; per frame -> mean over frames -> best trajectory per video -> mean over videos), and every per-frame
metric again over each bucket of ``bucket_size`` predicted frames, for that same best trajectory, pooled over
videos: ``buckets``, ``[{'frames': [first, last], metric: value, ...}, ...]`` (absolute frame indices, both
included).
"""
from typing import Sequence

from ..registry import PROTOCOLS
from .protocols import MetricEntry, Protocol


@PROTOCOLS.register(aliases=('rollout',))
class RolloutProtocol(Protocol):
    """Prediction with per-bucket scores. ``bucket_size``: predicted frames per bucket (the last may be shorter);
    the other arguments as :class:`Protocol`."""

    name = 'rollout'
    fixed_kwargs = {'reference_quirks': False, 'annotate_context': False}

    def __init__(self, *, bucket_size: int, metrics: Sequence[MetricEntry] = ('mse', 'psnr', 'ssim'), **options):
        if bucket_size < 1:
            raise ValueError(f'rollout protocol: bucket_size must be >= 1, got {bucket_size}')
        super().__init__(**self.fixed_kwargs, bucket_size=bucket_size, metrics=metrics, **options)
