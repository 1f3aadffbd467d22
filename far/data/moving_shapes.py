"""MovingShapes: the embedded default dataset, procedurally generated, no download.

Each clip shows 1 to ``max_shapes`` copies of one class's shape (square, circle or triangle, in red, green
or blue: 9 classes, balanced) moving at constant velocity on a black background and bouncing off the
borders. Objects are a quarter of the frame wide and move 1/16 to 1/8 of the frame per frame (2-4 px at
32x32), so copying the last frame is a clearly beatable baseline, while two context frames fix every
position and velocity. Label-conditional generation and prediction are both learnable by a tiny model.

On first use a split is rendered into ``root/<split>/shard-*.tar`` (lossless ``frames.npy`` samples) and
then read like every real dataset. Splits use disjoint seeds; everything is deterministic given ``seed``.
"""
from dataclasses import dataclass
from typing import Dict, Iterator, Literal, Optional

import numpy as np

from far.data.dataset import GeneratedDataset
from far.registry import DATASETS

SHAPES = ('square', 'circle', 'triangle')
COLOURS = {'red': (230, 40, 40), 'green': (40, 210, 60), 'blue': (50, 100, 245)}
NUM_CLASSES = len(SHAPES) * len(COLOURS)
SPLIT_SEEDS = {'train': 0, 'val': 1, 'test': 2}
DEFAULT_NUM_VIDEOS = {'train': 2048, 'val': 256, 'test': 256}

# Unit normals of an upright triangle's edges (image y points down): bottom, upper left, upper right.
_TRIANGLE_NORMALS = np.array([[0.0, 1.0], [-np.sqrt(3) / 2, -0.5], [np.sqrt(3) / 2, -0.5]])


def class_name(label: int) -> str:
    return f'{list(COLOURS)[label % len(COLOURS)]} {SHAPES[label // len(COLOURS)]}'


def _distance(shape: str, dx: np.ndarray, dy: np.ndarray, size: float) -> np.ndarray:
    """Distance in pixels from the shape's border (negative inside), at offsets ``dx, dy`` from its centre."""
    if shape == 'square':
        return np.maximum(np.abs(dx), np.abs(dy)) - size / 2
    if shape == 'circle':
        return np.sqrt(dx * dx + dy * dy) - size / 2
    # triangle with circumradius 0.6 * size (inradius 0.3 * size), so its area is close to the other shapes'
    (ax, ay), (bx, by), (cx, cy) = _TRIANGLE_NORMALS
    return np.maximum(np.maximum(ax * dx + ay * dy, bx * dx + by * dy), cx * dx + cy * dy) - 0.3 * size


def _extent(shape: str, size: float) -> float:
    """Half the width the shape needs to stay inside the frame."""
    return 0.6 * size if shape == 'triangle' else size / 2


def _bounce(start: np.ndarray, velocity: np.ndarray, low: float, high: float, num_frames: int) -> np.ndarray:
    """Positions ``[T, 2]`` of a point moving at ``velocity`` and reflecting off the walls ``low``, ``high``.

    Reflections fold the straight path ``start + t * velocity`` back into the box: a triangle wave.
    """
    span = high - low
    straight = start - low + np.arange(num_frames)[:, None] * velocity
    return low + span - np.abs(np.mod(straight, 2 * span) - span)


def render_clip(label: int, rng: np.random.Generator, num_frames: int, resolution: int, max_shapes: int) -> np.ndarray:
    """One clip of class ``label``: uint8 ``[T, H, W, 3]``."""
    shape, colour = SHAPES[label // len(COLOURS)], list(COLOURS.values())[label % len(COLOURS)]
    centres = np.arange(resolution, dtype=np.float32) + 0.5
    coverage = np.zeros((num_frames, resolution, resolution), np.float32)
    for _ in range(rng.integers(1, max_shapes + 1)):
        size = resolution * rng.uniform(0.22, 0.3)
        low, high = _extent(shape, size), resolution - _extent(shape, size)
        speed, angle = resolution * rng.uniform(1 / 16, 1 / 8), rng.uniform(0, 2 * np.pi)
        velocity = speed * np.array([np.cos(angle), np.sin(angle)])
        path = _bounce(rng.uniform(low, high, 2), velocity, low, high, num_frames).astype(np.float32)
        dx = centres[None, None, :] - path[:, 0, None, None]
        dy = centres[None, :, None] - path[:, 1, None, None]
        alpha = np.clip(0.5 - _distance(shape, dx, dy, size), 0.0, 1.0)  # 1-px antialiased edge
        coverage = np.maximum(coverage, alpha)  # same colour for every object: overlaps just merge
    # one channel at a time: numpy broadcasts over a trailing axis of 3 several times slower
    return np.rint(np.stack([coverage * c for c in colour], axis=-1)).astype(np.uint8)


def generate_samples(split: str, num_videos: int, num_frames: int, resolution: int, max_shapes: int,
                     seed: int) -> Iterator[Dict]:
    """The shard samples of one split; clip ``i`` depends only on ``(seed, split, i)``."""
    for i in range(num_videos):
        label = i % NUM_CLASSES
        rng = np.random.default_rng([seed, SPLIT_SEEDS[split], i])
        frames = render_clip(label, rng, num_frames, resolution, max_shapes)
        meta = {'label': label, 'num_frames': num_frames, 'source': 'MovingShapes', 'class': class_name(label)}
        yield {'__key__': f'{split}-{i:06d}', 'frames.npy': frames, 'json': meta}


@dataclass(frozen=True, kw_only=True)
class MovingShapesSource:
    """What is rendered into ``root/<split>``: ``num_videos`` clips (default 2048 for train, 256 for val/test) of
    ``num_frames`` frames at ``resolution``, 1 to ``max_shapes`` shapes each."""
    root: str = 'datasets/moving_shapes'
    num_videos: Optional[int] = None
    num_frames: int = 16
    resolution: Literal[16, 32, 64] = 32
    max_shapes: int = 2
    seed: int = 0
    videos_per_shard: int = 512

    def __post_init__(self):
        if (self.num_videos is not None and self.num_videos < 1) or self.max_shapes < 1 or self.num_frames < 2:
            raise ValueError(f'MovingShapes: need num_videos >= 1, max_shapes >= 1 and num_frames >= 2, '
                             f'got {self.num_videos}, {self.max_shapes}, {self.num_frames}')


class MovingShapesDataset(GeneratedDataset):
    """Class-labelled moving shapes (``NUM_CLASSES`` classes). Items: ``'video'`` ``[num_frames, 3, resolution,
    resolution]``, ``'label'``, ``'index'``."""
    name, source_class = 'MovingShapes', MovingShapesSource
    fields, conditions = ('label',), {'label': NUM_CLASSES}
    count_key, default_counts = 'num_videos', DEFAULT_NUM_VIDEOS
    length_key, shard_key = 'num_frames', 'videos_per_shard'

    def samples(self, split: str, generation: dict) -> Iterator[Dict]:
        return generate_samples(split, generation['num_videos'], generation['num_frames'], generation['resolution'],
                                generation['max_shapes'], generation['seed'])


MovingShapes = DATASETS.register(MovingShapesDataset(), name='MovingShapes')
