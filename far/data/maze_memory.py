"""MazeMemory: an embedded long-context benchmark, procedurally generated, no download.

A top-down world of cells, each painted a random colour of a 16-colour palette (new colours every
episode), seen through an egocentric window of ``view`` x ``view`` cells, rendered to ``resolution``
pixels. Each frame the agent moves north, east, south or west (4 actions, as DMLab) by ``stride`` cells:
``stride: 1`` slides the view one cell (a scrolling maze), ``stride == view`` moves from room to room of a
``grid`` x ``grid`` world of rooms, with nothing in common between neighbouring views. Three routes:

* ``excursions``: out from a home cell along a fresh random path of ``excursion_length`` moves (by default
  ``window`` to ``3 * window``), then back along the same path, again and again. On the way back the agent sees
  places it left long before, so predicting those frames needs memory beyond a short-term window, while the way
  out shows new places.
* ``patrol``: laps around a rectangular block of ``period`` moves (random size, start and direction).
  From the second lap on every frame shows the place seen ``period`` frames before; with ``period``
  longer than the short-term window only the long-term context holds it.
* ``walk``: every move drawn uniformly, as a player presses keys; a move into the world's edge leaves the agent
  in place. Places come back after any number of moves, along any path.

With ``hud: true`` each frame also shows where the agent is, as a game's heads-up display does: the view fills the
top-left ``view`` x ``view`` blocks of a ``view + 1`` square, and the right column's first two blocks show the
agent's x and y, each as one of ``grid`` hues (pure red, green and blue for a grid of 3; the rest of the border is
black). A place is then found in memory by its coordinates, whatever path led back to it; without them, a way back
is recalled by matching the current view against the history and copying the frame that followed the match.

Items carry ``'video'``, ``'action'`` (``action[t]`` is the move that produced frame ``t``; frame 0 carries
``START_ACTION``), ``'revisit'``: True where the frame's view position was seen before, more than
``window`` frames ago and not within the last ``window`` frames, i.e. frames only predictable from
long-term memory (score long-context models on those frames), and ``'first_visit'``: True where the
position was never seen before (frames no model can predict beyond what is still in view).

On first use a split is rendered into ``root/<split>/shard-*.tar`` (lossless ``frames.npy``, positions in
the json) and then read like every real dataset.
"""
import colorsys
from dataclasses import dataclass
from typing import Dict, Iterator, List, Literal, Optional, Sequence, Tuple

import numpy as np

from far.data.dataset import GeneratedDataset
from far.registry import DATASETS, MODELS

MOVES = {0: (0, -1), 1: (1, 0), 2: (0, 1), 3: (-1, 0)}  # action -> (dx, dy): north, east, south, west
NUM_ACTIONS = len(MOVES)
START_ACTION = 0  # frame 0 follows no move; a fixed id keeps the 4-class action embedding of DMLab configs
SPLIT_SEEDS = {'train': 0, 'val': 1, 'test': 2}
DEFAULT_NUM_EPISODES = {'train': 256, 'val': 32, 'test': 32}
# Eight hues at two brightnesses: cells a model can tell apart after lossless storage.
PALETTE = np.array([[round(255 * c) for c in colorsys.hsv_to_rgb(hue / 8, 0.8, value)]
                    for value in (1.0, 0.55) for hue in range(8)], np.uint8)


def revisit_mask(positions: Sequence[Tuple[int, int]], window: int) -> np.ndarray:
    """``[T]`` bool: position ``t`` was visited before, and last visited more than ``window`` frames ago."""
    last_seen: Dict[Tuple[int, int], int] = {}
    mask = np.zeros(len(positions), bool)
    for t, position in enumerate(map(tuple, positions)):
        mask[t] = position in last_seen and t - last_seen[position] > window
        last_seen[position] = t
    return mask


def first_visit_mask(positions: Sequence[Tuple[int, int]]) -> np.ndarray:
    """``[T]`` bool: position ``t`` was never visited before."""
    seen = set()
    mask = np.zeros(len(positions), bool)
    for t, position in enumerate(map(tuple, positions)):
        mask[t] = position not in seen
        seen.add(position)
    return mask


def excursion(rng: np.random.Generator, grid: int, home: Tuple[int, int], moves: int,
              visited: set) -> Tuple[List[Tuple[int, int]], List[int]]:
    """Up to ``moves`` steps out from ``home`` (fewer where the path is stuck) along a self-avoiding path inside the
    grid that prefers cells not in ``visited``: its cells from ``home`` on and its actions; adds its cells to
    ``visited``."""
    path, actions = [home], []
    for _ in range(moves):
        x, y = path[-1]
        options = [(a, (x + dx, y + dy)) for a, (dx, dy) in MOVES.items()
                   if 0 <= x + dx < grid and 0 <= y + dy < grid and (x + dx, y + dy) not in path]
        if not options:
            break
        fresh = [o for o in options if o[1] not in visited]
        action, cell = (fresh or options)[rng.integers(len(fresh or options))]
        path.append(cell)
        actions.append(action)
        visited.add(cell)
    return path, actions


def way_back(actions: Sequence[int]) -> List[int]:
    """The actions that retrace ``actions`` to where they started: the opposite moves, in reverse order."""
    return [(a + 2) % 4 for a in reversed(actions)]


def trajectory(rng: np.random.Generator, grid: int, length: int,
               excursion_length: Tuple[int, int]) -> Tuple[List[Tuple[int, int]], List[int]]:
    """Positions and actions of one episode: excursions of ``excursion_length[0]`` to ``excursion_length[1]`` steps
    from a home cell, each out along a self-avoiding path that prefers cells not seen yet, then back along the same
    path."""
    shortest, longest = excursion_length
    home = (int(rng.integers(grid)), int(rng.integers(grid)))
    positions, actions, visited = [home], [START_ACTION], {home}
    while len(positions) < length:
        path, moves = excursion(rng, grid, home, int(rng.integers(shortest, longest + 1)), visited)
        positions += path[1:] + path[-2::-1]
        actions += moves + way_back(moves)
    return positions[:length], actions[:length]


def patrol(rng: np.random.Generator, grid: int, length: int, period: int) -> Tuple[List[Tuple[int, int]], List[int]]:
    """Positions and actions of laps around a ``w`` x ``h`` block with ``2 (w + h) = period``, from a random
    corner of it, clockwise or not."""
    half = period // 2
    sizes = [(w, half - w) for w in range(1, half) if w < grid and half - w < grid]
    w, h = sizes[rng.integers(len(sizes))]
    lap = [1] * w + [2] * h + [3] * w + [0] * h  # clockwise from the north-west corner: east, south, west, north
    if rng.integers(2):  # anticlockwise: south, east, north, west
        lap = [2] * h + [1] * w + [0] * h + [3] * w
    x, y = int(rng.integers(grid - w)), int(rng.integers(grid - h))
    start = int(rng.integers(period))  # begin anywhere on the lap
    for action in lap[:start]:
        x, y = x + MOVES[action][0], y + MOVES[action][1]
    lap = lap[start:] + lap[:start]
    positions, actions = [(x, y)], [START_ACTION]
    while len(positions) < length:
        action = lap[(len(positions) - 1) % period]
        x, y = x + MOVES[action][0], y + MOVES[action][1]
        positions.append((x, y))
        actions.append(action)
    return positions, actions


def walk(rng: np.random.Generator, grid: int, length: int) -> Tuple[List[Tuple[int, int]], List[int]]:
    """Positions and actions of a free walk: every move drawn uniformly, as a player may press any key; a move
    into the world's edge leaves the agent where it was."""
    positions, actions = [(int(rng.integers(grid)), int(rng.integers(grid)))], [START_ACTION]
    while len(positions) < length:
        action = int(rng.integers(NUM_ACTIONS))
        x, y = positions[-1][0] + MOVES[action][0], positions[-1][1] + MOVES[action][1]
        positions.append((x, y) if 0 <= x < grid and 0 <= y < grid else positions[-1])
        actions.append(action)
    return positions, actions


def render_views(world: np.ndarray, positions: Sequence[Tuple[int, int]], view: int, resolution: int,
                 stride: int = 1) -> np.ndarray:
    """uint8 ``[T, resolution, resolution, 3]``: the ``view`` x ``view`` cells around each position, black beyond
    the world's edge. Position ``p`` is centred on cell ``p * stride + stride // 2`` (the agent in view cell
    ``(view // 2, view // 2)``); with ``stride == view`` the views tile the world into rooms."""
    cell = resolution // view
    padded = np.zeros((world.shape[0] + 2 * view, world.shape[1] + 2 * view, 3), np.uint8)
    padded[view:-view, view:-view] = world
    offset = view - view // 2 + stride // 2
    frames = [padded[stride * y + offset:stride * y + offset + view, stride * x + offset:stride * x + offset + view]
              for x, y in positions]
    return np.stack(frames).repeat(cell, axis=1).repeat(cell, axis=2)


def hud_colours(grid: int) -> np.ndarray:
    """uint8 ``[grid, 3]``: coordinate ``i`` as hue ``i / grid`` at full saturation, far apart for a small grid."""
    return np.array([[round(255 * c) for c in colorsys.hsv_to_rgb(i / grid, 1.0, 1.0)] for i in range(grid)], np.uint8)


def add_hud(frames: np.ndarray, positions: Sequence[Tuple[int, int]], grid: int, view: int) -> np.ndarray:
    """``frames`` ``[T, view * cell, view * cell, 3]`` inside a ``(view + 1) * cell`` square whose right column shows
    each position's x above its y (``hud_colours``)."""
    t, size = frames.shape[0], frames.shape[1]
    cell = size // view
    framed = np.zeros((t, size + cell, size + cell, 3), np.uint8)
    framed[:, :size, :size] = frames
    colours, xy = hud_colours(grid), np.asarray(positions)
    framed[:, :cell, size:] = colours[xy[:, 0]][:, None, None]
    framed[:, cell:2 * cell, size:] = colours[xy[:, 1]][:, None, None]
    return framed


def default_excursion_length(window: int) -> Tuple[int, int]:
    """The moves out of an excursion when ``excursion_length`` is not set: the way back reaches beyond ``window``."""
    return window, 3 * window


def generate_samples(split: str, num_episodes: int, episode_length: int, grid: int, view: int, resolution: int,
                     window: int, seed: int, stride: int = 1, route: str = 'excursions', period: int = 16,
                     excursion_length: Optional[Sequence[int]] = None, hud: bool = False) -> Iterator[Dict]:
    """The shard samples of one split; episode ``i`` depends only on ``(seed, split, i)``."""
    excursion_length = default_excursion_length(window) if excursion_length is None else tuple(excursion_length)
    for i in range(num_episodes):
        rng = np.random.default_rng([seed, SPLIT_SEEDS[split], i])
        world = PALETTE[rng.integers(len(PALETTE), size=(grid * stride, grid * stride))]  # indexed [y, x]
        positions, actions = (trajectory(rng, grid, episode_length, excursion_length) if route == 'excursions' else
                              patrol(rng, grid, episode_length, period) if route == 'patrol' else
                              walk(rng, grid, episode_length))
        meta = {'num_frames': episode_length, 'actions': actions,
                'revisit': revisit_mask(positions, window).tolist(),
                'first_visit': first_visit_mask(positions).tolist(),
                'positions': [list(p) for p in positions], 'source': 'MazeMemory'}
        if hud:
            frames = add_hud(render_views(world, positions, view, resolution // (view + 1) * view, stride),
                             positions, grid, view)
        else:
            frames = render_views(world, positions, view, resolution, stride)
        yield {'__key__': f'{split}-{i:06d}', 'frames.npy': frames, 'json': meta}


@dataclass(frozen=True, kw_only=True)
class MazeMemorySource:
    """What is rendered into ``root/<split>``: ``num_episodes`` episodes (default 256 for train, 32 for val/test)
    of ``episode_length`` frames; ``period`` is the lap length of the ``patrol`` route (even, at least 4);
    ``'revisit'`` is relative to the short-term ``window``; ``hud`` adds the coordinate readout (``resolution`` then
    divisible by ``view + 1``)."""
    root: str = 'datasets/maze_memory'
    num_episodes: Optional[int] = None
    episode_length: int = 96
    grid: int = 12
    view: int = 4
    resolution: int = 32
    window: int = 8
    stride: int = 1
    route: Literal['excursions', 'patrol', 'walk'] = 'excursions'
    period: int = 16
    excursion_length: Optional[Tuple[int, int]] = None
    hud: bool = False
    seed: int = 0
    episodes_per_shard: int = 64

    def __post_init__(self):
        episodes = 1 if self.num_episodes is None else self.num_episodes
        blocks = self.view + 1 if self.hud else self.view  # across a frame: the view's cells and the readout column
        if self.resolution % blocks:
            raise ValueError(f"MazeMemory: {'with hud, ' if self.hud else ''}resolution must be divisible by "
                             f"{'view + 1' if self.hud else 'view'} = {blocks} (blocks across a frame), got "
                             f'{self.resolution}')
        if episodes < 1 or self.episode_length < 2 or self.window < 1 or self.grid < 2:
            raise ValueError('MazeMemory: need num_episodes >= 1, episode_length >= 2, window >= 1 and grid >= 2')
        if self.stride < 1:
            raise ValueError(f'MazeMemory: stride must be >= 1 cell, got {self.stride}')
        if self.route == 'patrol' and (self.period < 4 or self.period % 2 or self.period > 4 * (self.grid - 1)):
            raise ValueError(f'MazeMemory: a patrol period must be even, >= 4 and <= 4 * (grid - 1) = '
                             f'{4 * (self.grid - 1)} (a lap around a block inside the grid), got {self.period}')
        if self.excursion_length is not None:
            self.check_excursion_length()

    def check_excursion_length(self):
        shortest, longest = self.excursion_length
        if self.route != 'excursions' or not 1 <= shortest <= longest:
            raise ValueError(f'MazeMemory: excursion_length is [shortest, longest] moves out with 1 <= shortest <= '
                             f'longest, for the excursions route only; got {list(self.excursion_length)} with route '
                             f'{self.route}')


class MazeMemoryDataset(GeneratedDataset):
    """Action-conditioned episodes of a partially observed world. Items are whole episodes: ``'video'``
    ``[episode_length, 3, resolution, resolution]``, ``'action'``, ``'revisit'``, ``'first_visit'``, ``'index'``."""
    name, source_class = 'MazeMemory', MazeMemorySource
    fields, conditions = ('action', 'revisit', 'first_visit'), {'action': NUM_ACTIONS}
    count_key, default_counts = 'num_episodes', DEFAULT_NUM_EPISODES
    length_key, shard_key = 'episode_length', 'episodes_per_shard'

    def samples(self, split: str, generation: dict) -> Iterator[Dict]:
        g = generation
        return generate_samples(split, g['num_episodes'], g['episode_length'], g['grid'], g['view'], g['resolution'],
                                g['window'], g['seed'], g['stride'], g['route'], g['period'],
                                g.get('excursion_length'), hud=g.get('hud', False))

    def generation(self, split: str, source) -> dict:
        """Unset, ``excursion_length`` and ``hud`` are left out: splits rendered before the options existed stay
        valid."""
        generation = super().generation(split, source)
        if generation['excursion_length'] is None:
            del generation['excursion_length']
        if not generation['hud']:
            del generation['hud']
        return generation

    @staticmethod
    def check_experiment(experiment, path: str):
        """The revisit frames are those beyond a FAR-Long model's short-term window: both windows agree. (A model
        without a long-term stream sees every frame at full resolution; its window is the video it is trained on.)"""
        window, model = experiment.settings(path)['source'].window, experiment.settings('model') or {}
        model_window = model.get('short_term_ctx_winsize')
        model_class = MODELS.entry_class(model['type']) if model.get('type') in MODELS else None
        if getattr(model_class, 'has_long_term_stream', False) and model_window is not None and window != model_window:
            experiment.fail(f'{path}.source.window',
                            f"is {window}, but model.short_term_ctx_winsize is {model_window}: the dataset's revisit "
                            f"frames are defined by the model's short-term window; set both to the same number of "
                            f"frames")


MazeMemory = DATASETS.register(MazeMemoryDataset(), name='MazeMemory')
