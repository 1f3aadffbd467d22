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
`per_frame`) and the per-frame plot per_frame_metrics.png. With a reconstruction protocol
(`test.protocol.type: reconstruction`, no `test.sampler`) it scores the autoencoder's reconstructions instead, its
weights from `test.checkpoint` (e.g. options/test/nbp_tokenizer/).
"""
import far  # noqa: F401  (fills the registries)
from far import run
from far.experiment import load_experiment
from far.options import OptionError
from far.utils.distributed import LaunchError


def parse_args(argv=None):
    return run.command_line(__doc__).parse_args(argv)


def test(args):
    """Evaluate as the YAML file says; returns the results (on the main process, None elsewhere)."""
    return run.evaluate(options=load_experiment(args.opt, args.overrides), file=args.opt, root=args.root)


if __name__ == '__main__':
    args = parse_args()
    try:
        test(args)
    except (OptionError, LaunchError) as error:
        raise SystemExit(f'error: {error}')
