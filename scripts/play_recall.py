"""Free play on a MazeMemory world: walk k moves away and back along the same path, and score what the model shows
on the way back against what it showed at the same places before.

    python3 scripts/play_recall.py -opt options/long_context/far_long_maze_world.yml [--episodes 8] [--moves 2 12]

For every held-out episode and every k, a fresh free-play stream (the page's: ``far.play.session``, started from the
episode's first ``test.protocol.context_length`` frames) walks k moves out from where the context ends, along a
self-avoiding path inside the world that prefers rooms the context has not shown (rooms the model makes up), then
the k moves back. Prints JSON per k: the PSNR (8-bit frames) of the k frames on the way back against the frames the
stream showed at the same places on the way out (the last context frame for the place left from), and of the last
of them, back where the walk started, against the frame before leaving.
"""
import json

import numpy as np

import far  # noqa: F401  (fills the registries)
from far.data.maze_memory import MazeMemory, excursion, way_back
from far.play.measure import command_line, load, psnr, squared_error
from far.play.session import Session


def context_rooms(options, context_length: int) -> list:
    """Per held-out episode, the rooms its context frames show (its positions, regenerated from the source) and its
    last context frame (uint8), to check that the regenerated episode is the one the stream starts from."""
    block = options.datasets[options.test.dataset]
    if block['type'] != 'MazeMemory':
        raise SystemExit(f"error: datasets.{options.test.dataset} is {block['type']}: the walk needs a MazeMemory "
                         f"world's positions")
    generation = MazeMemory.generation(block['split'], block['source'])
    return [([tuple(p) for p in sample['json']['positions'][:context_length]],
             sample['frames.npy'][context_length - 1]) for sample in MazeMemory.samples(block['split'], generation)]


def walk_out(seed: int, grid: int, seen: list, moves: int, tries: int = 1000) -> list:
    """The actions of a path of exactly ``moves`` steps from the last of ``seen``, preferring rooms not in it."""
    rng = np.random.default_rng(seed)
    for _ in range(tries):
        _, actions = excursion(rng, grid, seen[-1], moves, set(seen))
        if len(actions) == moves:
            return actions
    raise SystemExit(f'error: no path of {moves} moves without a room twice from {seen[-1]} in a {grid} x {grid} '
                     f'world was found in {tries} tries; pass fewer --moves')


def walk(session: Session, actions: list) -> list:
    """The frames the stream shows from the last context frame on, one more per action."""
    return [session.first().frame] + [session.step(action).frame for action in actions]


def main(argv=None):
    parser = command_line(__doc__, 'held-out episodes walked from')
    parser.add_argument('--moves', type=int, nargs=2, default=[2, 12], metavar=('FEWEST', 'MOST'),
                        help='moves out of the shortest and the longest walk')
    args = parser.parse_args(argv)
    options, world = load(args)
    rooms = context_rooms(options, world.context_length)
    grid = options.datasets[options.test.dataset]['source'].grid
    report, episodes = {}, min(args.episodes, world.num_episodes)
    for moves in range(args.moves[0], args.moves[1] + 1):
        back, home = [], []
        for episode in range(episodes):
            session = Session(world, episode=episode, seed=episode, replay=False)
            seen, last = rooms[episode]
            if not np.array_equal(session.first().frame, last):
                raise SystemExit(f'error: held-out episode {episode} is not the one its source generates: render '
                                 f'datasets.{options.test.dataset} again (delete its folder)')
            out = walk_out(episode, grid, seen, moves)
            frames = walk(session, out + way_back(out))
            back += [squared_error(frames[moves + i], frames[moves - i]) for i in range(1, moves + 1)]
            home.append(back[-1])
        report[moves] = {'psnr_way_back': psnr(back), 'psnr_back_home': psnr(home)}
    print(json.dumps({'episodes': episodes, 'max_frames': world.max_frames,
                      'moves_out': report}, indent=2))


if __name__ == '__main__':
    main()
