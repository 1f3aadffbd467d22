"""The ``nbp_reference`` protocol: NBP's evaluation as the paper ran it (``transformer_eval.py`` of
RenShuhuai-Andy/NBP), to compare with its published gFVD like for like.

The reference reads its list through ``DistributedSampler`` (shuffled, seed 0) on ``processes`` processes, each
cycling its share (``itertools.cycle``, which replays the first pass's clips) until it has drawn
``ceil(num_videos / processes)`` videos, one per batch: 10,000 UCF-101 samples from the 9,537 clips of split 1's
training list, 50,000 K600 samples from the 29,739 validation videos. This protocol selects the same videos in the
same numbers; the dataset makes the clips as the reference did (``read.fps``, ``read.clip_start``,
``read.resize: squash``), and an evaluation dataset gives a video the same clip on every read, as the replayed
first pass does. A video drawn again is sampled again with other noise (``far.evaluation.sample_videos``).

PSNR, SSIM and LPIPS are scored beside FVD, as the reference prints them: the sample of a video against its clip
(for class-conditional generation the clip only shares the class).
"""
import math
from typing import List, Sequence

from torch.utils.data import DistributedSampler

from ..registry import PROTOCOLS
from .protocols import MetricEntry, Protocol

REFERENCE_PROCESSES = 8  # the reference's evaluation scripts run 8 processes


def reference_order(num_items: int, num_videos: int, processes: int, seed: int) -> List[int]:
    """The items NBP's evaluation draws, process after process: each process's ``DistributedSampler`` share of
    ``range(num_items)`` (shuffled with ``seed``), cycled to ``ceil(num_videos / processes)`` items."""
    per_process = math.ceil(num_videos / processes)
    order = []
    for rank in range(processes):
        share = list(DistributedSampler(range(num_items), num_replicas=processes, rank=rank, shuffle=True, seed=seed))
        order += [share[i % len(share)] for i in range(per_process)]
    return order


@PROTOCOLS.register(aliases=('nbp_reference',))
class NBPReferenceProtocol(Protocol):
    """NBP's evaluation loop: ``num_videos`` samples drawn as the reference drew them (see the module), one
    trajectory each, scored with ``metrics``; ``processes`` is the reference's process count (it sets the draw),
    not this run's. Per seed, the draw shuffles with that seed (the reference: 0)."""

    name = 'nbp_reference'
    fixed_kwargs = {'num_trajectories': 1, 'every': 1, 'reference_quirks': False, 'annotate_context': False}

    def __init__(self, *, num_videos: int, context_length: int = 0, unroll_length: int = 17,
                 processes: int = REFERENCE_PROCESSES, seeds: Sequence[int] = (0, ),
                 metrics: Sequence[MetricEntry] = ('psnr', 'ssim', 'lpips', 'fvd'), **options):
        if processes < 1:
            raise ValueError(f'{self.name} protocol: processes must be >= 1, got {processes}')
        self.processes = processes
        super().__init__(**self.fixed_kwargs, num_videos=num_videos, context_length=context_length,
                         unroll_length=unroll_length, seeds=seeds, metrics=metrics, **options)

    def select(self, dataset, seed: int) -> List[int]:
        return reference_order(len(dataset), self.num_videos, self.processes, seed)

    def selection_rule(self) -> str:
        return (f"NBP's loader order: DistributedSampler(shuffle, seed) shares of {self.processes} processes, each "
                f'cycled to ceil({self.num_videos}/{self.processes}) videos, process after process')
