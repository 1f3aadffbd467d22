"""Train every contender of a convergence study at equal compute, score them the same way at regular checkpoints
and beyond their training length, and report (points.json, report.md, convergence.png in experiments/<name>/).

    python3 -m scripts.convergence -opt options/convergence/moving_shapes_cpu.yml [key.path=value ...]

Each contender is an ordinary experiment file (train.py and test.py run it alone as well), trained into
experiments/<study name>/<experiment name>/ with train.py in `training.processes` processes and scored with
far.run.evaluate, test.py's evaluation. Started again, the study resumes: an interrupted training continues from
its newest checkpoint, and every point already scored with the same options is kept.
"""
from pathlib import Path

import far  # noqa: F401  (fills the registries)
from far.convergence import Study, StudyError, load_study
from far.options import OptionError
from far.run import command_line
from far.utils.distributed import LaunchError
from far.utils.experiment_dir import ExperimentExists

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv=None):
    parser = command_line(__doc__, file='study YAML file', root='where studies (and their experiment folders) live')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        study = load_study(args.opt, args.overrides)
        Study(study=study, file=args.opt, root=args.root, train_script=REPO / 'train.py').run()
    except (OptionError, StudyError, LaunchError, ExperimentExists) as error:
        raise SystemExit(f'error: {error}')


if __name__ == '__main__':
    main()
