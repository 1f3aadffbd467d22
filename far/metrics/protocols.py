"""The evaluation protocols behind FAR's tables, chosen in YAML (registry ``PROTOCOLS``).

* ``latte``: UCF-101 generation. A class-balanced draw of 2048 videos per seed, FVD of the
  generated videos against those ground-truth clips, mean and std over seeds 0, 2, 4, 6.
* ``mcvd``: short prediction. 256 videos, 100 trajectories each; PSNR/SSIM/LPIPS take each
  video's best trajectory, FVD is the mean of the per-trajectory FVDs.
* ``teco``: long prediction, pixel metrics from 144 context frames -> 156 predicted;
  ``teco_fvd``: its FVD, 36 context frames -> 264 predicted.

The test runner calls, per seed, ``select(dataset, seed)`` for the dataset indices, samples
``num_trajectories`` continuations of each video's first ``context_length`` frames, and gives
``evaluate`` the samples ``[B,n,F,3,H,W]`` and ground truth ``[B,F,3,H,W]`` (both in [0,1],
F = context + predicted); ``aggregate`` then reduces the seeds.

Each entry of ``metrics`` is a ``METRICS`` name or a block with the metric's options, e.g.
``[psnr, {type: fvd, frames: 16, resolution: 64}]``; the metric says what it needs (``far.metrics.base.Metric``):

* per-frame metrics (``mse``, ``psnr``, ``ssim``, ``lpips`` (AlexNet, v0.1)): predicted frames only; per frame ->
  mean over frames -> best trajectory per video (lowest MSE/LPIPS, highest PSNR/SSIM) -> mean over videos.
  ``mean_intensity`` and ``mean_intensity_gt`` (the mean pixel value of the predicted and of the true frames, which
  shows a fading prediction) are statistics, averaged over the trajectories instead.
* whole-video metrics (``fvd``): all frames, context included; FVD between the B samples of trajectory k and the B
  ground truths, averaged over k (see ``far.metrics.fvd.FVD`` for its ``frames``, ``resolution``, ``weights``).

With ``bucket_size: N`` every per-frame metric is also averaged over each bucket of N predicted frames (the last
may be shorter), for the same trajectory, pooled over videos: ``buckets``, a list of ``{'frames': [first, last],
metric: value, ...}`` (absolute frame indices, both included).

``reference_quirks: true`` reproduces how FAR computed its published numbers, to compare with
them like for like:

1. every metric sees the videos after FAR's mp4 round trip (``video_io.paired_mp4_round_trip``:
   side-by-side H.264 at CRF 23, uint8 truncation), with ``annotate_context`` adding the red
   frame FAR draws around context frames (in its 144-frame long-prediction runs);
2. each per-frame metric as FAR computed it (``FrameMetric.published``): LPIPS gets the [0,1] frames as if they
   were in [-1,1] (lower than correct LPIPS; the correct one is reported as ``lpips_normalized``), MSE takes each
   video's *worst* trajectory.

The results then carry those values under the plain names, and every metric computed without any quirk as
``<name>_quirk_free``. By default no quirk is applied.
"""
import math
import random
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch

from ..options import Block
from ..registry import METRICS, PROTOCOLS, variant
from ..video import CRF
from . import fvd, lpips, pixel  # noqa: F401  (register the metrics the protocols build)
from .base import Metric
from .environment import environment_info
from .round_trip import paired_mp4_round_trip
from .scores import BUCKETS, Scores, bucket_means, mean_and_std
from .weights import sha256_of

MetricName = str  # a METRICS name or alias, e.g. 'psnr'
MetricEntry = Union[MetricName, Block(METRICS)]
ALL_METRICS = ('mse', 'psnr', 'ssim', 'lpips', 'fvd')


class Protocol:
    """Shared by all protocols: argument checks, the metrics, scoring and seed aggregation.

    A subclass takes ``**options`` on to this constructor and fixes what it does not let YAML set in
    ``fixed_kwargs`` (read by the YAML validator as well).
    """

    name: str
    fixed_kwargs: Dict[str, object] = {}
    # what the protocol's metrics may need (``Metric.needs``)
    metric_needs: Tuple[str, ...] = ('frames', 'videos')
    # METRICS entry -> the entry that scores it in this protocol (e.g. a capped PSNR)
    metric_types: Dict[str, str] = {}
    # True: it scores an autoencoder's reconstructions (test.py samples no model; see far.metrics.reconstruction)
    reconstructs: bool = False
    # under reference_quirks, whether each per-frame metric is computed as FAR's published numbers did
    metric_quirks: bool = True

    def __init__(self, *, context_length: int, unroll_length: int, num_trajectories: int = 1,
                 num_videos: Optional[int] = None, every: int = 1, seeds: Sequence[int] = (0, ),
                 metrics: Sequence[MetricEntry] = ALL_METRICS, bucket_size: Optional[int] = None,
                 reference_quirks: bool = False, annotate_context: bool = False):
        where = f'{self.name} protocol'
        if context_length < 0 or unroll_length < 1:
            raise ValueError(f'{where}: need context_length >= 0 and unroll_length >= 1, '
                             f'got {context_length} and {unroll_length}')
        if num_trajectories < 1 or every < 1 or (num_videos is not None and num_videos < 1):
            raise ValueError(f'{where}: need num_trajectories >= 1, every >= 1 and num_videos >= 1 (or null), '
                             f'got {num_trajectories}, {every}, {num_videos}')
        if bucket_size is not None and bucket_size < 1:
            raise ValueError(f'{where}: bucket_size must be >= 1 or null, got {bucket_size}')
        if not seeds:
            raise ValueError(f'{where}: seeds must list at least one seed')
        if not metrics:
            raise ValueError(f'{where}: metrics must list at least one metric')

        self.context_length, self.unroll_length = context_length, unroll_length
        self.num_trajectories, self.num_videos, self.every = num_trajectories, num_videos, every
        self.seeds, self.bucket_size = [int(s) for s in seeds], bucket_size
        self.reference_quirks, self.annotate_context = reference_quirks, annotate_context
        # Networks are loaded now, so a missing weight file stops the run before any sampling.
        self._metrics = self._build_metrics(metrics)
        self.metrics = list(self._metrics)
        for name, metric in self._metrics.items():
            problem = metric.problem(frames=context_length + unroll_length, videos=num_videos)
            if problem is not None:
                raise ValueError(f'{where}: metrics: {name}: {problem}')

    def _build_metrics(self, entries: Sequence[MetricEntry]) -> Dict[str, Metric]:
        where = f'{self.name} protocol: metrics'
        blocks = [{'type': entry} if isinstance(entry, str) else dict(entry) for entry in entries]
        for block in blocks:
            if block.get('type') not in METRICS:
                raise ValueError(f"{where}: unknown metric {block.get('type')!r}; registered: "
                                 f"{', '.join(METRICS.keys())}")
            kind = METRICS.get(block['type'])
            if kind.needs not in self.metric_needs:
                raise ValueError(f"{where}: {block['type']} needs {kind.needs}; the {self.name} protocol scores "
                                 f"metrics of {' and '.join(self.metric_needs)} only")
        built: Dict[str, Metric] = {}
        for block in blocks:
            kind = METRICS.canonical(block['type'])
            metric = METRICS.build({**block, 'type': self.metric_types.get(kind, kind)})
            if metric.name in built:
                raise ValueError(f'{where}: {metric.name} is listed twice')
            built[metric.name] = metric
        return built

    def sampler_baselines(self) -> Dict[str, dict]:
        """Baselines made by the evaluated sampler with other settings: ``{name: settings}``. None here."""
        return {}

    # -- selection --------------------------------------------------------------------------------------------

    def select(self, dataset, seed: int) -> List[int]:
        """The first ``num_videos`` videos (all if null), taking every ``every``-th; ``seed`` is unused."""
        indices = list(range(0, len(dataset), self.every))
        if self.num_videos is None:
            return indices
        if len(indices) < self.num_videos:
            raise ValueError(f'{self.name} protocol: the dataset offers {len(indices)} videos (every {self.every}-th '
                             f'of {len(dataset)}), num_videos asks for {self.num_videos}')
        return indices[:self.num_videos]

    def buckets(self) -> List[Tuple[int, int]]:
        """``(first, last)`` absolute frame index of every bucket of predicted frames (none without ``bucket_size``)."""
        if self.bucket_size is None:
            return []
        frames = self.context_length + self.unroll_length
        return [(start, min(start + self.bucket_size, frames) - 1)
                for start in range(self.context_length, frames, self.bucket_size)]

    # -- scoring ----------------------------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self, samples: torch.Tensor, gt: torch.Tensor,
                 device: Optional[Union[str, torch.device]] = None) -> Scores:
        """Scores of one seed: ``samples [B,n,F,3,H,W]``, ``gt [B,F,3,H,W]`` in [0,1] -> ``{metric: value}``, with
        the per-frame scores of the per-frame metrics (``Scores.frames``) and their ``buckets``.

        Computed on ``device`` (default: the samples'); deterministic for a given device.
        """
        frames = self.context_length + self.unroll_length
        if samples.dim() != 6 or gt.dim() != 5 or gt.shape != (samples.shape[0], *samples.shape[2:]):
            raise ValueError(f'{self.name} protocol: expected samples [B,n,F,3,H,W] and gt [B,F,3,H,W], '
                             f'got {tuple(samples.shape)} and {tuple(gt.shape)}')
        if samples.shape[2] != frames:
            raise ValueError(f'{self.name} protocol: the videos have {samples.shape[2]} frames, the protocol '
                             f'{frames} ({self.context_length} context + {self.unroll_length} predicted)')
        for name, metric in self._metrics.items():
            problem = metric.problem(frames=frames, videos=samples.shape[0])
            if problem is not None:
                raise ValueError(f'{self.name} protocol: {name}: {problem}')
        if self.reference_quirks:
            results = self._score_as_published(samples, gt, device)
        else:
            results = self._score(samples, gt, device)
        if self.bucket_size is not None:
            results[BUCKETS] = bucket_means(results.frames, self.buckets(), self.context_length)
        return results

    def published_videos(self, samples: torch.Tensor, gt: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The videos as the reference's published numbers saw them: after FAR's mp4 round trip."""
        return paired_mp4_round_trip(samples, gt, self.context_length if self.annotate_context else 0)

    def quirks(self) -> dict:
        """What ``reference_quirks`` changes, for results files (null values: nothing, quirks off)."""
        quirks = self.reference_quirks
        return {
            'mp4_round_trip': f'side-by-side H.264 yuv420p CRF {CRF}, uint8 truncation' if quirks else None,
            'context_border': quirks and self.annotate_context and self.context_length > 0,
            'metrics': {name: metric.quirk for name, metric in self._metrics.items() if quirks and metric.quirk},
        }

    def _score_as_published(self, samples: torch.Tensor, gt: torch.Tensor, device) -> Scores:
        published_samples, published_gt = self.published_videos(samples, gt)
        results = self._score(published_samples, published_gt, device, published=self.metric_quirks)
        quirk_free = self._score(samples, gt, device)
        results.update({f'{name}_quirk_free': value for name, value in quirk_free.items()})
        return results

    def _score(self, samples: torch.Tensor, gt: torch.Tensor, device, published: bool = False) -> Scores:
        """Every metric; ``published``: the per-frame metrics as FAR computed them (``FrameMetric.published``)."""
        results = Scores()
        predicted = slice(self.context_length, None)
        for name, metric in self._metrics.items():
            if metric.needs == 'videos':
                results[name] = metric.mean_over_trajectories(samples, gt, device)
                continue
            for key, scored in (metric.published() if published else {name: metric}).items():
                frames = scored.chosen_trajectories(samples[:, :, predicted], gt[..., predicted, :, :, :], device)
                results[key] = frames.mean(dim=1).mean().item()
                if key == name:
                    results.frames[name] = frames
        return results

    # -- seeds and reporting -----------------------------------------------------------------------------------

    def aggregate(self, per_seed: List[dict]) -> dict:
        """Mean and (population) std over seeds of every value: ``{'fvd': m, 'fvd_std': s, ...}``, and of every
        bucket's values."""
        if not per_seed or any(set(r) != set(per_seed[0]) for r in per_seed):
            raise ValueError(f'{self.name} protocol: aggregate needs one result per seed, all with the same keys')
        return mean_and_std(per_seed)

    def selection_rule(self) -> str:
        return f'dataset indices range(0, len, {self.every}), the first {self.num_videos or "all"}'

    def scoring(self) -> Dict[str, str]:
        """How each metric (and each bucket) is computed, in words."""
        scoring = {name: metric.aggregation for name, metric in self._metrics.items()}
        if self.bucket_size is not None:
            scoring[BUCKETS] = (f"buckets of {self.bucket_size} predicted frames, {{'frames': [first, last]}} "
                                  'absolute indices: each per-frame metric over those frames, pooled over videos, '
                                  'for the same trajectory')
        return scoring

    def describe(self) -> dict:
        """What results.json records about the protocol, its networks and the software versions."""
        weights = {name: {'path': str(Path(path).resolve()), 'sha256': sha256_of(path)}
                   for metric in self._metrics.values() for name, path in metric.weight_files.items()}
        return {
            'protocol': self.name,
            'num_videos': self.num_videos,
            'selection': self.selection_rule(),
            'num_trajectories': self.num_trajectories,
            'seeds': self.seeds,
            'context_frames': self.context_length,
            'predicted_frames': self.unroll_length,
            'total_frames': self.context_length + self.unroll_length,
            'metrics': self.metrics,
            'scoring': self.scoring(),
            'reference_quirks': self.reference_quirks,
            'quirks': self.quirks(),
            'weights': weights,
            'environment': environment_info(),
        }


@PROTOCOLS.register(aliases=('latte',))
class LatteProtocol(Protocol):
    """UCF-101 generation (Latte's protocol): FVD of ``num_videos`` class-balanced clips per seed.

    The draw takes ``ceil(N / classes)`` videos of every class (classes in order of first
    appearance in ``dataset.labels``) with ``random.Random(seed)``, shuffles them and keeps the
    first N; with FAR's data lists this is the set FAR evaluated for that seed in one process (FAR
    seeds each process with seed + rank, so its multi-process runs drew a different set per rank).
    """

    name = 'latte'
    fixed_kwargs = {'context_length': 0, 'num_trajectories': 1, 'every': 1, 'annotate_context': False}

    def __init__(self, *, num_videos: int = 2048, unroll_length: int = 16, seeds: Sequence[int] = (0, 2, 4, 6),
                 metrics: Sequence[MetricEntry] = ('fvd', ), **options):
        super().__init__(**self.fixed_kwargs, num_videos=num_videos, unroll_length=unroll_length, seeds=seeds,
                         metrics=metrics, **options)

    def select(self, dataset, seed: int) -> List[int]:
        labels = getattr(dataset, 'labels', None)
        if labels is None:
            raise ValueError(f'latte protocol: {type(dataset).__name__} has no `labels` (one class id per video), '
                             f'which the class-balanced draw needs')
        by_class: Dict[int, List[int]] = {}
        for index, label in enumerate(labels):
            by_class.setdefault(int(label), []).append(index)
        per_class = math.ceil(self.num_videos / len(by_class))
        rng = random.Random(seed)
        chosen = []
        for label, indices in by_class.items():
            if len(indices) < per_class:
                raise ValueError(f'latte protocol: class {label} has {len(indices)} videos, the balanced draw of '
                                 f'{self.num_videos} over {len(by_class)} classes needs {per_class} of each')
            chosen += rng.sample(indices, per_class)
        rng.shuffle(chosen)
        return chosen[:self.num_videos]

    def selection_rule(self) -> str:
        return (f'class-balanced: ceil({self.num_videos}/classes) per class with random.Random(seed), '
                f'shuffled, first {self.num_videos}')


@PROTOCOLS.register(aliases=('mcvd',))
class MCVDProtocol(Protocol):
    """Short-video prediction (MCVD/ExtDM protocol): best of 100 trajectories for pixel metrics.

    FAR's settings: UCF-101 4 -> 12 with ``every: 10`` (every 10th test video), BAIR 2 -> 14 and
    2 -> 28.
    """

    name = 'mcvd'

    def __init__(self, *, num_trajectories: int = 100, num_videos: Optional[int] = 256, **options):
        super().__init__(num_trajectories=num_trajectories, num_videos=num_videos, **options)


@PROTOCOLS.register(aliases=('teco',))
class TECOProtocol(Protocol):
    """Long-video prediction (TECO protocol) on 300-frame clips: 144 -> 156 for the pixel metrics.

    The paper averages four runs without naming their seeds. FAR drew the red context frame in
    these runs, which ``annotate_context`` reproduces under ``reference_quirks``.
    """

    name = 'teco'

    def __init__(self, *, context_length: int = 144, unroll_length: int = 156, num_videos: Optional[int] = 256,
                 seeds: Sequence[int] = (0, 1, 2, 3), metrics: Sequence[MetricEntry] = ('mse', 'psnr', 'ssim', 'lpips'),
                 annotate_context: bool = True, **options):
        super().__init__(context_length=context_length, unroll_length=unroll_length, num_videos=num_videos,
                         seeds=seeds, metrics=metrics, annotate_context=annotate_context, **options)


TECOFVDProtocol = PROTOCOLS.register(
    variant(TECOProtocol, 'TECOFVDProtocol', 'TECO protocol FVD: 36 context frames -> 264 predicted.',
            context_length=36, unroll_length=264, metrics=['fvd'], annotate_context=False),
    aliases=('teco_fvd',))
