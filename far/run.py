"""Running an experiment: training it (``train``), evaluating it (``evaluate``) and assembling its trainer
(``build_trainer``). train.py, test.py and the convergence study call these with validated options, and read their
command lines with ``command_line``.
"""
import argparse
import json
import logging
from pathlib import Path
from typing import Optional

import yaml
from accelerate.utils import set_seed

from far import evaluation
from far.experiment import ExperimentOptions, building, dataset_references, require
from far.metrics import environment_info
from far.metrics.scores import BUCKETS
from far.options import OptionError, to_dict
from far.pipelines import build_sampler
from far.plots import write_per_frame_plot
from far.registry import AUTOENCODERS, PROTOCOLS, TRAINERS
from far.trainers.guards import fault_options
from far.trainers.parallel import check_launch, parallel_options
from far.utils.checkpoints import latest_checkpoint, load_weights, resolve_weights
from far.utils.distributed import make_accelerator
from far.utils.experiment_dir import prepare_experiment_dir, record_options
from far.utils.logger import setup_logging

PER_FRAME_PLOT = 'per_frame_metrics.png'

logger = logging.getLogger('far')


def command_line(description: str, *, file: str = 'experiment YAML file',
                 root: str = 'where experiment folders live') -> argparse.ArgumentParser:
    """The arguments every entry point takes: ``-opt`` a YAML file, ``key.path=value`` overrides of it, ``--root``."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('-opt', required=True, help=file)
    parser.add_argument('overrides', nargs='*', help='key.path=value overrides of the YAML file')
    parser.add_argument('--root', default='experiments', help=root)
    return parser


def trainer_parts(options: ExperimentOptions, file: str) -> tuple:
    """The parts the trainer of ``options`` takes (its ``runtime_args``), once the groups they come from are
    checked to be there."""
    require(options, file, 'trainer', 'train.py')
    require(options, file, 'datasets.train', 'train.py')
    needs = TRAINERS.get(options.trainer['type']).runtime_args
    if 'model' in needs:
        require(options, file, 'model', f"trainer {options.trainer['type']}")
    elif options.pretrained is not None:
        raise OptionError(file, 'pretrained', f"trainer {options.trainer['type']} trains no `model`; remove it")
    return needs


def build_trainer(*, options: ExperimentOptions, file: str, accelerator, folder: Path, config: dict):
    """The trainer ``options.trainer`` names, with the parts it takes built: the model (with its ``pretrained``
    weights when ``folder`` holds no checkpoint yet), the autoencoder and the datasets the trainer reads."""
    needs = trainer_parts(options, file)
    parts = {'accelerator': accelerator, 'folder': folder, 'seed': options.seed, 'config': config}
    if 'model' in needs:
        with building(file, 'model'):
            parts['model'] = options.build_model()
        if options.pretrained and latest_checkpoint(Path(folder) / 'checkpoints') is None:
            logger.info(f'initial weights: {load_weights(parts["model"], options.pretrained)}')
    if 'autoencoder' in needs:
        with building(file, 'autoencoder'):
            parts['autoencoder'] = options.build_autoencoder()
    keys = {'train', *(key for path, key in dataset_references(options) if path.startswith('trainer.'))}
    parts['datasets'] = {}
    with accelerator.main_process_first():  # the first use of a dataset may write it to disk
        for key in sorted(keys):
            with building(file, f'datasets.{key}'):
                parts['datasets'][key] = options.build_dataset(key)
    with building(file, 'trainer'):
        return TRAINERS.build(options.trainer, **{name: parts[name] for name in needs})


def train(*, options: ExperimentOptions, file: str, root: str = 'experiments', force_new: bool = False):
    """Train as ``options`` (read from ``file``) say, in ``root/<name>``; ``force_new``: archive what that folder
    holds and start afresh. Returns the trainer (its model and EMA hold the final weights)."""
    trainer_parts(options, file)  # before any work
    config = to_dict(options)
    accelerator = make_accelerator(options.mixed_precision, fault_options(options.trainer).collective_timeout)
    with building(file, 'trainer'):  # before anything is written
        check_launch(parallel_options(options.trainer), accelerator)
    folder, changes = prepare_experiment_dir(root, options.name, config, force_new, accelerator)
    setup_logging(folder / 'train.log', accelerator.is_main_process)
    logger.info(f'{file} -> {folder} ({accelerator.num_processes} process(es) on {accelerator.device}, '
                f'mixed precision {options.mixed_precision})')
    for change in changes:
        logger.info(f'resuming with a changed setting: {change}' + (
            ' (the learning-rate schedule follows the new length from the resumed step on)'
            if change.startswith('trainer.total_steps') else ''))

    set_seed(options.seed)  # the same initial weights on every rank
    trainer = build_trainer(options=options, file=file, accelerator=accelerator, folder=folder, config=config)
    record_options(folder, config, bool(changes), accelerator)  # only now: a failed build leaves the rerun free
    trainer.fit()
    accelerator.end_training()
    return trainer


def weights_source(options: ExperimentOptions, file: str, folder: Path) -> Path:
    """What ``test.checkpoint`` names: a path, or for ``latest`` the newest checkpoint in ``folder``."""
    if options.test.checkpoint != 'latest':
        source = Path(options.test.checkpoint)
        if not source.exists():
            hint = ('download the released checkpoints with `python3 scripts/download.py --what models`'
                    if 'pretrained_models' in source.parts else 'train first')
            raise OptionError(file, 'test.checkpoint', f'{source} does not exist: {hint}, or name an existing '
                              'checkpoint folder, save_pretrained folder or .pth/.safetensors state dict')
        return source
    latest = latest_checkpoint(folder / 'checkpoints')
    if latest is None:
        raise OptionError(file, 'test.checkpoint', f"'latest', but {folder / 'checkpoints'} holds no checkpoint: train "
                          f'first (python train.py -opt {file}) or name a checkpoint folder, a save_pretrained '
                          'folder or a .pth/.safetensors state dict')
    return latest


def result_tag(source: Path, weights: Path) -> str:
    """A results folder name that says which weights were evaluated: checkpoint-2000-ema, FAR_B_bair, ..."""
    if weights.name == 'ema.safetensors':
        return f'{source.name}-ema'
    if weights.name == 'model.safetensors':
        return source.name
    return source.stem if source.is_file() else source.name


def fresh_folder(path: Path) -> Path:
    """``path``, or the first of ``path-2``, ``path-3``, ... that does not exist yet."""
    candidate, n = path, 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f'{path.name}-{n}')
    return candidate


def evaluate(*, options: ExperimentOptions, file: str, root: str = 'experiments') -> Optional[dict]:
    """Evaluate as the ``test`` section of ``options`` (read from ``file``) says, into a fresh
    ``root/<name>/results/<weights>/``; returns the results on the main process, None elsewhere."""
    require(options, file, 'test', 'test.py')
    topt = options.test
    reconstructs = PROTOCOLS.get(topt.protocol['type']).reconstructs
    if not reconstructs:
        require(options, file, 'model', 'test.py')
    accelerator = make_accelerator(options.mixed_precision)
    folder = Path(root) / options.name
    source = weights_source(options, file, folder)
    build = build_reconstruction if reconstructs else build_sampling
    evaluated, weights, dataset = build(options, file, source, accelerator)
    with building(file, 'test.protocol'):
        protocol = PROTOCOLS.build(topt.protocol)
    # created only now, so that bad options or weights leave no folder that shifts the next run's suffix
    out = fresh_folder(folder / 'results' / result_tag(source, weights))
    accelerator.wait_for_everyone()  # every process chose the folder before the main one creates it
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / 'options.yml').write_text(yaml.safe_dump(to_dict(options), sort_keys=False))
    accelerator.wait_for_everyone()
    setup_logging(out / 'test.log', accelerator.is_main_process)
    logger.info(f'{file}: evaluating {weights} on {accelerator.num_processes} process(es) ({accelerator.device})')

    run_protocol = evaluation.evaluate_reconstruction if reconstructs else evaluation.evaluate
    with accelerator.autocast():
        results = run_protocol(evaluated, dataset, protocol, accelerator, batch_size=topt.batch_size,
                               video_dir=out / 'videos', num_grid_videos=topt.num_grid_videos)
    if accelerator.is_main_process:
        what = 'reconstruction' if reconstructs else 'sampling'
        results = {'name': options.name, 'weights': str(weights), 'dataset': to_dict(options.datasets[topt.dataset]),
                   'protocol': protocol.describe(), what: {**evaluated.describe(), 'batch_size': topt.batch_size},
                   'num_processes': accelerator.num_processes, 'mixed_precision': options.mixed_precision,
                   **results, 'environment': environment_info()}
        _write_results(results, out, protocol)
    accelerator.end_training()
    return results


def build_sampling(options: ExperimentOptions, file: str, source: Path, accelerator):
    """The sampler over the weights ``source`` names, the weights' file and the test dataset, each built as
    ``options`` say (test.py, the play page); raises OptionError naming the key at fault."""
    topt = options.test
    set_seed(options.seed)
    with building(file, 'model'):
        model = options.build_model()
    try:
        weights = load_weights(model, source, topt.use_ema)
    except (ValueError, FileNotFoundError) as error:
        raise OptionError(file, 'test.checkpoint', str(error)) from None
    evaluation.cast_for_sampling(model.to(accelerator.device), options.mixed_precision).eval()  # cast once, not per pass
    with building(file, 'autoencoder'):
        autoencoder = options.build_autoencoder().to(accelerator.device).eval()
    with accelerator.main_process_first(), building(file, f'datasets.{topt.dataset}'):
        dataset = options.build_dataset(topt.dataset)  # the first use of a dataset may write it to disk
    with building(file, 'test.sampler'):
        sampler = build_sampler(topt.sampler, model=model, autoencoder=autoencoder)
    sampler.set_progress_bar_config(disable=True)
    return sampler, weights, dataset


def build_reconstruction(options: ExperimentOptions, file: str, source: Path, accelerator):
    """The autoencoder with the weights of ``source`` (see ``test.checkpoint``; a checkpoint's EMA weights), its
    weight file and the test dataset, each built as ``options`` say."""
    topt = options.test
    with building(file, 'test.checkpoint'):  # a damaged or misfit file: one line naming it
        autoencoder = AUTOENCODERS.build({**options.autoencoder, 'checkpoint': str(source)})
    autoencoder = autoencoder.to(accelerator.device).eval()
    with accelerator.main_process_first(), building(file, f'datasets.{topt.dataset}'):
        dataset = options.build_dataset(topt.dataset)
    return autoencoder, resolve_weights(latest_checkpoint(source) or source), dataset


def _write_results(results: dict, out: Path, protocol):
    """results.json, the per-frame plot, and a log line per metric with its spread and the baselines'."""
    (out / 'results.json').write_text(json.dumps(results, indent=2))
    if 'per_frame' in results:
        write_per_frame_plot(results, out / PER_FRAME_PLOT)
    metrics = results['metrics']
    for key in (k for k in metrics if not k.endswith('_std') and k != BUCKETS):  # buckets: results.json
        spread = f' ± {metrics[key + "_std"]:.4f}' if len(protocol.seeds) > 1 else ''
        extra = ''.join(f' ({name.replace("_", " ")}: {results[name][key]:.4f})'
                        for name in results['baselines'] if key in results[name])
        logger.info(f'{key}: {metrics[key]:.4f}{spread}{extra}')
    logger.info(f'wrote {out / "results.json"}' + (f' and {PER_FRAME_PLOT}' if 'per_frame' in results else ''))
