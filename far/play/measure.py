"""What the scripts that measure a world's streams share (scripts/play_speed.py, scripts/play_recall.py): their
command line, the world it names, and how close 8-bit frames are (mean squared error, PSNR)."""
import argparse

import numpy as np
import torch

from far import run
from far.experiment import ExperimentOptions, load_experiment
from far.options import OptionError
from far.play.world import World, load_world


def command_line(doc: str, episodes: str) -> argparse.ArgumentParser:
    """``run.command_line`` with ``--episodes`` (what they are for: ``episodes``), ``--max-frames``, ``--threads``."""
    parser = run.command_line(doc)
    parser.add_argument('--episodes', type=int, default=8, help=episodes)
    parser.add_argument('--max-frames', type=int, help="frames a stream keeps (default: the stream's; the short-term "
                                                       'window alone is a sliding window without long-term memory)')
    parser.add_argument('--threads', type=int, default=1, help='torch intra-op threads')
    return parser


def load(args: argparse.Namespace) -> tuple[ExperimentOptions, World]:
    """The experiment and its world, on ``args.threads`` threads; a bad option stops the command in one line."""
    torch.set_num_threads(args.threads)
    try:
        options = load_experiment(args.opt, args.overrides)
        return options, load_world(options, args.opt, root=args.root, max_frames=args.max_frames)
    except OptionError as error:
        raise SystemExit(f'error: {error}') from None


def squared_error(frame: np.ndarray, truth: np.ndarray) -> float:
    """The mean squared error of two uint8 frames, on [0, 1]."""
    return float(np.mean((frame.astype(np.float64) / 255 - truth.astype(np.float64) / 255) ** 2))


def psnr(errors: list):
    """The PSNR of the mean squared error of frames (``'exact'`` when every frame is the truth's)."""
    error = float(np.mean(errors)) if errors else None
    return None if error is None else 'exact' if error == 0 else round(10 * float(np.log10(1 / error)), 2)
