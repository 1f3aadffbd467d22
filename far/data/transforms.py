"""Clip geometry: which frames of a video form a clip, resize and crop.

The resizes are torchvision's tensor ``Resize`` (bilinear with antialias, ``align_corners=False``) written with
``F.interpolate``, so the clips match the published FAR checkpoints without torchvision installed.
"""
import random
from typing import List, Literal, Union

import numpy as np
import torch
import torch.nn.functional as F

ClipStart = Literal['random', 'first', 'center']
Resize = Literal['crop', 'squash']


def resampled_frame_ids(total: int, video_fps: float, fps: float) -> List[int]:
    """The frames of a ``total``-frame video at ``video_fps`` that show it at ``fps``, as NBP reads videos:
    ``int(duration * fps)`` frames spread evenly (``np.linspace``, truncated) over the whole video; a video not
    faster than ``fps`` keeps every frame."""
    if video_fps <= fps:
        return list(range(total))
    count = int(total / video_fps * fps)
    return np.linspace(0, total - 1, count).astype(int).tolist()


def sample_frame_ids(total: int, num_frames: int, interval: int, start: ClipStart,
                     rng: random.Random) -> List[int]:
    """Which frames of a ``total``-frame video form a clip of ``num_frames`` frames.

    Every ``interval``-th frame from a start that is uniform over the valid starts (``random``), 0 (``first``) or
    the middle frame less half the clip's span (``center``, NBP's rule); a video too short for the interval gives
    consecutive frames from 0. The caller deals with a video shorter than ``num_frames`` (padding or an error,
    depending on the dataset).
    """
    span = (num_frames - 1) * interval + 1
    max_start = total - span + 1
    if max_start < 1:
        first, interval = 0, 1
    elif start == 'random':
        first = rng.randrange(max_start)
    elif start == 'center':
        first = total // 2 - span // 2
    else:
        first = 0
    return list(range(first, first + num_frames * interval, interval))


def resize_short_side(video: torch.Tensor, size: int) -> torch.Tensor:
    """``[T, C, H, W]`` float video with its shorter side resized to ``size`` (torchvision ``Resize(size)``)."""
    height, width = video.shape[-2:]
    short, long = min(height, width), max(height, width)
    new_long = int(size * long / short)
    out_size = (size, new_long) if height <= width else (new_long, size)
    if out_size == (height, width):
        return video
    return F.interpolate(video, size=out_size, mode='bilinear', align_corners=False, antialias=True)


def resize_whole(video: torch.Tensor, size: int) -> torch.Tensor:
    """``[T, C, H, W]`` float video with the whole frame resized to ``size`` x ``size`` (aspect ratio not kept)."""
    if video.shape[-2:] == (size, size):
        return video
    return F.interpolate(video, size=(size, size), mode='bilinear', align_corners=False, antialias=True)


def crop_square(video: torch.Tensor, size: int, rng: Union[random.Random, None] = None) -> torch.Tensor:
    """A ``size``x``size`` crop of ``[T, C, H, W]``: centred (torchvision ``CenterCrop``), or at a random
    place when ``rng`` is given (torchvision ``RandomCrop``)."""
    height, width = video.shape[-2:]
    if height < size or width < size:
        raise ValueError(f'cannot crop {size}x{size} from a {height}x{width} video')
    if rng is None:
        top, left = int(round((height - size) / 2.0)), int(round((width - size) / 2.0))
    else:
        top, left = rng.randint(0, height - size), rng.randint(0, width - size)
    return video[..., top:top + size, left:left + size]
