"""Evaluate a video model with the `test:` section of an experiment YAML file.

    python test.py -opt options/demo/far_moving_shapes.yml [key.path=value ...]
    accelerate launch --multi_gpu --num_processes 2 test.py -opt ...   # samples split over processes

Loads `test.checkpoint` (the experiment's newest checkpoint by default, EMA weights unless
`test.use_ema: false`; or a checkpoint folder, a save_pretrained folder, or a raw state dict such as a
released FAR model), samples the protocol's videos with `test.sampler` and writes to
experiments/<name>/results/<weights>/ (or to <weights>-2, -3, ... when earlier results are there: an
evaluation never overwrites another) the videos with a labelled grid of the first `test.num_grid_videos`
(videos/seed_<seed>/grid.png, grid.gif), results.json (metrics, for prediction the copy-last-frame baseline,
and the baselines the protocol makes with the same sampler, such as a sliding window; per-frame values under
`per_frame`) and the per-frame plot per_frame_metrics.png.
"""
import argparse
import json
from pathlib import Path

import yaml
from accelerate.utils import set_seed

import far  # noqa: F401  (fills the registries)
from far.evaluation import evaluate
from far.experiment import building, load_experiment, require
from far.metrics import environment_info
from far.options import OptionError, to_dict
from far.pipelines import build_sampler
from far.plots import write_per_frame_plot
from far.registry import PROTOCOLS
from far.utils.checkpoints import latest_checkpoint, load_weights, resolve_weights
from far.utils.distributed import LaunchError, make_accelerator
from far.utils.logger import setup_logging

PER_FRAME_PLOT = 'per_frame_metrics.png'


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('-opt', required=True, help='experiment YAML file')
    parser.add_argument('overrides', nargs='*', help='key.path=value overrides of the YAML file')
    parser.add_argument('--root', default='experiments', help='where experiment folders live')
    return parser.parse_args(argv)


def weights_source(opt, file: str, folder: Path) -> Path:
    if opt.test.checkpoint != 'latest':
        source = Path(opt.test.checkpoint)
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


def test(args):
    """Evaluate as the YAML file says; returns the results (on the main process, None elsewhere)."""
    opt = load_experiment(args.opt, args.overrides)
    require(opt, args.opt, 'test', 'test.py')
    require(opt, args.opt, 'model', 'test.py')
    topt = opt.test
    accelerator = make_accelerator(opt.mixed_precision)
    folder = Path(args.root) / opt.name
    source = weights_source(opt, args.opt, folder)
    out = fresh_folder(folder / 'results' / result_tag(source, resolve_weights(source, topt.use_ema)))
    accelerator.wait_for_everyone()  # every process chose the folder before the main one creates it
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / 'options.yml').write_text(yaml.safe_dump(to_dict(opt), sort_keys=False))
    accelerator.wait_for_everyone()
    logger = setup_logging(out / 'test.log', accelerator.is_main_process)

    set_seed(opt.seed)
    with building(args.opt, 'model'):
        model = opt.build_model()
    try:
        weights = load_weights(model, source, topt.use_ema)
    except (ValueError, FileNotFoundError) as error:
        raise OptionError(args.opt, 'test.checkpoint', str(error)) from None
    logger.info(f'{args.opt}: evaluating {weights} on {accelerator.num_processes} process(es) ({accelerator.device})')
    model.to(accelerator.device).eval()
    with building(args.opt, 'autoencoder'):
        autoencoder = opt.build_autoencoder().to(accelerator.device).eval()
    with accelerator.main_process_first(), building(args.opt, f'datasets.{topt.dataset}'):
        dataset = opt.build_dataset(topt.dataset)  # the first use of a dataset may write it to disk
    with building(args.opt, 'test.protocol'):
        protocol = PROTOCOLS.build(topt.protocol)
    with building(args.opt, 'test.sampler'):
        sampler = build_sampler(topt.sampler, model=model, autoencoder=autoencoder)
    sampler.set_progress_bar_config(disable=True)

    with accelerator.autocast():
        results = evaluate(sampler, dataset, protocol, accelerator, batch_size=topt.batch_size,
                           video_dir=out / 'videos', num_grid_videos=topt.num_grid_videos)
    if accelerator.is_main_process:
        results = {'name': opt.name, 'weights': str(weights), 'dataset': to_dict(opt.datasets[topt.dataset]),
                   'protocol': protocol.describe(), 'sampling': {**sampler.describe(), 'batch_size': topt.batch_size},
                   'num_processes': accelerator.num_processes, 'mixed_precision': opt.mixed_precision, **results,
                   'environment': environment_info()}
        (out / 'results.json').write_text(json.dumps(results, indent=2))
        if 'per_frame' in results:
            write_per_frame_plot(results, out / PER_FRAME_PLOT)
        metrics = results['metrics']
        for key in (k for k in metrics if not k.endswith('_std') and k != 'buckets'):  # buckets: results.json
            spread = f' ± {metrics[key + "_std"]:.4f}' if len(protocol.seeds) > 1 else ''
            extra = ''.join(f' ({name.replace("_", " ")}: {results[name][key]:.4f})'
                            for name in results['baselines'] if key in results[name])
            logger.info(f'{key}: {metrics[key]:.4f}{spread}{extra}')
        logger.info(f'wrote {out / "results.json"}' + (f' and {PER_FRAME_PLOT}' if 'per_frame' in results else ''))
    accelerator.end_training()
    return results


if __name__ == '__main__':
    args = parse_args()
    try:
        test(args)
    except (OptionError, LaunchError) as error:
        raise SystemExit(f'error: {error}')
