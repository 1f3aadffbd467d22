"""Sample grids a person reads at a glance: a few videos, each a block of labelled rows (the ground truth, the
model, its baselines), frames enlarged (nearest neighbour) to at least ``MIN_TILE`` pixels, thin gutters,
context frames outlined in red and frame indices on top.

``grid.png`` lays a video's frames left to right, wrapped in as few lines of at most ``COLUMNS`` frames as
that takes (of equal length), and shows at most ``MAX_FRAMES`` of them: all when they fit, else the frames up to
the last one with the smallest stride at which the predicted frames fill at most three quarters of the room, so
the last context frames come before them (a 48-frame clip with 16 predicted frames shows frames 16-47 in two
lines; a 300-frame clip with 156 predicted, every 7th frame). ``grid.gif`` animates the same rows with one column
per video, one picture per frame.
Drawn with PIL's default font: the same pixels on every machine with the same Pillow.
"""
import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import List, Mapping, Sequence, Tuple

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from far.video import FPS, to_uint8, write_gif

MIN_TILE = 96      # pixels: the shorter side of a frame once enlarged
COLUMNS = 16       # frames per line
MAX_FRAMES = 32    # frames shown per video (two lines)
GUTTER = 4         # pixels between frames: room for the context outline
OUTLINE = 2        # pixels of the red outline around context frames
VIDEO_GAP = 16     # pixels between videos
PAD = 6            # pixels around text
FONT_SIZE = 13
BACKGROUND, TEXT, CONTEXT = (240, 240, 240), (20, 20, 20), (220, 0, 0)


@dataclass(frozen=True)
class Grid:
    """What a grid picture shows, for its reader and its tests."""
    size: Tuple[int, int]       # width, height in pixels
    labels: Tuple[str, ...]     # rows of each video, top to bottom
    videos: Tuple[str, ...]
    frames: Tuple[int, ...]     # frame indices shown, line after line
    stride: int
    scale: int                  # nearest-neighbour enlargement
    caption: str


def shown_frames(num_frames: int, context_length: int) -> Tuple[List[int], int]:
    """The frame indices a grid shows and their stride (see the module docstring)."""
    if num_frames <= MAX_FRAMES:
        return list(range(num_frames)), 1
    predicted_room = MAX_FRAMES * 3 // 4
    stride = max(1, math.ceil((num_frames - context_length) / predicted_room))
    return list(range(num_frames - 1, -1, -stride))[:MAX_FRAMES][::-1], stride


@functools.lru_cache(maxsize=1)
def _font() -> ImageFont.ImageFont:
    return ImageFont.load_default(size=FONT_SIZE)


def _text_size(text: str) -> Tuple[int, int]:
    left, _, right, bottom = _font().getbbox(text)
    return right - left, bottom


def _tile(frame: np.ndarray, scale: int) -> Image.Image:
    return Image.fromarray(frame.repeat(scale, axis=0).repeat(scale, axis=1))


def _outline(draw: ImageDraw.ImageDraw, x: int, y: int, width: int, height: int):
    draw.rectangle((x - OUTLINE, y - OUTLINE, x + width + OUTLINE - 1, y + height + OUTLINE - 1), outline=CONTEXT,
                   width=OUTLINE)


def _caption(frames: Sequence[int], stride: int, num_frames: int, context_length: int) -> str:
    context = {0: 'no context frames', 1: 'red outline: context frame 0'}.get(
        context_length, f'red outline: context frames 0-{context_length - 1}')
    parts = [context, 'on top: frame index']
    if stride > 1:
        parts.append(f'one frame in {stride}')
    if frames[0] > 0:
        parts.append(f'frames {frames[0]}-{frames[-1]} of 0-{num_frames - 1}')
    return '; '.join(parts)


@dataclass(frozen=True)
class _Geometry:
    """Sizes shared by the still grid and the animation of the same rows."""
    labels: List[str]
    num_videos: int
    num_frames: int
    scale: int
    tile_w: int
    tile_h: int
    text_h: int
    label_w: int

    @classmethod
    def of(cls, rows: Mapping[str, np.ndarray]) -> '_Geometry':
        num_videos, num_frames, height, width = next(iter(rows.values())).shape[:4]
        scale = max(1, math.ceil(MIN_TILE / min(height, width)))
        return cls(labels=list(rows), num_videos=num_videos, num_frames=num_frames, scale=scale,
                   tile_w=width * scale, tile_h=height * scale, text_h=_text_size('Ag0')[1] + PAD,
                   label_w=max(_text_size(label)[0] for label in rows) + 2 * PAD)


def _draw_line(image: Image.Image, rows: Mapping[str, np.ndarray], g: _Geometry, *, video: int, line: Sequence[int],
               y: int, context_length: int) -> int:
    """One line of a video's frames in the still grid, from height ``y``: indices, then the labelled rows.
    Returns the height below it."""
    draw = ImageDraw.Draw(image)
    xs = [g.label_w + c * (g.tile_w + GUTTER) for c in range(len(line))]
    for x, f in zip(xs, line):
        draw.text((x + g.tile_w // 2, y + g.text_h - 2), str(f), anchor='mb', font=_font(),
                  fill=CONTEXT if f < context_length else TEXT)
    y += g.text_h
    for label in g.labels:
        draw.text((PAD, y + g.tile_h // 2), label, anchor='lm', fill=TEXT, font=_font())
        for x, f in zip(xs, line):
            image.paste(_tile(rows[label][video, f], g.scale), (x, y))
            if f < context_length:
                _outline(draw, x, y, g.tile_w, g.tile_h)
        y += g.tile_h + GUTTER
    return y


def draw_grid(rows: Mapping[str, np.ndarray], *, names: Sequence[str], context_length: int) -> Tuple[Image.Image, Grid]:
    """The still grid of ``rows`` (label -> uint8 videos ``[B, F, H, W, 3]``, the same shape each)."""
    g = _Geometry.of(rows)
    frames, stride = shown_frames(g.num_frames, context_length)
    columns = math.ceil(len(frames) / math.ceil(len(frames) / COLUMNS))  # lines of equal length
    lines = [frames[i:i + columns] for i in range(0, len(frames), columns)]
    caption = _caption(frames, stride, g.num_frames, context_length)
    video_h = g.text_h + len(lines) * (g.text_h + len(g.labels) * (g.tile_h + GUTTER)) + VIDEO_GAP
    caption_w = _text_size(caption)[0] + 2 * PAD
    size = (max(g.label_w + len(lines[0]) * (g.tile_w + GUTTER) + GUTTER, caption_w), g.text_h + g.num_videos * video_h)
    image = Image.new('RGB', size, BACKGROUND)
    draw = ImageDraw.Draw(image)
    draw.text((PAD, PAD // 2), caption, fill=TEXT, font=_font())
    for video, name in enumerate(names):
        y = g.text_h + video * video_h
        draw.text((PAD, y + PAD // 2), name, fill=TEXT, font=_font())
        y += g.text_h
        for line in lines:
            y = _draw_line(image, rows, g, video=video, line=line, y=y, context_length=context_length)
    return image, Grid(size=size, labels=tuple(g.labels), videos=tuple(names), frames=tuple(frames), stride=stride,
                       scale=g.scale, caption=caption)


def _animation_base(g: _Geometry, names: Sequence[str], title_w: int) -> Tuple[Image.Image, List[int], List[int]]:
    """The animation's still parts (video names, row labels) and where its tiles go (x per video, y per row)."""
    column_w = max(g.tile_w, max(_text_size(name)[0] for name in names) + PAD)  # names never overlap
    xs = [g.label_w + v * (column_w + GUTTER) + (column_w - g.tile_w) // 2 for v in range(g.num_videos)]
    ys = [2 * g.text_h + r * (g.tile_h + GUTTER) for r in range(len(g.labels))]
    base = Image.new('RGB', (max(xs[-1] + g.tile_w + GUTTER, title_w), ys[-1] + g.tile_h + GUTTER), BACKGROUND)
    draw = ImageDraw.Draw(base)
    for x, name in zip(xs, names):
        draw.text((x + g.tile_w // 2, 2 * g.text_h - 2), name, anchor='mb', fill=TEXT, font=_font())
    for y, label in zip(ys, g.labels):
        draw.text((PAD, y + g.tile_h // 2), label, anchor='lm', fill=TEXT, font=_font())
    return base, xs, ys


def draw_animation(rows: Mapping[str, np.ndarray], *, names: Sequence[str], context_length: int) -> List[Image.Image]:
    """One picture per frame: the rows of ``draw_grid``, one column per video, the frame index on top."""
    g = _Geometry.of(rows)
    titles = [f'frame {f} of 0-{g.num_frames - 1} ({"context" if f < context_length else "predicted"})'
              for f in range(g.num_frames)]
    title_w = max(_text_size(t)[0] for t in titles) + 2 * PAD
    base, xs, ys = _animation_base(g, names, title_w)
    pictures = []
    for f, title in enumerate(titles):
        picture = base.copy()
        draw = ImageDraw.Draw(picture)
        draw.text((PAD, PAD // 2), title, fill=CONTEXT if f < context_length else TEXT, font=_font())
        for y, label in zip(ys, g.labels):
            for x, video in zip(xs, rows[label]):
                picture.paste(_tile(video[f], g.scale), (x, y))
                if f < context_length:
                    _outline(draw, x, y, g.tile_w, g.tile_h)
        pictures.append(picture)
    return pictures


def save_grid(rows: Mapping[str, torch.Tensor], folder, *, names: Sequence[str], context_length: int,
              num_videos: int, fps: int = FPS) -> Grid:
    """Write ``grid.png`` and ``grid.gif`` of the first ``num_videos`` videos of ``rows`` (label -> ``[B, F, 3,
    H, W]`` in [0, 1], the ground truth first) into ``folder``; returns what the grid shows."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    pixels = {label: to_uint8(video[:num_videos]) for label, video in rows.items()}
    names = list(names)[:num_videos]
    image, grid = draw_grid(pixels, names=names, context_length=context_length)
    image.save(folder / 'grid.png')
    pictures = draw_animation(pixels, names=names, context_length=context_length)
    write_gif(np.stack([np.asarray(p) for p in pictures]), folder / 'grid.gif', fps)
    return grid
