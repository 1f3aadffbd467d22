"""How a dataset's items are read from its source: the ``read:`` group of a dataset block."""
from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True, kw_only=True)
class ReadOptions:
    """What every dataset reads the same way.

    ``num_samples`` keeps the first N samples. Unreadable samples are skipped with a counted warning
    (``dataset.num_skipped``), or stop the run when ``strict``.

    ``streaming: true`` (training on shards) reads the shards sequentially with webdataset instead of by
    index: ``shuffle_buffer`` samples are shuffled, every rank gets ``ceil(samples_per_epoch / world_size)``
    samples per epoch, rank and world size come from torch.distributed or RANK/WORLD_SIZE unless
    ``rank``/``world_size`` are set. Do not hand such a stream to ``accelerator.prepare``: it is already
    split over ranks.
    """
    num_samples: Optional[int] = None
    strict: bool = False
    streaming: bool = False
    shuffle_buffer: int = 256
    samples_per_epoch: Optional[int] = None
    rank: Optional[int] = None
    world_size: Optional[int] = None


@dataclass(frozen=True, kw_only=True)
class ClipOptions(ReadOptions):
    """Clips cut from recorded videos: ``num_frames`` frames, every ``frame_interval``-th, from a random start in
    training (``split: train``) with random crops and, with ``flip``, flips; from frame 0 with centre crops
    otherwise. ``resolution`` resizes the shorter side and crops a square (pixels only)."""
    num_frames: int
    frame_interval: int = 1
    resolution: Optional[int] = None
    flip: bool = False
