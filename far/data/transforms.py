"""Clip geometry: which frames of a video form a clip, resize and crop.

The resize is torchvision's tensor ``Resize(size)`` (shorter side to ``size``, bilinear with antialias,
``align_corners=False``) written with ``F.interpolate``, so the clips match the published FAR
checkpoints without torchvision installed.
"""
import random
from typing import List, Union

import torch
import torch.nn.functional as F


def sample_frame_ids(total: int, num_frames: int, interval: int, random_start: bool,
                     rng: random.Random) -> List[int]:
    """Which frames of a ``total``-frame video form a clip of ``num_frames`` frames.

    Every ``interval``-th frame from a start that is uniform over the valid starts in training and 0 in
    evaluation; a video too short for the interval gives consecutive frames from 0. The caller deals with
    a video shorter than ``num_frames`` (padding or an error, depending on the dataset).
    """
    max_start = total - (num_frames - 1) * interval
    if max_start < 1:
        start, interval = 0, 1
    else:
        start = rng.randrange(max_start) if random_start else 0
    return list(range(start, start + num_frames * interval, interval))


def resize_short_side(video: torch.Tensor, size: int) -> torch.Tensor:
    """``[T, C, H, W]`` float video with its shorter side resized to ``size`` (torchvision ``Resize(size)``)."""
    height, width = video.shape[-2:]
    short, long = min(height, width), max(height, width)
    new_long = int(size * long / short)
    out_size = (size, new_long) if height <= width else (new_long, size)
    if out_size == (height, width):
        return video
    return F.interpolate(video, size=out_size, mode='bilinear', align_corners=False, antialias=True)


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
