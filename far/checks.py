"""Settings of different blocks of an experiment that must agree, checked when its file loads.

The rules here read what the classes an experiment uses declare:

- a model: ``family`` and ``condition_kinds``; an autoencoder: ``family`` and ``temporal_compression`` (frames
  per latent frame, 1 when it declares none);
- a trainer or a sampler: ``model_families`` and ``autoencoder_families``, the families it accepts;
- a dataset: ``conditions`` (what its items carry, e.g. ``{'label': 9}``), ``clip_length_option`` and
  ``resolution_option`` (where in its block the frames of a clip and their size are set).

A rule that concerns one class lives with it, as ``check_experiment(experiment, path)`` (e.g. MazeMemory's
revisit window, the NBP tokenizer's codebook): every class the experiment uses that declares one is called with
an :class:`Experiment` and the key path of its block (``'model'``, ``'datasets.train'``, ``'test.protocol'``, ...).
"""
import dataclasses
from dataclasses import dataclass
from typing import Any, Iterator, List, NoReturn, Optional, Tuple

from far.conditions import KINDS, Condition
from far.evaluation import SamplingOptions
from far.options import OptionError
from far.registry import AUTOENCODERS, DATASETS, MODELS, PIPELINES, PROTOCOLS, TRAINERS


def option(node: Any, path: str) -> Any:
    """The value at ``path`` ('a.b') in nested mappings and option groups; ``None`` when absent."""
    for part in path.split('.'):
        node = node.get(part) if isinstance(node, dict) else getattr(node, part, None)
        node = getattr(node, 'settings', node)  # a validated block: every setting, defaults included
    return node


@dataclass(frozen=True)
class Sampling:
    """One place where the model is sampled: its key path, sampler block, dataset key and frame counts."""
    path: str  # 'trainer.validation' or 'test'
    sampler: dict
    dataset: str
    context_length: int
    unroll_length: int

    @property
    def counts(self) -> str:
        """The key path of its frame counts."""
        return 'test.protocol' if self.path == 'test' else self.path

    @property
    def frames(self) -> int:
        return self.context_length + self.unroll_length


class Experiment:
    """An experiment's validated options as the rules read them; ``fail`` stops the load naming the file."""

    def __init__(self, options, file: str):
        self.options, self.file = options, file
        self.samplings: List[Sampling] = list(_samplings(options))

    def fail(self, path: str, problem: str) -> NoReturn:
        raise OptionError(self.file, path, problem)

    def settings(self, path: str) -> Optional[dict]:
        """Every setting of the block at ``path`` ('model', 'datasets.train', 'test.protocol', ...), defaults
        included; ``None`` when the experiment has no such block."""
        return option(self.options, path)

    def trained_datasets(self) -> List[str]:
        """The dataset keys the trainer reads clips of (not those it samples for validation)."""
        trainer = self.options.trainer
        if trainer is None:
            return []
        groups = [value.dataset for value in trainer.values() if dataclasses.is_dataclass(value)
                  and not isinstance(value, SamplingOptions) and isinstance(getattr(value, 'dataset', None), str)]
        return list(dict.fromkeys(['train', *groups]))

    def used_datasets(self) -> List[str]:
        keys = [*self.trained_datasets(), *(s.dataset for s in self.samplings)]
        return [key for key in dict.fromkeys(keys) if key in self.options.datasets]

    def dataset_option(self, key: str, name: str) -> Tuple[str, Any]:
        """``(key path, value)`` of what dataset ``key`` declares as its ``{name}_option`` ('clip_length',
        'resolution'); the value is ``None`` when it declares none."""
        where = getattr(DATASETS.get(self.options.datasets[key]['type']), f'{name}_option', None)
        path = f'datasets.{key}.{where}'
        return path, None if where is None else option(self.settings(f'datasets.{key}'), where)


def _samplings(opt) -> Iterator[Sampling]:
    validation = (opt.trainer or {}).get('validation')
    if isinstance(validation, SamplingOptions):
        yield Sampling('trainer.validation', validation.sampler, validation.dataset, validation.context_length,
                       validation.unroll_length)
    if opt.test is not None and opt.test.sampler is not None:
        protocol = opt.test.protocol.settings
        yield Sampling('test', opt.test.sampler, opt.test.dataset, protocol.get('context_length') or 0,
                       protocol['unroll_length'])


def check_experiment(opt, file: str):
    """Raise OptionError (naming both keys) when settings of different blocks contradict each other."""
    experiment = Experiment(opt, file)
    condition = _model_condition(experiment)
    _check_families(experiment)
    _check_test_sampler(experiment)
    for key in experiment.used_datasets():
        _check_dataset_conditions(experiment, key, condition)
    for path, cls in _classes(experiment):
        hook = getattr(cls, 'check_experiment', None)
        if hook is not None:
            hook(experiment, path)
    for sampling in experiment.samplings:
        _check_sampling(experiment, sampling, condition)
    _check_encoded_clips(experiment)


def _classes(experiment: Experiment) -> Iterator[Tuple[str, Any]]:
    """``(key path, class)`` of every class the experiment uses."""
    opt = experiment.options
    if opt.model is not None:
        yield 'model', MODELS.entry_class(opt.model['type'])
    yield 'autoencoder', AUTOENCODERS.entry_class(opt.autoencoder['type'])
    for key in experiment.used_datasets():
        yield f'datasets.{key}', DATASETS.get(opt.datasets[key]['type'])
    if opt.trainer is not None:
        yield 'trainer', TRAINERS.get(opt.trainer['type'])
    for sampling in experiment.samplings:
        yield f'{sampling.path}.sampler', PIPELINES.get(sampling.sampler['type'])
    if opt.test is not None:
        yield 'test.protocol', PROTOCOLS.get(opt.test.protocol['type'])


def _model_condition(experiment: Experiment) -> Optional[Condition]:
    model = experiment.options.model
    if model is None:
        return None
    kinds = getattr(MODELS.entry_class(model['type']), 'condition_kinds', KINDS)
    try:
        return Condition.parse(model.settings.get('condition_cfg'), kinds)
    except (ValueError, OSError) as error:
        experiment.fail('model.condition_cfg', str(error))


# ----------------------------------------------------------------------------------------------------------
# Which trainer and sampler fit which model and autoencoder
# ----------------------------------------------------------------------------------------------------------

def _families(families) -> str:
    return ' or '.join(families) if families else 'no'


def _check_families(experiment: Experiment):
    """Each trainer and sampler takes the model and autoencoder families it declares (``model_families``,
    ``autoencoder_families``)."""
    opt = experiment.options
    trainer = TRAINERS.get(opt.trainer['type']) if opt.trainer is not None else None
    for key, registry, block in (('model', MODELS, opt.model), ('autoencoder', AUTOENCODERS, opt.autoencoder)):
        if block is None:
            continue
        family = getattr(registry.entry_class(block['type']), 'family', None)
        accepted = getattr(trainer, f'{key}_families', None)
        if accepted is not None and family not in accepted:
            experiment.fail(f'{key}.type', f"is {block['type']} (family {family}), but trainer.type "
                                           f"{opt.trainer['type']} trains {_families(accepted)} {key}s; change the "
                                           f"{key} block or the trainer")
        for sampling in experiment.samplings:
            problem = _sampler_misfit(sampling.sampler['type'], key, block['type'], family)
            if problem:
                experiment.fail(f'{sampling.path}.sampler.type', problem)


def _sampler_misfit(name: str, key: str, block_type: str, family: Optional[str]) -> Optional[str]:
    """Why sampler ``name`` cannot sample the ``key`` ('model', 'autoencoder') of ``family``; None if it can."""
    accepted = getattr(PIPELINES.get(name), f'{key}_families', None)
    if accepted is None or family in accepted:
        return None
    fitting = [n for n in PIPELINES.keys() if family in getattr(PIPELINES.get(n), f'{key}_families', ())]
    return (f"{name} samples {_families(accepted)} {key}s, but {key}.type is {block_type}; choose the sampler of "
            f"that {key} family: {', '.join(fitting) or 'none is registered'}")


def explain_sampler_error(opt: dict, error: OptionError):
    """Raise, instead of ``error`` (a key of a sampler block refused while validating ``opt``, the options as
    written), that the sampler is of another family when it is: with only ``test.sampler.type`` overridden, the
    old sampler's settings that the new one does not take are not the problem."""
    for path in ('trainer.validation.sampler', 'test.sampler'):
        sampler = option(opt, path)
        if not (error.path.startswith(f'{path}.') and isinstance(sampler, dict) and sampler.get('type') in PIPELINES):
            continue
        for key, registry in (('model', MODELS), ('autoencoder', AUTOENCODERS)):
            block = opt.get(key)
            if isinstance(block, dict) and block.get('type') in registry:
                family = getattr(registry.entry_class(block['type']), 'family', None)
                problem = _sampler_misfit(sampler['type'], key, block['type'], family)
                if problem:
                    raise OptionError(error.file, f'{path}.type', problem) from None


def _check_dataset_conditions(experiment: Experiment, key: str, condition: Optional[Condition]):
    block = experiment.options.datasets[key]
    provided = getattr(DATASETS.get(block['type']), 'conditions', None)  # e.g. {'label': 9}
    if condition is None or provided is None:
        return
    name = f"datasets.{key} ({block['type']})"
    field = condition.field
    if field not in provided:
        experiment.fail('model.condition_cfg', f"is {condition.to_config()}, but the items of {name} carry no "
                                               f"'{field}' (they carry {sorted(provided) or 'no condition'}); "
                                               f"use condition_cfg: null or a dataset that provides it")
    if condition.field_classes != provided[field]:
        experiment.fail('model.condition_cfg', f'has {condition.field_classes} {field} classes, but {name} has '
                                               f'{provided[field]}; set the model to {provided[field]}')


def _check_test_sampler(experiment: Experiment):
    """A protocol that samples the model needs ``test.sampler`` (a reconstruction protocol refuses one)."""
    test = experiment.options.test
    if test is not None and test.sampler is None and not PROTOCOLS.get(test.protocol['type']).reconstructs:
        experiment.fail('test.sampler', f"missing: test.protocol.type {test.protocol['type']} samples the model; name "
                                        'its sampler, e.g. {type: FARPipeline} or {type: NBPPipeline}')


# ----------------------------------------------------------------------------------------------------------
# Sampling: guidance, noise schedule, clip lengths
# ----------------------------------------------------------------------------------------------------------

def _check_sampling(experiment: Experiment, sampling: Sampling, condition: Optional[Condition]):
    where = f'{sampling.path}.sampler'
    settings = sampling.sampler.settings
    guidance = settings.get('guidance_scale')
    if condition is None and guidance not in (None, 1, 1.0):
        experiment.fail(f'{where}.guidance_scale', f'is {guidance}, but model.condition_cfg is null (an unconditional '
                                                   f'model): guidance needs a conditional model; set it to 1')
    schedule = settings.get('scheduler')
    trained = option(experiment.options, 'trainer.objective.scheduler.num_train_timesteps')
    if schedule is not None and trained is not None and schedule.num_train_timesteps != trained:
        experiment.fail(f'{where}.scheduler.num_train_timesteps',
                        f'is {schedule.num_train_timesteps}, but trainer.objective.scheduler.num_train_timesteps is '
                        f'{trained}: the model reads timesteps on the scale it was trained on; use the same number')
    if sampling.dataset not in experiment.options.datasets:
        return
    path, length = experiment.dataset_option(sampling.dataset, 'clip_length')
    if isinstance(length, int) and length < sampling.frames:
        experiment.fail(path, f'is {length}, but {sampling.counts} needs clips of {sampling.frames} frames '
                              f'({sampling.context_length} context + {sampling.unroll_length} predicted); lengthen '
                              f'the clips or shorten the prediction')


def _check_encoded_clips(experiment: Experiment):
    """An autoencoder that compresses time by r (``temporal_compression``, e.g. the NBP tokenizer: 4) encodes
    clips of 1 + r m frames: the training clips, the clips it reconstructs in validation, and the context and
    whole videos of every sampling."""
    name = experiment.options.autoencoder['type']
    rate = getattr(AUTOENCODERS.entry_class(name), 'temporal_compression', 1)
    if rate == 1:
        return
    fix = f'1 + {rate} m frames (1, {1 + rate}, {1 + 2 * rate}, {1 + 3 * rate}, {1 + 4 * rate}, ...)'

    def check(path: str, frames: int, what: str):
        if frames < 1 or (frames - 1) % rate:
            experiment.fail(path, f'{what} {frames} frames, but autoencoder {name} compresses time by {rate} and '
                                  f'encodes {fix}; change the frame count')

    for key in experiment.trained_datasets():
        if key in experiment.options.datasets:
            path, length = experiment.dataset_option(key, 'clip_length')
            if isinstance(length, int):
                check(path, length, 'is')
    for sampling in experiment.samplings:
        if sampling.context_length:
            check(f'{sampling.counts}.context_length', sampling.context_length, 'gives a context of')
        check(f'{sampling.counts}.unroll_length', sampling.frames, 'makes (with context_length) videos of')
