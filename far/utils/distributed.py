"""Distributed helpers: the Accelerator, a launch check, the rank, deterministic seeds and even work splits.

Randomness in training and sampling is a pure function of (seed, rank, step) or (seed, video): a
resumed run draws exactly what an uninterrupted one would, and sampled videos do not depend on the
number of processes.
"""
import os
from datetime import timedelta
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor
from accelerate import Accelerator
from accelerate.utils import InitProcessGroupKwargs


class LaunchError(RuntimeError):
    """The processes that started are not the ones the launcher was asked for."""


def make_accelerator(mixed_precision: str = 'no', collective_timeout: Optional[float] = None) -> Accelerator:
    """An Accelerator on GPU when there is one, else on CPU with gloo, checked against the launcher.

    ``collective_timeout``: seconds a collective waits for the other processes before it fails (a dead or
    hung process); None keeps torch's default (30 minutes on CPU)."""
    timeout = [InitProcessGroupKwargs(timeout=timedelta(seconds=collective_timeout))] if collective_timeout else []
    # Without cpu=True, ranks launched on a machine without GPU do not join a process group: each
    # would train its own unsynchronised copy.
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(), mixed_precision=mixed_precision, kwargs_handlers=timeout,
        # The lr schedule advances once per optimiser step, whatever the number of processes.
        step_scheduler_with_optimizer=False)
    check_launch(accelerator.num_processes)
    return accelerator


def check_launch(num_processes: int, environ=os.environ):
    """Stop when a launcher asked for several processes but this one runs alone (or vice versa)."""
    world_size = int(environ.get('WORLD_SIZE', 0))
    if world_size and world_size != num_processes:
        raise LaunchError(f'the launcher started {world_size} processes but this one sees {num_processes}; '
                          'construct the Accelerator with cpu=True on machines without GPU')
    # `accelerate launch --num_processes N` without --multi_gpu starts ONE process and sets only the
    # rendezvous address (MASTER_ADDR), never WORLD_SIZE.
    if num_processes == 1 and not world_size and 'ACCELERATE_USE_CPU' in environ and 'MASTER_ADDR' in environ:
        raise LaunchError('accelerate launch was asked for several processes but started one; add --multi_gpu '
                          '(also on CPU): accelerate launch --multi_gpu --num_processes N train.py -opt ...')


def distributed_rank(rank: Optional[int] = None, world_size: Optional[int] = None) -> Tuple[int, int]:
    """``(rank, world_size)``: the arguments when given, else torch.distributed when initialised, else the
    ``RANK``/``WORLD_SIZE`` environment variables, else ``(0, 1)``."""
    if dist.is_available() and dist.is_initialized():
        found = dist.get_rank(), dist.get_world_size()
    else:
        found = int(os.environ.get('RANK', 0)), int(os.environ.get('WORLD_SIZE', 1))
    rank = found[0] if rank is None else rank
    world_size = found[1] if world_size is None else world_size
    if not 0 <= rank < world_size:
        raise ValueError(f'rank {rank} is not in [0, world_size={world_size})')
    return rank, world_size


def seed_for(*keys: int) -> int:
    """A well-mixed 32-bit seed (what every RNG accepts) from integers such as (seed, rank, step)."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1)[0])


def generator_for(device, *keys: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed_for(*keys))


class StepBatchSampler(torch.utils.data.Sampler):
    """Endless training batches of one rank, a function of (seed, step) only, so resuming is exact.

    Each epoch is a seeded permutation cut into global batches of ``batch_size * num_replicas``; rank r
    takes its slice of each. Every rank gets the same number of batches (a remainder smaller than one
    global batch is dropped), so no rank waits for another at the end of an epoch.
    """

    def __init__(self, num_samples: int, batch_size: int, num_replicas: int = 1, rank: int = 0, seed: int = 0,
                 start_step: int = 0):
        global_batch = batch_size * num_replicas
        if num_samples < global_batch:
            raise ValueError(f'the training set has {num_samples} samples, fewer than one global batch '
                             f'({batch_size} per process x {num_replicas} processes): lower trainer.batch_size')
        self.num_samples, self.batch_size, self.num_replicas, self.rank = num_samples, batch_size, num_replicas, rank
        self.seed, self.start_step = seed, start_step
        self.batches_per_epoch = num_samples // global_batch

    def epoch_batches(self, epoch: int) -> List[List[int]]:
        order = torch.randperm(self.num_samples, generator=torch.Generator().manual_seed(seed_for(self.seed, epoch)))
        global_batch = self.batch_size * self.num_replicas
        return [order[i * global_batch + self.rank * self.batch_size:][:self.batch_size].tolist()
                for i in range(self.batches_per_epoch)]

    def __iter__(self) -> Iterator[List[int]]:
        epoch, offset = divmod(self.start_step, self.batches_per_epoch)
        while True:
            yield from self.epoch_batches(epoch)[offset:]
            epoch, offset = epoch + 1, 0


def split_batches(items: Sequence, batch_size: int, num_replicas: int, rank: int) -> List[tuple]:
    """``(batch number, batch)`` pairs of one rank: batches are cut from the whole list first, so their
    content (and any batched computation on them) is the same for every number of processes."""
    batches = [items[i:i + batch_size] for i in range(0, len(items), batch_size)]
    return [(i, batch) for i, batch in enumerate(batches) if i % num_replicas == rank]


def gather_to_main(items: list, accelerator) -> Optional[list]:
    """The concatenation of every process's ``items`` on the main process (None elsewhere): only the main
    process, which scores them, ever holds everyone's samples."""
    if accelerator.num_processes == 1:
        return list(items)
    gathered = [None] * accelerator.num_processes if accelerator.is_main_process else None
    torch.distributed.gather_object(items, gathered, dst=0)
    return [item for part in gathered for item in part] if accelerator.is_main_process else None


def local_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """This process's part of a sharded tensor (a DTensor of FSDP), or the tensor itself."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor
