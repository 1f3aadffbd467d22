"""Tar shards: writing them, reading them by index, and streaming them with webdataset.

Format (shared with the latent extractor, which writes it with ``webdataset.TarWriter``): plain POSIX
tars named ``shard-%06d.tar``; the files of one sample share a key (webdataset convention):

- ``{key}.mp4``: H.264 video (pixel datasets), or
- ``{key}.frames.npy``: uint8 ``[T, H, W, 3]`` (generated datasets, where lossless frames matter), or
- ``{key}.latent.npy``: float16/float32 raw, unscaled latents ``[T, c, h, w]``, or
- ``{key}.tokens.npy``: integer token ids ``[T', h, w]`` of a video tokenizer (the whole clip of T frames);
- always ``{key}.json``: ``{"num_frames": T, "label": int?, "actions": [int]*T?, "source": str?, ...}``
  (per-frame ``"revisit"`` and ``"first_visit": [bool]*T`` for MazeMemory; other fields are ignored),
  and ``"crc32": {member: hex}``, the checksums of the sample's other members, in shards written here:
  both readers check them and treat a mismatch as an unreadable sample (shards without them read as before).

Two readers: ``ShardIndex`` reads samples by position from the tar headers' offsets (fixed order, for
evaluation and map-style training) and ``ShardStream`` reads shards sequentially (training at scale).
"""
import io
import json
import math
import os
import random
import shutil
import tarfile
import tempfile
import zlib
from itertools import islice
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, List, NamedTuple, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist
import webdataset as wds
from torch.utils.data import IterableDataset, get_worker_info
from webdataset.tariterators import base_plus_ext
from webdataset.utils import glob_with_braces
from webdataset.writer import encode_based_on_extension1, make_handlers

from far.data.clips import UNREADABLE, Clip, ClipSampler, CorruptSamples
from far.utils.distributed import seed_for
from far.video import decode_video

SHARD_NAME = 'shard-%06d.tar'
FRAME_MEMBERS = ('mp4', 'frames.npy', 'latent.npy', 'tokens.npy')
PER_FRAME_JSON = {'actions': ('action', np.int64), 'revisit': ('revisit', np.bool_),  # json key -> item field
                  'first_visit': ('first_visit', np.bool_)}
CHECKSUM_KEY = 'crc32'  # json key: {member: crc32 hex} of the sample's other members
_ENCODERS = make_handlers()


# ----------------------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------------------

def write_shards(samples: Iterable[dict], out_dir, samples_per_shard: int) -> int:
    """Write ``{'__key__': str, 'json': dict, 'mp4' | 'frames.npy' | 'latent.npy': bytes | ndarray}``
    samples into ``out_dir/shard-%06d.tar``; returns how many were written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    count = 0
    # A fixed mtime makes the same samples give byte-identical shards.
    with wds.ShardWriter(str(out_dir / SHARD_NAME), maxcount=samples_per_shard, verbose=0, mtime=0) as sink:
        for sample in samples:
            sink.write(with_checksums(sample))
            count += 1
    return count


def crc32(data: bytes) -> str:
    return f'{zlib.crc32(data):08x}'


def with_checksums(sample: dict) -> dict:
    """``sample`` with its members encoded as webdataset writes them and their checksums in its json."""
    members = {name: encode_based_on_extension1(value, name, _ENCODERS) for name, value in sample.items()
               if name != 'json' and not name.startswith('__')}
    return {**sample, **members, 'json': {**sample['json'], CHECKSUM_KEY: {k: crc32(v) for k, v in members.items()}}}


def verify_checksums(sample: Dict[str, bytes], meta: dict):
    """Raise ValueError when a member of a shard sample differs from the checksum its json records."""
    for name, expected in meta.get(CHECKSUM_KEY, {}).items():
        if name not in sample:
            raise ValueError(f'its {name} is missing')
        found = crc32(sample[name])
        if found != expected:
            raise ValueError(f'its {name} fails its checksum (crc32 {found}, the json says {expected}): the shard is '
                             f'damaged')


def write_generated_split(out_dir, params: dict, samples: Callable[[], Iterable[dict]], samples_per_shard: int):
    """Render a generated split into ``out_dir`` once; later calls with the same ``params`` do nothing.

    The split is written to a temporary sibling folder and renamed into place, so processes started
    together (DDP ranks) never read a half-written split: the first rename wins, the others discard their
    copy. Existing shards generated with other ``params`` are an error (never silently mixed or replaced).
    """
    out_dir = Path(out_dir)
    params = json.loads(json.dumps(params))  # compare as stored: tuples become lists
    if not out_dir.exists():
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f'.{out_dir.name}.', dir=out_dir.parent))
        tmp.chmod(0o755)  # mkdtemp makes it private; the split is shared data
        try:
            write_shards(samples(), tmp, samples_per_shard)
            (tmp / 'generation.json').write_text(json.dumps(params, indent=1, sort_keys=True))
            os.rename(tmp, out_dir)
        except OSError:
            if not out_dir.exists():
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    manifest = out_dir / 'generation.json'
    if not manifest.is_file():
        raise ValueError(f'{out_dir} exists but was not written by this generator (it has no generation.json); '
                         f'delete or move it, or set another root')
    recorded = json.loads(manifest.read_text())
    if recorded != params:
        raise ValueError(f'{out_dir} holds shards generated with {recorded}, but the options ask for {params}; '
                         f'delete that folder to generate it again, or set another root')


# ----------------------------------------------------------------------------------------------------------
# Finding and indexing
# ----------------------------------------------------------------------------------------------------------

def list_shards(spec: str) -> List[str]:
    """The tar shards named by ``spec``: a folder (its ``shard-*.tar``), a glob, or a brace pattern."""
    path = Path(spec)
    found = sorted(path.glob('shard-*.tar')) if path.is_dir() else sorted(set(glob_with_braces(spec)))
    if not found:
        raise FileNotFoundError(f"no tar shards at '{spec}': give a folder of shard-*.tar files, a glob or a brace "
                                f"pattern such as data/shard-{{000000..000009}}.tar")
    return [str(p) for p in found]


class DamagedShard(ValueError):
    """A shard whose tar structure breaks off (tarfile then stops without a word); ``samples`` are the
    samples before the damage."""

    def __init__(self, message: str, samples: list):
        super().__init__(message)
        self.samples = samples


def scan_shard(path: str) -> List[Tuple[str, Dict[str, Tuple[int, int]]]]:
    """``(key, {suffix: (data offset, size)})`` for every sample of a tar, in order, from its headers only;
    :class:`DamagedShard` when a header is damaged or the tar is cut short."""
    samples: Dict[str, Dict[str, Tuple[int, int]]] = {}
    with tarfile.open(path) as tar:
        for member in tar:
            key, suffix = base_plus_ext(member.name) if member.isreg() else (None, None)
            if key is not None:
                samples.setdefault(key, {})[suffix.lower()] = (member.offset_data, member.size)
        end = tar.offset
    with open(path, 'rb') as f:
        f.seek(end)
        block = f.read(tarfile.BLOCKSIZE)
    if block != bytes(tarfile.BLOCKSIZE):  # a complete tar ends with zero blocks
        problem = 'the tar header there is damaged' if block else 'the file ends there, cut short'
        raise DamagedShard(f'{path}: {problem}; the {len(samples)} samples before byte {end} are read, the rest '
                           f'is lost', list(samples.items()))
    return list(samples.items())


def decode_sample(sample: Dict[str, bytes], use_latent: bool, use_tokens: bool = False) -> Clip:
    """One shard sample (suffix -> bytes) as a Clip."""
    meta = json.loads(sample['json'])
    verify_checksums(sample, meta)
    if use_tokens:
        return Clip(np.load(io.BytesIO(sample['tokens.npy'])), tokens=True, label=meta.get('label'),
                    encoded_frames=meta.get('num_frames'))
    if use_latent:
        frames = np.load(io.BytesIO(sample['latent.npy']))
    elif 'frames.npy' in sample:
        frames = np.load(io.BytesIO(sample['frames.npy']))
    else:
        frames = decode_video(sample['mp4'])
    if meta.get('num_frames') != len(frames):
        raise ValueError(f"its json says num_frames={meta.get('num_frames')}, its frames hold {len(frames)}")
    per_frame = {name: np.asarray(meta[key], dtype) for key, (name, dtype) in PER_FRAME_JSON.items() if key in meta}
    return Clip(frames, latent=use_latent, label=meta.get('label'), per_frame=per_frame)


def index_shards(shards: List[str], use_latent: bool, corrupt: CorruptSamples,
                 use_tokens: bool = False) -> List[Tuple[str, str, Dict[str, Tuple[int, int]]]]:
    """``(shard, key, members)`` of every sample, in shard order then tar order; a damaged shard is reported
    to ``corrupt`` and keeps the samples before the damage. Fails before any work when the shards are empty
    or do not hold what ``use_latent`` / ``use_tokens`` ask for."""
    entries = []
    for path in shards:
        try:
            found = scan_shard(path)
        except DamagedShard as error:
            corrupt.report(f'{path} (the rest of it)', error)
            found = error.samples
        except tarfile.TarError as error:
            corrupt.report(f'{path} (all of it)', error)
            found = []
        entries += [(path, key, members) for key, members in found]
    if not entries:
        raise ValueError(f'the shards {shards[0]} ... hold no sample')
    shard, _, members = entries[0]
    held = [m for m in FRAME_MEMBERS if m in members]
    if 'json' not in members or not held:
        raise ValueError(f'{shard}: the first sample has members {sorted(members)}; a shard sample needs a .json '
                         f'and one of {", ".join(FRAME_MEMBERS)}')
    wanted = 'tokens.npy' if use_tokens else 'latent.npy' if use_latent else None
    if held[0] != wanted and (wanted is not None or held[0] in ('latent.npy', 'tokens.npy')):
        fix = {'latent.npy': 'use_latent: true', 'tokens.npy': 'use_tokens: true'}.get(held[0], 'neither')
        raise ValueError(f'{shard} holds {held[0]} samples but use_latent is {str(use_latent).lower()} and use_tokens '
                         f'is {str(use_tokens).lower()}; set {fix} or point shards at the other data')
    return entries


class ShardIndex:
    """Random access to the samples of tar shards (a ``ClipSource``), in shard order then tar order."""

    def __init__(self, shards: List[str], use_latent: bool, read_labels: bool, corrupt: CorruptSamples,
                 use_tokens: bool = False):
        self.use_latent, self.use_tokens = use_latent, use_tokens
        self.entries = index_shards(shards, use_latent, corrupt, use_tokens)
        self.labels = [self._label(i) for i in range(len(self))] if read_labels else None

    def _label(self, index: int) -> Optional[int]:
        """The label its json holds; None when that cannot be read (loading the sample reports it)."""
        try:
            return json.loads(self._read(index)['json']).get('label')
        except UNREADABLE:
            return None

    def __len__(self) -> int:
        return len(self.entries)

    def _read(self, index: int) -> Dict[str, bytes]:
        path, _, members = self.entries[index]
        sample = {}
        with open(path, 'rb') as f:
            for suffix, (offset, size) in members.items():
                f.seek(offset)
                sample[suffix] = f.read(size)
        return sample

    def load(self, index: int) -> Clip:
        return decode_sample(self._read(index), self.use_latent, self.use_tokens)

    def name(self, index: int) -> str:
        path, key, _ = self.entries[index]
        return f'{path}:{key}'


# ----------------------------------------------------------------------------------------------------------
# Streaming
# ----------------------------------------------------------------------------------------------------------

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

    def __init__(self, shards: List[str], sampler: ClipSampler, corrupt: CorruptSamples, use_latent: bool,
                 shuffle_buffer: int = 256, samples_per_epoch: Optional[int] = None,
                 rank: Optional[int] = None, world_size: Optional[int] = None, use_tokens: bool = False):
        super().__init__()
        self.shards, self.sampler, self.corrupt, self.use_latent = shards, sampler, corrupt, use_latent
        self.use_tokens = use_tokens
        self.shuffle_buffer = shuffle_buffer
        self.rank, self.world_size = distributed_rank(rank, world_size)
        # Global positions (shard order, then tar order) give items an 'index' and split shared shards.
        entries = index_shards(shards, use_latent, corrupt, use_tokens)
        self.index_of = {(path, key): i for i, (path, key, _) in enumerate(entries)}
        epoch = len(self.index_of) if samples_per_epoch is None else samples_per_epoch
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
