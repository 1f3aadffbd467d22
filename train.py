"""Train a model from an experiment YAML file (a video model, or an autoencoder: whatever `trainer.type` names).

    python train.py -opt options/demo/far_moving_shapes.yml [key.path=value ...] [--force-new]
    accelerate launch --multi_gpu --num_processes 2 train.py -opt ...      # several processes (GPU or CPU)

The run lives in experiments/<name>/ (resolved options, train.log, metrics.jsonl and training_curves.png,
checkpoints/, samples/). Starting it again resumes from its newest checkpoint; with other options it stops
unless --force-new is given.
"""
import far  # noqa: F401  (fills the registries)
from far import run
from far.experiment import load_experiment
from far.options import OptionError
from far.utils.distributed import LaunchError
from far.utils.experiment_dir import ExperimentExists
from far.utils.faults import fault_message


def parse_args(argv=None):
    parser = run.command_line(__doc__)
    parser.add_argument('--force-new', action='store_true',
                        help='archive an existing experiment folder of the same name and start afresh')
    return parser.parse_args(argv)


def train(args):
    """Train as the YAML file says; returns the trainer (its model and EMA hold the final weights)."""
    return run.train(options=load_experiment(args.opt, args.overrides), file=args.opt, root=args.root,
                     force_new=args.force_new)


if __name__ == '__main__':
    args = parse_args()
    try:
        train(args)
    except (OptionError, LaunchError, ExperimentExists) as error:
        raise SystemExit(f'error: {error}')
    except (RuntimeError, OSError) as error:
        message = fault_message(error)  # None: not a fault a run expects; its traceback shows
        if message is None:
            raise
        raise SystemExit(f'error: {message}') from None
