"""Frames per second and per-frame latency of the play page's streams, and what a replay shows, on this machine.

    python3 scripts/play_speed.py -opt options/long_context/far_long_maze_memory.yml [--episodes 8] [--threads 1]

Replays held-out episodes as the page's replay mode does (``far.play.session``: the stream starts from the
episode's first ``test.protocol.context_length`` frames and is fed the episode's actions), timing every frame the
model makes, and scores each frame against the episode's own (PSNR), over all frames and over the revisits
(MazeMemory's ``revisit``: a place last seen beyond the short-term window). Prints JSON: the latency's median and
90th percentile in ms, the frames per second they allow (1 / median), and the PSNR of the mean squared error of the
frames (8-bit, as the page shows them), all and revisits.
"""
import json

import numpy as np
import torch

import far  # noqa: F401  (fills the registries)
from far import run
from far.experiment import load_experiment
from far.options import OptionError
from far.play.scores import psnr, squared_error
from far.play.session import Session
from far.play.world import load_world


def main(argv=None):
    parser = run.command_line(__doc__)
    parser.add_argument('--episodes', type=int, default=8, help='held-out episodes replayed')
    parser.add_argument('--max-frames', type=int, help="frames a stream keeps (default: the stream's; the short-term "
                                                       'window alone is a sliding window without long-term memory)')
    parser.add_argument('--threads', type=int, default=1, help='torch intra-op threads')
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        world = load_world(load_experiment(args.opt, args.overrides), args.opt, root=args.root,
                           max_frames=args.max_frames)
    except OptionError as error:
        raise SystemExit(f'error: {error}') from None
    latencies, scores, revisits = [], [], []
    for episode in range(min(args.episodes, world.num_episodes)):
        session = Session(world, episode=episode, seed=episode, replay=True)
        revisit = session.episode.get('revisit')
        while session.frames_left:
            step = session.step()
            latencies.append(step.latency)
            scores.append(squared_error(step.frame, step.truth))
            if revisit is not None and revisit[0, step.index]:
                revisits.append(scores[-1])
    median = float(np.median(latencies))
    print(json.dumps({'frames': len(latencies), 'latency_ms_median': round(1000 * median, 2),
                      'latency_ms_p90': round(1000 * float(np.percentile(latencies, 90)), 2),
                      'fps': round(1 / median, 1), 'psnr': psnr(scores), 'psnr_revisit': psnr(revisits),
                      'revisit_frames': len(revisits), 'max_frames': world.max_frames,
                      'threads': args.threads}, indent=2))


if __name__ == '__main__':
    main()
