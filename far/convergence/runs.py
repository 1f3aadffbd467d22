"""How a study runs its experiments: the overrides that give every contender the study's budget and evaluation
and point it at the prepared runs it reads, the resolved options (checked before any work), and the training command.

A contender is trained by train.py with its own file and overrides plus the budget's (steps, batch, a checkpoint at
every evaluated step, none pruned, no validation), into ``<root>/<study name>/<experiment name>/``; each evaluation
is ``far.run.evaluate`` on one checkpoint with the study's dataset (added as ``datasets.convergence_eval``),
protocol and batch.
"""
import dataclasses
import hashlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import yaml

from far.convergence.options import CONVERGENCE, Contender, Run, StudyOptions, TrainingBudget
from far.experiment import ExperimentOptions, load_experiment
from far.options import OptionError, ValidBlock, to_dict, validate_block
from far.registry import METRICS

EVALUATION_DATASET = 'convergence_eval'  # the datasets key the study's evaluation clips are added under


def flow(value) -> str:
    """``value`` as one line of YAML, as a command-line override takes it."""
    return yaml.safe_dump(to_dict(value), default_flow_style=True, width=2 ** 16).strip()


def fingerprint(value) -> str:
    """A short digest of options: equal options, equal digest."""
    return hashlib.sha256(json.dumps(to_dict(value), sort_keys=True).encode()).hexdigest()[:16]


def budget_overrides(budget: TrainingBudget) -> List[str]:
    # validation samples during training: the study evaluates instead, the same way for every contender
    return [f'trainer.total_steps={budget.total_steps}', f'trainer.batch_size={budget.batch_size}',
            f'trainer.checkpoint.every={budget.evaluate_every}', 'trainer.checkpoint.keep=null',
            'trainer.validation=null']


def evaluation_overrides(dataset: dict, protocol: dict, batch_size: int) -> List[str]:
    return [f'datasets.{EVALUATION_DATASET}={flow(dataset)}', f'test.dataset={EVALUATION_DATASET}',
            f'test.protocol={flow(protocol)}', f'test.batch_size={batch_size}']


def without_short_fvd(protocol: ValidBlock) -> Tuple[dict, Optional[str]]:
    """``protocol`` without FVD when its videos are shorter than I3D takes (FVD's ``min_frames``), and a note saying
    so; ``protocol`` itself (and no note) otherwise."""
    settings = protocol.settings
    frames = (settings.get('context_length') or 0) + settings['unroll_length']
    metrics, shortest = settings['metrics'], validate_block({'type': 'fvd'}, METRICS, 'fvd').settings['min_frames']
    if 'fvd' not in metrics or frames >= shortest:
        return protocol, None
    kept = [metric for metric in metrics if metric != 'fvd']
    return {**protocol, 'metrics': kept}, f'FVD skipped: {frames}-frame videos, I3D takes at least {shortest}'


@dataclass(frozen=True)
class Evaluation:
    """One way every contender is scored: its name, its dataset, protocol and batch, the steps scored and a note
    (FVD left out)."""
    name: str
    dataset: dict
    protocol: dict
    batch_size: int
    steps: Sequence[int]
    note: Optional[str] = None


@dataclass(frozen=True)
class PreparedRun:
    """An experiment of the study with its overrides resolved: ``options`` as train.py reads them, and for a
    contender the options of each evaluation (by its name) as ``far.run.evaluate`` takes them."""
    label: str
    file: str
    overrides: List[str]
    options: ExperimentOptions
    where: str                      # its key in the study file, for errors
    requires: Tuple[str, ...] = ()  # the training keys of the prepared runs it reads
    evaluated: Dict[str, ExperimentOptions] = field(default_factory=dict)

    @property
    def training_key(self) -> str:
        """What the trained weights depend on: every option but the ``test`` section, and the runs it reads."""
        options = {k: v for k, v in to_dict(self.options).items() if k != 'test'}
        return fingerprint([options, *self.requires] if self.requires else options)

    def folder(self, root: Path) -> Path:
        return root / self.options.name

    def checkpoint(self, root: Path, step: int) -> Path:
        return self.folder(root) / 'checkpoints' / f'checkpoint-{step}'

    def final_checkpoint(self, root: Path) -> Path:
        return self.checkpoint(root, self.options.trainer['total_steps'])

    def train_command(self, root: Path, processes: int, script: Path, fresh: bool = False) -> List[str]:
        """train.py on this run; ``fresh``: archive what its folder holds and start anew (``--force-new``)."""
        launcher = [sys.executable]
        if processes > 1:  # --multi_gpu also on CPUs: accelerate otherwise starts a single process
            launcher += ['-m', 'accelerate.commands.launch', '--multi_gpu', '--num_processes', str(processes)]
        return [*launcher, str(script), '-opt', self.file, '--root', str(root), *self.overrides,
                *(['--force-new'] if fresh else [])]

    def test_command(self, evaluation: Evaluation, root: Path, step: int) -> List[str]:
        """The test.py command that scores the checkpoint of ``step`` with ``evaluation`` alone."""
        scored = evaluation_overrides(evaluation.dataset, evaluation.protocol, evaluation.batch_size)
        return ['test.py', '-opt', self.file, '--root', str(root), *self.overrides, *scored,
                f'test.checkpoint={self.checkpoint(root, step)}']

    def evaluation_options(self, evaluation: Evaluation, root: Path, step: int) -> ExperimentOptions:
        """The options that score the checkpoint of ``step`` with ``evaluation``."""
        options = self.evaluated[evaluation.name]
        test = dataclasses.replace(options.test, checkpoint=str(self.checkpoint(root, step)))
        return dataclasses.replace(options, test=test)

    def evaluation_key(self, evaluation: Evaluation) -> str:
        """What a score depends on: the weights, the sampler, and the evaluation."""
        test = to_dict(self.options.test)
        return fingerprint([self.training_key, test['sampler'], test['use_ema'], evaluation.dataset,
                            evaluation.protocol])


def evaluations(study: StudyOptions) -> List[Evaluation]:
    """The evaluation at every evaluated step, then the rollouts at the last."""
    opt, budget = study.evaluation, study.training
    named = [(CONVERGENCE, opt.dataset, opt.protocol, budget.steps()),
             *((r.label, r.dataset, r.protocol, [budget.total_steps]) for r in opt.rollouts)]
    scored = []
    for name, dataset, protocol, steps in named:
        protocol, note = without_short_fvd(protocol)
        scored.append(Evaluation(name, dataset, protocol, opt.batch_size, steps, note))
    return scored


def prepare(run: Run, label: str, extra: Sequence[str], file: str, where: str,
            prepared: Dict[str, PreparedRun], root: Path) -> PreparedRun:
    """``run`` resolved with ``extra`` overrides, each option of its ``reads`` set to the final checkpoint in
    ``root`` of the ``prepared`` run (by experiment name) it names; an OptionError names the study ``file`` and
    ``where`` too."""
    for key, name in run.reads.items():
        if name not in prepared:
            raise OptionError(file, f'{where}.reads.{key}', f"names '{name}', which is not an experiment prepared "
                                                            f"before it (prepared: {', '.join(prepared) or 'none'})")
    reads = [f'{key}={prepared[name].final_checkpoint(root)}' for key, name in run.reads.items()]
    overrides = [*run.overrides, *reads, *extra]
    try:
        options = load_experiment(run.experiment, overrides)
    except OptionError as error:
        raise OptionError(file, where, str(error)) from None
    requires = tuple(prepared[name].training_key for name in run.reads.values())
    return PreparedRun(label, run.experiment, overrides, options, where, requires)


def prepare_study(study: StudyOptions, file: str, root: Path) -> Dict[str, List[PreparedRun]]:
    """Every run of the study in ``root`` resolved and checked before any work: ``{'prepare': [...],
    'contenders': [...]}``.

    A contender must be able to train (``trainer``) and be tested (``test.sampler``) with every evaluation of the
    study; contenders sharing an experiment folder must share its training options (they differ in sampling).
    """
    first: List[PreparedRun] = []
    for i, run in enumerate(study.prepare):
        first.append(prepare(run, f'prepare[{i}]', (), file, f'prepare[{i}]', _by_name(first), root))
    prepared = {'prepare': first,
                'contenders': [_prepare_contender(contender, study, file, f'contenders[{i}]', _by_name(first), root)
                               for i, contender in enumerate(study.contenders)]}
    by_folder: Dict[str, PreparedRun] = {}
    for run in [*prepared['prepare'], *prepared['contenders']]:
        other = by_folder.setdefault(run.options.name, run)
        if other.training_key != run.training_key:
            raise OptionError(file, run.where, f"trains experiment '{run.options.name}' as {other.where} does, with "
                                               f"other training options; give one of them another name=...")
    return prepared


def _by_name(runs: Sequence[PreparedRun]) -> Dict[str, PreparedRun]:
    return {run.options.name: run for run in runs}


def _prepare_contender(contender: Contender, study: StudyOptions, file: str, where: str,
                       prepared: Dict[str, PreparedRun], root: Path) -> PreparedRun:
    budget = budget_overrides(study.training)
    run = prepare(contender, contender.label, budget, file, where, prepared, root)
    for missing in ('trainer', 'test'):
        if getattr(run.options, missing) is None:
            raise OptionError(file, where, f'{contender.experiment} has no `{missing}` section; a contender is '
                                           f'trained by its trainer and sampled by its test.sampler')
    evaluated = {}
    for evaluation in evaluations(study):
        scored = evaluation_overrides(evaluation.dataset, evaluation.protocol, evaluation.batch_size)
        evaluated[evaluation.name] = prepare(contender, contender.label, [*budget, *scored], file,
                                             f'{where} with evaluation {evaluation.name}', prepared, root).options
    return dataclasses.replace(run, evaluated=evaluated)
