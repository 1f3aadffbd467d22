"""Train a model from an experiment YAML file (a video model, or an autoencoder: whatever `trainer.type` names).

    python train.py -opt options/demo/far_moving_shapes.yml [key.path=value ...] [--force-new]
    accelerate launch --multi_gpu --num_processes 2 train.py -opt ...      # several processes (GPU or CPU)

The run lives in experiments/<name>/ (resolved options, train.log, metrics.jsonl and training_curves.png,
checkpoints/, samples/). Starting it again resumes from its newest checkpoint; with other options it stops
unless --force-new is given.
"""
import argparse

from accelerate.utils import set_seed

import far  # noqa: F401  (fills the registries)
from far.experiment import building, dataset_references, load_experiment, require
from far.options import OptionError, to_dict
from far.registry import TRAINERS
from far.trainers.guards import fault_options
from far.utils.checkpoints import latest_checkpoint, load_weights
from far.utils.distributed import LaunchError, make_accelerator
from far.utils.experiment_dir import ExperimentExists, prepare_experiment_dir
from far.utils.faults import fault_message
from far.utils.logger import setup_logging


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('-opt', required=True, help='experiment YAML file')
    parser.add_argument('overrides', nargs='*', help='key.path=value overrides of the YAML file')
    parser.add_argument('--force-new', action='store_true',
                        help='archive an existing experiment folder of the same name and start afresh')
    parser.add_argument('--root', default='experiments', help='where experiment folders live')
    return parser.parse_args(argv)


def train(args):
    """Train as the YAML file says; returns the trainer (its model and EMA hold the final weights)."""
    file = args.opt
    opt = load_experiment(file, args.overrides)
    require(opt, file, 'trainer', 'train.py')
    require(opt, file, 'datasets.train', 'train.py')
    trainer_class = TRAINERS.get(opt.trainer['type'])
    needs = trainer_class.runtime_args
    if 'model' in needs:
        require(opt, file, 'model', f"trainer {opt.trainer['type']}")
    elif opt.pretrained is not None:
        raise OptionError(file, 'pretrained', f"trainer {opt.trainer['type']} trains no `model`; remove it")
    config = to_dict(opt)

    accelerator = make_accelerator(opt.mixed_precision, fault_options(opt.trainer).collective_timeout)
    folder, changes = prepare_experiment_dir(args.root, opt.name, config, args.force_new, accelerator)
    logger = setup_logging(folder / 'train.log', accelerator.is_main_process)
    logger.info(f'{file} -> {folder} ({accelerator.num_processes} process(es) on {accelerator.device}, '
                f'mixed precision {opt.mixed_precision})')
    for change in changes:
        logger.info(f'resuming with a changed setting: {change}' + (
            ' (the learning-rate schedule follows the new length from the resumed step on)'
            if change.startswith('trainer.total_steps') else ''))

    set_seed(opt.seed)  # the same initial weights on every rank
    parts = {'accelerator': accelerator, 'folder': folder, 'seed': opt.seed, 'config': config}
    if 'model' in needs:
        with building(file, 'model'):
            parts['model'] = opt.build_model()
        if opt.pretrained and latest_checkpoint(folder / 'checkpoints') is None:
            logger.info(f'initial weights: {load_weights(parts["model"], opt.pretrained)}')
    if 'autoencoder' in needs:
        with building(file, 'autoencoder'):
            parts['autoencoder'] = opt.build_autoencoder()
    keys = {'train', *(key for path, key in dataset_references(opt) if path.startswith('trainer.'))}
    parts['datasets'] = {}
    with accelerator.main_process_first():  # the first use of a dataset may write it to disk
        for key in sorted(keys):
            with building(file, f'datasets.{key}'):
                parts['datasets'][key] = opt.build_dataset(key)
    with building(file, 'trainer'):
        trainer = TRAINERS.build(opt.trainer, **{name: parts[name] for name in needs})
    trainer.fit()
    accelerator.end_training()
    return trainer


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
