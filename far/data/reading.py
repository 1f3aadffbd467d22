"""How a dataset's items are read from its source: the ``read:`` group of a dataset block."""
from dataclasses import dataclass
from typing import Optional

from far.data.transforms import ClipStart, Resize


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
    """Clips cut from recorded videos: ``num_frames`` frames, every ``frame_interval``-th or, with ``fps``, the
    video resampled in time to ``fps`` frames per second by its own frame rate (a slower video keeps its frames),
    starting at ``clip_start``: ``random``, ``first`` or ``center`` (null: random in training (``split: train``),
    first otherwise). ``resolution`` resizes pixels: ``resize: crop`` the shorter side, then a square crop (random in
    training, with ``flip`` flips; centred otherwise), ``resize: squash`` the whole frame to a square (no crop, no
    flip). See ``far.data.clips.ClipSampler``."""
    num_frames: int
    frame_interval: int = 1
    fps: Optional[float] = None
    clip_start: Optional[ClipStart] = None
    resolution: Optional[int] = None
    resize: Resize = 'crop'
    flip: bool = False

    def __post_init__(self):
        if self.fps is not None and self.fps <= 0:
            raise ValueError(f'fps must be a positive number of frames per second (or null: frame_interval steps), '
                             f'got {self.fps}')
        if self.fps is not None and self.frame_interval != 1:
            raise ValueError(f'fps ({self.fps}) and frame_interval ({self.frame_interval}) both set the frame rate: '
                             f'keep one')
        if self.resize == 'squash' and self.flip:
            raise ValueError('resize: squash keeps whole frames as they are; set flip: false or resize: crop')
