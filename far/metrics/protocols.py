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

Scoring (B videos, n trajectories):

* ``mse``, ``psnr``, ``ssim``, ``lpips`` (AlexNet, v0.1): predicted frames only; per frame ->
  mean over frames -> best trajectory per video (lowest MSE/LPIPS, highest PSNR/SSIM) -> mean
  over videos.
* ``fvd``: all frames, context included; FVD between the B samples of trajectory k and the B
  ground truths, averaged over k (at least ``fvd_min_frames`` frames). ``fvd_frames: N`` scores the first
  N frames only (NBP's gFVD: the first 16 of 17) and ``fvd_resolution: R`` resizes the frames to R x R
  (bilinear) before I3D's own resizing (NBP's K600 numbers: 64).

``reference_quirks: true`` reproduces how FAR computed its published numbers, to compare with
them like for like:

1. every metric sees the videos after FAR's mp4 round trip (``video_io.paired_mp4_round_trip``:
   side-by-side H.264 at CRF 23, uint8 truncation), with ``annotate_context`` adding the red
   frame FAR draws around context frames (in its 144-frame long-prediction runs);
2. LPIPS gets the [0,1] frames as if they were in [-1,1] (lower than correct LPIPS);
3. MSE takes each video's *worst* trajectory.

The results then carry those values under the plain names, ``lpips_normalized`` (correct input
range, same decoded frames), and every metric computed without any quirk as ``<name>_quirk_free``.
By default no quirk is applied.
"""
import math
import random
from pathlib import Path
from typing import Dict, List, Literal, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from ..registry import METRICS, PROTOCOLS, variant
from ..video import CRF
from . import lpips, pixel  # noqa: F401  (register the metrics the protocols build)
from .base import FrameMetric
from .environment import environment_info
from .fvd import frechet_distance
from .round_trip import paired_mp4_round_trip
from .scores import Scores
from .weights import WEIGHT_FILES, sha256_of

MetricName = Literal['mse', 'psnr', 'ssim', 'lpips', 'fvd']
ALL_METRICS = ('mse', 'psnr', 'ssim', 'lpips', 'fvd')


class Protocol:
    """Shared by all protocols: argument checks, metric networks, scoring and seed aggregation."""

    name: str

    # metric name -> METRICS entry that scores it (a protocol may score a name with another entry)
    metric_types: Dict[str, str] = {}

    def __init__(self, *, context_length: int, unroll_length: int, num_trajectories: int = 1,
                 num_videos: Optional[int] = None, seeds: Sequence[int] = (0, ),
                 metrics: Sequence[MetricName] = ALL_METRICS, every: int = 1, reference_quirks: bool = False,
                 annotate_context: bool = False, weights: Optional[Dict[str, str]] = None, fvd_min_frames: int = 10,
                 fvd_frames: Optional[int] = None, fvd_resolution: Optional[int] = None, fvd_batch_size: int = 32,
                 frame_batch_size: int = 256):
        where = f'{self.name} protocol'
        if context_length < 0 or unroll_length < 1:
            raise ValueError(f'{where}: need context_length >= 0 and unroll_length >= 1, '
                             f'got {context_length} and {unroll_length}')
        if num_trajectories < 1 or every < 1 or (num_videos is not None and num_videos < 1):
            raise ValueError(f'{where}: need num_trajectories >= 1, every >= 1 and num_videos >= 1 (or null), '
                             f'got {num_trajectories}, {every}, {num_videos}')
        if not seeds:
            raise ValueError(f'{where}: seeds must list at least one seed')
        unknown = [m for m in metrics if m not in ALL_METRICS]
        if unknown or not metrics:
            raise ValueError(f'{where}: metrics must be a non-empty subset of {list(ALL_METRICS)}, '
                             f'got {list(metrics)}')
        unknown = sorted(set(weights or {}) - set(WEIGHT_FILES))
        if unknown:
            raise ValueError(f'{where}: unknown weights {unknown}; known: {list(WEIGHT_FILES)}')
        scored = context_length + unroll_length if fvd_frames is None else fvd_frames
        if fvd_frames is not None and not 0 < fvd_frames <= context_length + unroll_length:
            raise ValueError(f'{where}: fvd_frames must be in [1, {context_length + unroll_length}] (the frames of a '
                             f'video) or null for all, got {fvd_frames}')
        if fvd_resolution is not None and fvd_resolution < 1:
            raise ValueError(f'{where}: fvd_resolution must be >= 1 or null, got {fvd_resolution}')
        if 'fvd' in metrics and scored < fvd_min_frames:
            raise ValueError(f'{where}: FVD needs at least fvd_min_frames={fvd_min_frames} frames, the protocol scores '
                             f'{scored}; drop fvd from metrics')
        if 'fvd' in metrics and num_videos is not None and num_videos < 2:
            raise ValueError(f'{where}: FVD compares sets of at least 2 videos, num_videos is {num_videos}')

        self.context_length, self.unroll_length = context_length, unroll_length
        self.num_trajectories, self.num_videos, self.every = num_trajectories, num_videos, every
        self.seeds, self.metrics = [int(s) for s in seeds], list(metrics)
        self.reference_quirks, self.annotate_context = reference_quirks, annotate_context
        self.fvd_min_frames, self.fvd_frames, self.fvd_resolution = fvd_min_frames, fvd_frames, fvd_resolution

        # Networks are loaded now, so a missing weight file stops the run before any sampling.
        weights = weights or {}

        def metric(name: str, **settings):
            if name == 'fvd':
                settings.update(weights=weights.get('i3d'), batch_size=fvd_batch_size)
            else:
                settings['batch_size'] = frame_batch_size
            if name == 'lpips':
                settings.update(net='alex', backbone_weights=weights.get('alexnet'),
                                head_weights=weights.get('lpips_alex'))
            return METRICS.build({'type': self.metric_types.get(name, name), **settings})

        self._frame_metrics = {m: metric(m) for m in self.metrics if m != 'fvd'}
        quirky_lpips = reference_quirks and 'lpips' in self.metrics
        self._lpips_unnormalized = metric('lpips', normalize=False) if quirky_lpips else None
        self._fvd = metric('fvd') if 'fvd' in self.metrics else None

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

    # -- scoring ----------------------------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self, samples: torch.Tensor, gt: torch.Tensor,
                 device: Optional[Union[str, torch.device]] = None) -> Scores:
        """Scores of one seed: ``samples [B,n,F,3,H,W]``, ``gt [B,F,3,H,W]`` in [0,1] -> ``{metric: value}``, with
        the per-frame scores of the frame metrics (``Scores.frames``).

        Computed on ``device`` (default: the samples'); deterministic for a given device.
        """
        frames = self.context_length + self.unroll_length
        if samples.dim() != 6 or gt.dim() != 5 or gt.shape != (samples.shape[0], *samples.shape[2:]):
            raise ValueError(f'{self.name} protocol: expected samples [B,n,F,3,H,W] and gt [B,F,3,H,W], '
                             f'got {tuple(samples.shape)} and {tuple(gt.shape)}')
        if samples.shape[2] != frames:
            raise ValueError(f'{self.name} protocol: the videos have {samples.shape[2]} frames, the protocol '
                             f'{frames} ({self.context_length} context + {self.unroll_length} predicted)')
        if self._fvd is not None and samples.shape[0] < 2:
            raise ValueError(f'{self.name} protocol: FVD needs at least 2 videos, got {samples.shape[0]}')
        if not self.reference_quirks:
            return self._score(samples, gt, device, quirks=False)

        border = self.context_length if self.annotate_context else 0
        decoded_samples, decoded_gt = paired_mp4_round_trip(samples, gt, border)
        results = self._score(decoded_samples, decoded_gt, device, quirks=True)
        if 'lpips' in self.metrics:
            normalized = self._chosen_frames(self._frame_metrics['lpips'], decoded_samples, decoded_gt, device, False)
            results['lpips_normalized'] = normalized.mean(dim=1).mean().item()
        quirk_free = self._score(samples, gt, device, quirks=False)
        results.update({f'{name}_quirk_free': value for name, value in quirk_free.items()})
        return results

    def _score(self, samples: torch.Tensor, gt: torch.Tensor, device, quirks: bool) -> Scores:
        results = Scores()
        for name in self.metrics:
            if name == 'fvd':
                results[name] = self._mean_fvd(samples, gt, device)
            else:
                metric = self._lpips_unnormalized if quirks and name == 'lpips' else self._frame_metrics[name]
                frames = self._chosen_frames(metric, samples, gt, device, worst=quirks and name == 'mse')
                results[name], results.frames[name] = frames.mean(dim=1).mean().item(), frames
        return results

    def _chosen_frames(self, metric: FrameMetric, samples: torch.Tensor, gt: torch.Tensor, device,
                       worst: bool) -> torch.Tensor:
        """Scores ``[B, F]`` over the predicted frames of each video's best (or ``worst``) trajectory, ranked by
        its mean over frames."""
        gt = gt if gt.dim() == samples.dim() else gt.unsqueeze(1)  # one ground truth for all trajectories
        predicted = slice(self.context_length, None)
        scores = metric(samples[:, :, predicted], gt[:, :, predicted], device).double()  # [B, n, F]
        per_trajectory = scores.mean(dim=-1)
        take_max = metric.higher_is_better != worst
        chosen = per_trajectory.argmax(dim=1) if take_max else per_trajectory.argmin(dim=1)
        return scores[torch.arange(len(scores)), chosen]

    def _fvd_input(self, videos: torch.Tensor) -> torch.Tensor:
        """The frames FVD scores: the first ``fvd_frames``, at ``fvd_resolution``."""
        videos = videos[..., :self.fvd_frames, :, :, :]
        if self.fvd_resolution is None:
            return videos
        frames = videos.reshape(-1, *videos.shape[-3:]).float()
        resized = F.interpolate(frames, size=(self.fvd_resolution, self.fvd_resolution), mode='bilinear',
                                align_corners=False)
        return resized.reshape(*videos.shape[:-2], self.fvd_resolution, self.fvd_resolution)

    def _mean_fvd(self, samples: torch.Tensor, gt: torch.Tensor, device) -> float:
        fake = self._fvd.features(self._fvd_input(samples), device)  # [B, n, D]
        # The ground truth's features are computed once unless each trajectory has its own copy.
        real = self._fvd.features(self._fvd_input(gt), device)
        real = real if real.dim() == fake.dim() else real.unsqueeze(1).expand_as(fake)
        return float(np.mean([frechet_distance(fake[:, k], real[:, k]) for k in range(fake.shape[1])]))

    # -- seeds and reporting -----------------------------------------------------------------------------------

    def aggregate(self, per_seed: List[Dict[str, float]]) -> Dict[str, float]:
        """Mean and (population) std over seeds of every value: ``{'fvd': m, 'fvd_std': s, ...}``."""
        if not per_seed or any(set(r) != set(per_seed[0]) for r in per_seed):
            raise ValueError(f'{self.name} protocol: aggregate needs one result per seed, all with the same keys')
        results = {}
        for key in per_seed[0]:
            values = np.array([r[key] for r in per_seed], dtype=np.float64)
            results[key], results[f'{key}_std'] = float(values.mean()), float(values.std())
        return results

    def selection_rule(self) -> str:
        return f'dataset indices range(0, len, {self.every}), the first {self.num_videos or "all"}'

    def _fvd_frames_rule(self) -> str:
        frames = 'all frames' if self.fvd_frames is None else f'the first {self.fvd_frames} frames'
        size = self.fvd_resolution
        return f'{frames}; ' + ('' if size is None else f'resized to {size}x{size} (bilinear), then ')

    def describe(self) -> dict:
        """What results.json records about the protocol, its networks and the software versions."""
        weights = {}
        for metric in [*self._frame_metrics.values(), self._fvd]:
            for name, path in getattr(metric, 'weight_files', {}).items():
                weights[name] = {'path': str(Path(path).resolve()), 'sha256': sha256_of(path)}
        quirks = self.reference_quirks
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
            'scoring': {'pixel': 'predicted frames; mean over frames; best trajectory per video; mean over videos',
                        'fvd': f'{self._fvd_frames_rule()}I3D Kinetics-400 (TF-Hub) logits of [-1,1] videos '
                               f'resized to 224x224 (trilinear); mean of per-trajectory FVDs; at least '
                               f'{self.fvd_min_frames} frames'},
            'reference_quirks': quirks,
            'quirks': {
                'mp4_round_trip': f'side-by-side H.264 yuv420p CRF {CRF}, uint8 truncation' if quirks else None,
                'context_border': quirks and self.annotate_context and self.context_length > 0,
                'lpips_unnormalized_inputs': quirks and 'lpips' in self.metrics,
                'mse_worst_trajectory': quirks and 'mse' in self.metrics,
            },
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

    def __init__(self, *, num_videos: int = 2048, unroll_length: int = 16, seeds: Sequence[int] = (0, 2, 4, 6),
                 metrics: Sequence[MetricName] = ('fvd', ), reference_quirks: bool = False,
                 weights: Optional[Dict[str, str]] = None, fvd_min_frames: int = 10, fvd_frames: Optional[int] = None,
                 fvd_resolution: Optional[int] = None, fvd_batch_size: int = 32, frame_batch_size: int = 256):
        super().__init__(context_length=0, unroll_length=unroll_length, num_trajectories=1, num_videos=num_videos,
                         seeds=seeds, metrics=metrics, every=1, reference_quirks=reference_quirks,
                         annotate_context=False, weights=weights, fvd_min_frames=fvd_min_frames,
                         fvd_frames=fvd_frames, fvd_resolution=fvd_resolution, fvd_batch_size=fvd_batch_size,
                         frame_batch_size=frame_batch_size)

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

    def __init__(self, *, context_length: int, unroll_length: int, num_trajectories: int = 100,
                 num_videos: Optional[int] = 256, **options):
        super().__init__(context_length=context_length, unroll_length=unroll_length,
                         num_trajectories=num_trajectories, num_videos=num_videos, **options)


@PROTOCOLS.register(aliases=('teco',))
class TECOProtocol(Protocol):
    """Long-video prediction (TECO protocol) on 300-frame clips: 144 -> 156 for the pixel metrics.

    The paper averages four runs without naming their seeds. FAR drew the red context frame in
    these runs, which ``annotate_context`` reproduces under ``reference_quirks``.
    """

    name = 'teco'

    def __init__(self, *, context_length: int = 144, unroll_length: int = 156, num_videos: Optional[int] = 256,
                 seeds: Sequence[int] = (0, 1, 2, 3), metrics: Sequence[MetricName] = ('mse', 'psnr', 'ssim', 'lpips'),
                 annotate_context: bool = True, **options):
        super().__init__(context_length=context_length, unroll_length=unroll_length, num_videos=num_videos,
                         seeds=seeds, metrics=metrics, annotate_context=annotate_context, **options)


TECOFVDProtocol = PROTOCOLS.register(
    variant(TECOProtocol, 'TECOFVDProtocol', 'TECO protocol FVD: 36 context frames -> 264 predicted.',
            context_length=36, unroll_length=264, metrics=['fvd'], annotate_context=False),
    aliases=('teco_fvd',))
