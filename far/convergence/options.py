"""What a convergence study file holds: the contenders (ordinary experiment files plus overrides), the training
budget they share and the evaluation they share. Validated like experiment files: an unknown key, a wrong type
or a missing required key stops the study with one line naming the file and the key path.
"""
from dataclasses import dataclass, field
from typing import Dict, List, Sequence

from far.metrics.protocols import MetricName
from far.options import Block, OptionError, apply_overrides, load_yaml, validate
from far.registry import DATASETS, PROTOCOLS

CONVERGENCE = 'convergence'  # the name of the evaluation at every step (rollouts are named by their label)


@dataclass(frozen=True)
class Run:
    """An experiment file, the ``key.path=value`` overrides it runs with (the command line's syntax), and what it
    reads of the runs prepared before it: ``reads`` maps an option's key path to a prepared run's experiment name,
    and that option is set to the run's final checkpoint in the study (e.g. a tokenizer's, or ``pretrained``
    weights)."""
    experiment: str
    overrides: List[str] = ()
    reads: Dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class Contender(Run):
    """A compared method: its name in the plot and the tables, and its experiment."""
    label: str


@dataclass(frozen=True)
class TrainingBudget:
    """The compute every contender gets: the same steps of the same batch (per process, ``processes`` of them);
    checkpoints every ``evaluate_every`` steps (and the last) are kept and evaluated."""
    total_steps: int
    batch_size: int
    evaluate_every: int
    processes: int = 1

    def __post_init__(self):
        if min(self.total_steps, self.batch_size, self.evaluate_every, self.processes) < 1:
            raise ValueError(f'total_steps, batch_size, evaluate_every and processes must be >= 1, got '
                             f'{self.total_steps}, {self.batch_size}, {self.evaluate_every} and {self.processes}')

    def steps(self) -> List[int]:
        """The evaluated steps: every ``evaluate_every``-th and the last."""
        return sorted({*range(self.evaluate_every, self.total_steps, self.evaluate_every), self.total_steps})


@dataclass(frozen=True)
class Rollout:
    """A length-generalisation evaluation of the final weights: longer clips, the same kind of protocol."""
    label: str
    dataset: Block(DATASETS)
    protocol: Block(PROTOCOLS)


@dataclass(frozen=True)
class StudyEvaluation:
    """What every contender is scored with at every evaluated step (``dataset``, ``protocol``), and at the last
    step only (``rollouts``); ``metrics``: those plotted and tabled; ``batch_size``: videos per sampling batch."""
    dataset: Block(DATASETS)
    protocol: Block(PROTOCOLS)
    metrics: List[MetricName] = ('psnr', 'ssim')
    batch_size: int = 16
    rollouts: List[Rollout] = ()

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError(f'batch_size must be >= 1, got {self.batch_size}')
        labels = [rollout.label for rollout in self.rollouts]
        if len(set(labels)) != len(labels) or CONVERGENCE in labels:
            raise ValueError(f"rollout labels must be unique and other than '{CONVERGENCE}', got {labels}")


@dataclass(frozen=True)
class StudyOptions:
    name: str                       # experiments/<name>/: the contenders' experiment folders, points.json, report
    contenders: List[Contender]
    training: TrainingBudget
    evaluation: StudyEvaluation
    prepare: List[Run] = ()         # trained first and not compared, e.g. the tokenizer a contender reads


def load_study(path: str, overrides: Sequence[str] = ()) -> StudyOptions:
    """Read and validate a study file (``key.path=value`` overrides applied); raise OptionError on any problem."""
    study = validate(apply_overrides(load_yaml(path), overrides, file=path), StudyOptions, path)
    labels = [contender.label for contender in study.contenders]
    if not labels or len(set(labels)) != len(labels):
        raise OptionError(path, 'contenders', f'must list at least one contender, with unique labels; got {labels}')
    return study
