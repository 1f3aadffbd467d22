"""Frames per second and per-frame latency of the play page's streams, and what a replay shows, on this machine.

    python3 scripts/play_speed.py -opt options/long_context/far_long_maze_memory.yml [--episodes 8] [--threads 1]

Replays held-out episodes as the page's replay mode does (``far.play.session``: the stream starts from the
episode's first ``test.protocol.context_length`` frames and is fed the episode's actions), timing every frame the
model makes, and scores each frame against the episode's own (PSNR), over all frames and over the revisits
(MazeMemory's ``revisit``: a place last seen beyond the short-term window). Prints JSON: the latency's median and
90th percentile in ms, the frames per second they allow (1 / median), the PSNR of the mean squared error of the
frames (8-bit, as the page shows them), all and revisits, and the share of revisits shown at 40 dB or more (a frame
one 8-bit level off everywhere scores 48.1 dB; one wrong block of a 3 x 3 frame, about 20 dB).
"""
import json

import numpy as np

import far  # noqa: F401  (fills the registries)
from far.play.measure import command_line, load, psnr, squared_error
from far.play.session import Session


def share_at(errors: list, decibels: float):
    """The share of frames (given by their mean squared errors) whose PSNR is ``decibels`` or more."""
    return round(float(np.mean(np.asarray(errors) <= 10 ** (-decibels / 10))), 3) if errors else None


def main(argv=None):
    args = command_line(__doc__, 'held-out episodes replayed').parse_args(argv)
    _, world = load(args)
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
                      'revisit_frames': len(revisits), 'revisits_at_40db': share_at(revisits, 40.0),
                      'max_frames': world.max_frames,
                      'threads': args.threads}, indent=2))


if __name__ == '__main__':
    main()
