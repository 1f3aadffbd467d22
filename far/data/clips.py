"""From a decoded clip to a dataset item, the same way for every dataset and every on-disk layout.

An item is a dict: ``'video'`` float ``[T, 3, H, W]`` in [0, 1], ``'latent'`` float ``[T, c, h, w]``
(raw, unscaled autoencoder latents) or ``'tokens'`` int64 ``[T', h, w]`` (a video tokenizer's ids), ``'index'``
(position in the dataset) and, depending on the dataset, ``'label'`` (int), ``'action'`` (LongTensor ``[T]``,
the action taken at each frame) and other per-frame fields (``'revisit'``, ``'first_visit'``: BoolTensor ``[T]``).

A sample that cannot be read (corrupt file, truncated video, too few frames, missing metadata) is
skipped with a counted warning on the ``far`` logger, or stops the run when the dataset is ``strict``.
"""
import logging
import pickle
import random
import tarfile
import zipfile
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Protocol, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info

from far.data.transforms import (ClipStart, Resize, crop_square, resampled_frame_ids, resize_short_side, resize_whole,
                                 sample_frame_ids)
from far.utils.faults import RunStopped

logger = logging.getLogger('far')

# What reading a broken sample raises: missing/corrupt files, bad archives, undecodable video, bad metadata.
UNREADABLE = (OSError, ValueError, KeyError, EOFError, RuntimeError, zipfile.BadZipFile, tarfile.TarError,
              pickle.UnpicklingError)

PER_FRAME_FIELDS = ('action', 'revisit', 'first_visit')


@dataclass
class Clip:
    """A whole decoded video (or latent sequence) with its annotations, before frame selection."""
    frames: np.ndarray  # uint8 [T, H, W, 3] pixels, float [T, c, h, w] raw latents (`latent`) or ids (`tokens`)
    latent: bool = False
    tokens: bool = False
    encoded_frames: Optional[int] = None  # tokens: the frames of the clip they encode
    fps: Optional[float] = None  # a decoded video's own frame rate (arrays of frames carry none)
    label: Optional[int] = None
    per_frame: Dict[str, np.ndarray] = field(default_factory=dict)  # 'action': int64 [T], 'revisit': bool [T], ...


@dataclass
class ClipSampler:
    """Frame selection and augmentation: a Clip in, an item out.

    The clip's frames: every ``frame_interval``-th frame, or with ``fps`` the video resampled in time to ``fps``
    with its own frame rate (``resampled_frame_ids``); they start where ``clip_start`` says (null: ``random`` in
    ``train``, ``first`` otherwise). A video shorter than ``num_frames`` (at ``fps``) is padded with black frames
    (``pad_short``, as UCF-101 and BAIR are) or unreadable. ``resolution`` resizes pixels (latents are used as
    stored): ``resize: crop`` the shorter side, then a square crop, random in ``train`` (where ``flip`` flips at
    random), centred otherwise; ``resize: squash`` the whole frame to a square, nothing cropped or flipped.
    ``fields`` lists the annotations the items carry ('label', 'action', 'revisit'); a clip missing one
    is unreadable. Token clips are taken whole, unaugmented: a causal tokenizer's tokens of a clip cannot be cut
    into the tokens of a shorter one.
    """
    num_frames: int
    frame_interval: int = 1
    train: bool = False
    pad_short: bool = False
    resolution: Optional[int] = None
    flip: bool = False
    fields: Tuple[str, ...] = ()
    resize: Resize = 'crop'
    fps: Optional[float] = None
    clip_start: Optional[ClipStart] = None

    def __post_init__(self):
        if self.num_frames < 1 or self.frame_interval < 1:
            raise ValueError(f'num_frames and frame_interval must be >= 1, '
                             f'got {self.num_frames} and {self.frame_interval}')
        unknown = set(self.fields) - {'label', *PER_FRAME_FIELDS}
        if unknown:
            raise ValueError(f'unknown item fields {sorted(unknown)}; known: label, {", ".join(PER_FRAME_FIELDS)}')

    def __call__(self, clip: Clip, index: int, rng: random.Random) -> dict:
        total = len(clip.frames)
        if 'label' in self.fields and clip.label is None:
            raise ValueError('the sample has no label')
        per_frame = [name for name in self.fields if name in PER_FRAME_FIELDS]
        for name in per_frame:
            if name not in clip.per_frame:
                raise ValueError(f"the sample has no '{name}' annotation")
            if len(clip.per_frame[name]) != total:
                raise ValueError(f"'{name}' has {len(clip.per_frame[name])} entries for {total} frames")
        if clip.tokens:
            return self._tokens_item(clip, index)

        ids = self._frame_ids(clip, rng)
        pad = self.num_frames - len(ids)

        data = torch.from_numpy(np.ascontiguousarray(clip.frames[ids]))
        if clip.latent:
            data = data.float()
        else:
            data = data.permute(0, 3, 1, 2).float() / 255.0
        if pad:
            data = torch.cat([data, data.new_zeros((pad, *data.shape[1:]))])
        if not clip.latent:
            data = self._augment(data, rng)

        item = {'latent' if clip.latent else 'video': data.contiguous(), 'index': index}
        if 'label' in self.fields:
            item['label'] = int(clip.label)
        for name in per_frame:
            values = torch.from_numpy(np.ascontiguousarray(clip.per_frame[name][ids]))
            item[name] = torch.cat([values, values.new_zeros(pad)]) if pad else values
        return item

    def _frame_ids(self, clip: Clip, rng: random.Random) -> List[int]:
        total = len(clip.frames)
        if self.fps is None:
            timeline = list(range(total))
        elif clip.fps is None:
            raise ValueError('read.fps resamples by the video\'s own frame rate, and these frames carry none '
                             '(latents or stored frame arrays): set read.fps: null')
        else:
            timeline = resampled_frame_ids(total, clip.fps, self.fps)
        if len(timeline) < self.num_frames:
            if self.pad_short:
                return timeline
            rate = '' if self.fps is None else f' ({len(timeline)} at read.fps={self.fps:g}, the video: {clip.fps:g})'
            raise ValueError(f'the clip has {total} frames{rate}, read.num_frames asks for {self.num_frames}')
        start = self.clip_start or ('random' if self.train else 'first')
        return [timeline[i] for i in sample_frame_ids(len(timeline), self.num_frames, self.frame_interval, start, rng)]

    def _tokens_item(self, clip: Clip, index: int) -> dict:
        if clip.encoded_frames != self.num_frames:
            raise ValueError(f'the tokens encode a clip of {clip.encoded_frames} frames, num_frames is '
                             f'{self.num_frames}')
        item = {'tokens': torch.from_numpy(clip.frames.astype(np.int64)), 'index': index}
        if 'label' in self.fields:
            item['label'] = int(clip.label)
        return item

    def _augment(self, video: torch.Tensor, rng: random.Random) -> torch.Tensor:
        if self.resolution is not None and self.resize == 'squash':
            return resize_whole(video, self.resolution)
        if self.resolution is not None:
            video = resize_short_side(video, self.resolution)
            video = crop_square(video, self.resolution, rng if self.train else None)
        if self.flip and self.train and rng.random() < 0.5:
            video = video.flip(-1)
        return video


class CorruptSampleError(RunStopped):
    """A sample could not be read and the dataset is strict."""


class CorruptSamples:
    """Counts one dataset's unreadable samples across its DataLoader worker processes, or stops at the
    first one when ``strict``.

    The count lives in shared memory, one slot per process (main + workers), so workers never race.
    """
    _SLOTS = 64

    def __init__(self, dataset: str, strict: bool):
        self.dataset, self.strict = dataset, strict
        self._counts = torch.zeros(self._SLOTS, dtype=torch.int64).share_memory_()

    @property
    def count(self) -> int:
        return int(self._counts.sum())

    def report(self, sample: str, error: BaseException):
        if self.strict:
            raise CorruptSampleError(
                f'{self.dataset}: sample {sample} is unreadable ({type(error).__name__}: {error}); '
                f'the dataset is strict, set strict: false to skip such samples with a warning') from error
        worker = get_worker_info()
        self._counts[0 if worker is None else 1 + worker.id % (self._SLOTS - 1)] += 1
        logger.warning('%s: skipped unreadable sample %s (%s: %s); %d skipped so far',
                       self.dataset, sample, type(error).__name__, error, self.count)


class ClipSource(Protocol):
    """Random access to the clips of one on-disk layout (a JSON list of files, or indexed tar shards)."""
    labels: Optional[List[int]]

    def __len__(self) -> int: ...

    def load(self, index: int) -> Clip: ...

    def name(self, index: int) -> str: ...


class ClipDataset(Dataset):
    """Map-style dataset: clip ``i`` of ``source`` made an item by ``sampler``, in the source's fixed order.

    An unreadable sample is replaced by the next readable one (its ``'index'`` says which), after
    ``corrupt`` has counted it or, when strict, stopped the run. ``num_samples`` keeps the first N.
    ``labels`` (class-labelled datasets) lists every item's label, for class-balanced evaluation subsets.
    """

    def __init__(self, source: ClipSource, sampler: ClipSampler, corrupt: CorruptSamples,
                 num_samples: Optional[int] = None):
        if num_samples is not None and not 0 < num_samples <= len(source):
            raise ValueError(f'{corrupt.dataset}: num_samples={num_samples}, but the data holds {len(source)} samples')
        self.source, self.sampler, self.corrupt = source, sampler, corrupt
        self.length = len(source) if num_samples is None else num_samples
        self.labels = None if source.labels is None else list(source.labels[:self.length])

    @property
    def num_skipped(self) -> int:
        return self.corrupt.count

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        for offset in range(self.length):
            i = (index + offset) % self.length
            # Training draws from `random`, reseeded per DataLoader worker by torch and by set_seed in the main
            # process; evaluation from the index, so a video read twice gives the same clip on any process.
            rng = random if self.sampler.train else random.Random(i)
            try:
                return self.sampler(self.source.load(i), i, rng)
            except UNREADABLE as error:
                self.corrupt.report(self.source.name(i), error)
        raise RuntimeError(f'{self.corrupt.dataset}: none of the {self.length} samples is readable')
