"""The training stream over tar shards: sequential reads with webdataset, even over ranks, resumable exactly."""
import math
import random
from itertools import islice
from typing import Iterable, Iterator, List, NamedTuple, Optional, Tuple

import torch
import webdataset as wds
from torch.utils.data import IterableDataset, get_worker_info

from far.data.clips import UNREADABLE, ClipSampler, CorruptSamples
from far.data.reading import ReadOptions
from far.data.shard_index import index_shards
from far.data.shards import decode_sample
from far.utils.distributed import distributed_rank, seed_for


class StreamPosition(NamedTuple):
    """Where a stream's pass starts: its epoch, the items each reader (DataLoader worker) had yielded in that
    epoch, and the reader whose batch comes next."""
    epoch: int
    done: Tuple[int, ...] = ()
    next_reader: int = 0

    def following(self) -> 'StreamPosition':
        return StreamPosition(self.epoch + 1)


class ShardStream(IterableDataset):
    """Training stream over tar shards, read sequentially with webdataset (no extraction, no random access).

    Every rank yields exactly ``ceil(samples_per_epoch / world_size)`` items per epoch (default: one pass's
    worth, the number of samples in the shards), split evenly over its DataLoader workers, so ranks always
    run the same number of steps (uneven counts hang DDP). Each (rank, worker) reads its own shards,
    ``shards[slot::slots]``; with fewer shards than readers, readers share shards and keep every n-th
    sample. Its shards repeat in a new random order on every pass, through a ``shuffle_buffer``-sample
    shuffle buffer (which mixes neighbouring passes: an epoch is a number of samples, not an exact pass).
    The randomness comes from the DataLoader's per-worker seed (or torch's global RNG without workers) and
    the rank, so a seeded run is reproducible; after :meth:`start_epoch` it is a function of (seed, epoch,
    rank, worker) only, which lets a resumed run continue an epoch where it stopped (:meth:`resume_point`).
    """

    def __init__(self, shards: List[str], sampler: ClipSampler, corrupt: CorruptSamples, read: ReadOptions, *,
                 use_latent: bool = False, use_tokens: bool = False):
        super().__init__()
        self.shards, self.sampler, self.corrupt, self.use_latent = shards, sampler, corrupt, use_latent
        self.use_tokens = use_tokens
        self.shuffle_buffer = read.shuffle_buffer
        self.rank, self.world_size = distributed_rank(read.rank, read.world_size)
        # Global positions (shard order, then tar order) give items an 'index' and split shared shards.
        entries = index_shards(shards, use_latent, corrupt, use_tokens)
        self.index_of = {(path, key): i for i, (path, key, _) in enumerate(entries)}
        epoch = len(self.index_of) if read.samples_per_epoch is None else read.samples_per_epoch
        if epoch < 1:
            raise ValueError(f'samples_per_epoch must be >= 1, got {epoch}')
        self.samples_per_rank = math.ceil(epoch / self.world_size)
        self.seed: Optional[int] = None  # set with the position by start_epoch
        self.position = StreamPosition(0)

    @property
    def num_skipped(self) -> int:
        return self.corrupt.count

    def __len__(self) -> int:
        return self.samples_per_rank

    def quotas(self, num_workers: int) -> List[int]:
        """Items each reader (DataLoader worker; none counts as one) yields per epoch."""
        readers = max(num_workers, 1)
        return [self.samples_per_rank // readers + (w < self.samples_per_rank % readers) for w in range(readers)]

    def resume_point(self, batches: int, *, batch_size: int, num_workers: int) -> StreamPosition:
        """The position after ``batches`` batches of a DataLoader with ``drop_last``: each worker batches its
        own items, and the loader takes a batch from each in turn, passing over workers that are done."""
        per_worker = [q // batch_size for q in self.quotas(num_workers)]
        turns = [w for r in range(max(per_worker)) for w, n in enumerate(per_worker) if r < n]
        if not turns:
            raise ValueError(f'{self.corrupt.dataset}: each DataLoader worker yields {max(self.quotas(num_workers))} '
                             f'samples per epoch at most, fewer than one batch of {batch_size}: lower the batch size '
                             f'or num_workers, or raise samples_per_epoch')
        epoch, offset = divmod(batches, len(turns))
        done = tuple(turns[:offset].count(w) * batch_size for w in range(len(per_worker)))
        return StreamPosition(epoch, done, turns[offset])

    def start_epoch(self, *, seed: int, position: StreamPosition):
        """Make the next pass start at ``position`` of a run seeded ``seed``: its order and augmentations are a
        function of (seed, epoch, rank, reader) only; the samples readers had yielded are read, not decoded."""
        self.seed, self.position = seed, position

    def _reader(self, worker: int, num_workers: int) -> Tuple[int, str, int]:
        """Which reader this DataLoader worker is, its seed, and the number of samples it leaves out."""
        if self.seed is None:
            info = get_worker_info()
            seed = info.seed if info else int(torch.randint(2**62, ()).item())
            return worker, f'{seed}/{self.rank}', 0  # loaders often share one seed over ranks: mix the rank in
        reader = (worker + self.position.next_reader) % num_workers  # the DataLoader asks worker 0 first
        skip = self.position.done[reader] if self.position.done else 0
        return reader, str(seed_for(self.seed, self.position.epoch, self.rank, reader)), skip

    def assignment(self, worker: int, num_workers: int) -> Tuple[List[str], int, int]:
        """The shards one reader reads, and which of their samples it keeps: ``index % stride == offset``."""
        slots, slot = self.world_size * num_workers, self.rank * num_workers + worker
        if len(self.shards) >= slots:
            return self.shards[slot::slots], 1, 0
        if len(self.shards) >= self.world_size:
            return self.shards[self.rank::self.world_size], num_workers, worker
        return self.shards, slots, slot

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info else (0, 1)
        reader, seed, skip = self._reader(worker, num_workers)
        rng = random.Random(seed)
        shards, stride, offset = self.assignment(reader, num_workers)
        readable = set(shards)
        mine = [i for (path, _), i in self.index_of.items() if path in readable and i % stride == offset]
        if not mine:
            raise ValueError(f'rank {self.rank} worker {reader} gets no sample: {len(self.index_of)} samples in '
                             f'{len(self.shards)} shards over {self.world_size} ranks x {num_workers} workers; '
                             f'use fewer workers or more shards')
        quota = self.quotas(num_workers)[reader]

        def cycle():  # this reader's shards, forever, in a new order each pass
            while True:
                yield from ({'url': path} for path in rng.sample(shards, len(shards)))

        pipeline = wds.DataPipeline(
            cycle,
            wds.tarfile_to_samples(handler=self._unreadable_shard),
            wds.select(lambda s: self.index_of[(s['__url__'], s['__key__'])] % stride == offset),
            wds.shuffle(self.shuffle_buffer, initial=self.shuffle_buffer, rng=rng),
        )
        samples = islice(enumerate(pipeline), skip, None)
        yield from islice(self._items(samples, seed, len(mine)), max(quota - skip, 0))

    def _items(self, samples: Iterable[Tuple[int, dict]], seed: str, num_mine: int) -> Iterator[dict]:
        """Items of ``(position, sample)`` pairs; a sample's augmentation depends on its position only."""
        failures = 0
        for position, sample in samples:
            index = self.index_of[(sample['__url__'], sample['__key__'])]
            try:
                item = self.sampler(decode_sample(sample, self.use_latent, self.use_tokens), index,
                                    random.Random(f'{seed}/{position}'))
            except UNREADABLE as error:
                self.corrupt.report(f"{sample['__url__']}:{sample['__key__']}", error)
                failures += 1
                if failures > num_mine:
                    raise RuntimeError(f'{self.corrupt.dataset}: none of the samples of this reader is '
                                       f'readable') from error
                continue
            failures = 0
            yield item

    def _unreadable_shard(self, error: Exception) -> bool:
        """webdataset's handler for a shard it cannot read: count it (or stop when strict) and go on."""
        self.corrupt.report(f'in shard {error.args[-1] if error.args else "?"}', error)
        return True
