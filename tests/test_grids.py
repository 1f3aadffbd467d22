"""Sample grids: which frames they show, enlarged tiles, labelled rows, context outlines, the animation."""
import numpy as np
import pytest
import torch
from PIL import Image

from far.grids import CONTEXT, COLUMNS, GUTTER, MAX_FRAMES, MIN_TILE, OUTLINE, save_grid, shown_frames


def videos(num_videos=3, num_frames=8, size=16, seed=0):
    return torch.rand(num_videos, num_frames, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize('num_frames,context,first,stride', [
    (8, 2, 0, 1),        # the demo: everything
    (32, 2, 0, 1),       # exactly two lines
    (48, 32, 16, 1),     # MazeMemory: the 16 predicted frames and the 16 context frames before them
    (300, 144, 82, 7),   # TECO: one frame in 7, the last context frames first
])
def test_the_frames_shown(num_frames, context, first, stride):
    frames, got_stride = shown_frames(num_frames, context)
    assert got_stride == stride and frames[0] == first and frames[-1] == num_frames - 1
    assert len(frames) <= MAX_FRAMES and frames == list(range(first, num_frames, stride))
    assert any(f < context for f in frames)  # some context is always in view


def test_the_grid_is_labelled_enlarged_and_outlines_the_context(tmp_path):
    gt, model = videos(seed=0), videos(seed=1)
    grid = save_grid({'ground truth': gt, 'model': model}, tmp_path, names=['a', 'b', 'c'], context_length=2,
                     num_videos=2)
    assert grid.labels == ('ground truth', 'model') and grid.videos == ('a', 'b')  # num_videos of the 3
    assert grid.scale == 6 and grid.frames == tuple(range(8)) and 'context frames 0-1' in grid.caption
    image = np.asarray(Image.open(tmp_path / 'grid.png').convert('RGB'))
    assert image.shape[1::-1] == grid.size and min(grid.size) > 2 * MIN_TILE

    # Find the tile of video 0, model row, frame 5: a nearest-neighbour enlargement of that frame.
    tile = np.asarray(model[0, 5].mul(255).to(torch.uint8).permute(1, 2, 0)).repeat(6, 0).repeat(6, 1)
    candidates = np.argwhere((image == tile[0, 0]).all(axis=-1))
    hits = [(y, x) for y, x in candidates if (image[y:y + 96, x:x + 96] == tile).all()]
    assert len(hits) == 1
    y, x = hits[0]
    step = 96 + GUTTER
    for frame in (5, 2, 1, 0):  # frames 0 and 1 are the context
        top_border = image[y - OUTLINE:y, x - (5 - frame) * step + 10]
        assert (top_border == CONTEXT).all() == (frame < 2), frame


def test_long_clips_wrap_into_lines_and_the_animation_has_a_picture_per_frame(tmp_path):
    gt = torch.linspace(0, 1, 48).view(1, 48, 1, 1, 1).expand(1, 48, 3, 32, 32)  # grey frames: no red in them
    grid = save_grid({'ground truth': gt, 'model': gt, 'copy last frame': gt}, tmp_path, names=['a'],
                     context_length=32, num_videos=4)
    assert grid.frames == tuple(range(16, 48)) and grid.scale == 3
    assert grid.size[0] < (COLUMNS + 2) * (96 + GUTTER)  # 16 frames a line: two lines, not 32 columns
    assert grid.size[1] > 2 * 3 * 96
    with Image.open(tmp_path / 'grid.gif') as gif:
        assert gif.n_frames == 48
        gif.seek(0)
        first = np.asarray(gif.convert('RGB'))
        gif.seek(47)
        last = np.asarray(gif.convert('RGB'))
    assert first.shape == last.shape and first.shape[0] > 3 * 96
    reds = [(image == CONTEXT).all(axis=-1).sum() for image in (first, last)]
    assert reds[0] > 3 * 4 * 96 and reds[1] == 0  # context outlines (and a red title) in frame 0 only


def test_grids_are_deterministic(tmp_path):
    rows = {'ground truth': videos(), 'model': videos(seed=1)}
    for folder in ('a', 'b'):
        save_grid(rows, tmp_path / folder, names=['x', 'y', 'z'], context_length=2, num_videos=3)
    for name in ('grid.png', 'grid.gif'):
        assert (tmp_path / 'a' / name).read_bytes() == (tmp_path / 'b' / name).read_bytes()
