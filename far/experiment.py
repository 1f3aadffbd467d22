"""What an experiment YAML file holds (train.py and test.py read the same file), and building its parts.

Every group is validated before any work (see ``far.options``): an unknown key, a wrong type or a
missing required key stops the run with one message naming the file, the key path and what is allowed.
Then the settings that must agree across blocks are checked (``check_consistency``): condition classes
against the datasets, clip lengths against the frames sampled, windows, guidance, noise schedules, which
sampler and trainer fit which model and autoencoder, frame counts against an autoencoder's temporal
compression, and a token model's vocabulary and frame size against its tokenizer.
"""
import contextlib
import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Dict, Iterator, Literal, Optional, Sequence, Tuple

from far.conditions import KINDS, Condition
from far.evaluation import SamplingOptions
from far.options import Block, OptionError, apply_overrides, load_yaml, validate, yaml_parameters
from far.registry import AUTOENCODERS, DATASETS, MODELS, PIPELINES, PROTOCOLS, TRAINERS, Registry


@dataclass(frozen=True, kw_only=True)
class EvaluationOptions(SamplingOptions):
    """What test.py evaluates and how it samples (``sampler``, ``dataset``, ``batch_size``: see SamplingOptions).

    ``checkpoint``: ``latest`` (the experiment's newest checkpoint), a checkpoint folder, a
    ``save_pretrained`` folder, or a raw state dict (.pth/.safetensors) such as a released FAR model.
    """
    protocol: Block(PROTOCOLS)
    checkpoint: str = 'latest'
    use_ema: bool = True


@dataclass(frozen=True)
class ExperimentOptions:
    name: str                                     # the experiment folder: experiments/<name>/
    autoencoder: Block(AUTOENCODERS)
    datasets: Dict[str, Block(DATASETS)]          # by key: train, val, ...
    model: Optional[Block(MODELS)] = None         # the video model (absent when training an autoencoder)
    trainer: Optional[Block(TRAINERS)] = None     # train.py
    test: Optional[EvaluationOptions] = None      # test.py
    seed: int = 0
    mixed_precision: Literal['no', 'fp16', 'bf16'] = 'no'
    pretrained: Optional[str] = None              # initial weights for training (strict load)

    def build_model(self):
        return MODELS.build(self.model)

    def build_autoencoder(self):
        return AUTOENCODERS.build(self.autoencoder)

    def build_dataset(self, key: str):
        return DATASETS.build(self.datasets[key])


@contextlib.contextmanager
def building(file: str, key: str):
    """A constructor's own check of its YAML arguments (or a file it names that cannot be read) becomes an
    OptionError naming the file and the block."""
    try:
        yield
    except (TypeError, ValueError, OSError) as error:
        raise OptionError(file, key, str(error)) from error


def dataset_references(opt: ExperimentOptions) -> Iterator[Tuple[str, str]]:
    """(key path, dataset key) of every option that names one of ``datasets``."""
    if opt.test is not None:
        yield 'test.dataset', opt.test.dataset
    for key, value in (opt.trainer or {}).items():
        if dataclasses.is_dataclass(value) and isinstance(getattr(value, 'dataset', None), str):
            yield f'trainer.{key}.dataset', value.dataset


def load_experiment(path: str, overrides: Sequence[str] = ()) -> ExperimentOptions:
    """Read ``path``, apply ``key.path=value`` overrides, validate; raise OptionError on any problem."""
    opt = validate(apply_overrides(load_yaml(path), overrides, file=path), ExperimentOptions, path)
    for key_path, key in dataset_references(opt):
        if key not in opt.datasets:
            raise OptionError(path, key_path, f"names dataset '{key}', which is not a key of `datasets` "
                                              f"(keys: {', '.join(opt.datasets) or 'none'})")
    check_consistency(opt, path)
    return opt


def require(opt: ExperimentOptions, path: str, key: str, purpose: str):
    """Stop when an optional group that ``purpose`` needs is missing (``key`` 'trainer', 'test', 'datasets.train')."""
    node = opt
    for part in key.split('.'):
        node = node.get(part) if isinstance(node, dict) else getattr(node, part, None)
    if node is None:
        raise OptionError(path, key, f'missing: {purpose} needs it')


# ----------------------------------------------------------------------------------------------------------
# Settings that must agree across blocks
# ----------------------------------------------------------------------------------------------------------

def setting(registry: Registry, block: Optional[dict], key: str) -> Any:
    """The value ``key`` takes in a validated block: as written, else fixed by a size variant, else the
    constructor's (or options dataclass's) default; ``None`` when the entry has no such setting."""
    if block is None:
        return None
    if key in block:
        return block[key]
    target = registry.get(block['type'])
    if key in getattr(target, 'fixed_kwargs', {}):
        return target.fixed_kwargs[key]
    options_class = getattr(target, 'options_class', None)
    if options_class is not None:
        field = {f.name: f for f in dataclasses.fields(options_class)}.get(key)
        return None if field is None or field.default is dataclasses.MISSING else field.default
    parameter = yaml_parameters(target).get(key)
    return None if parameter is None or parameter.default is parameter.empty else parameter.default


def _entry_class(registry: Registry, name: str):
    target = registry.get(name)
    return getattr(target, 'target', target)  # a size variant stands for its class


@dataclass(frozen=True)
class _Sampling:
    """One place where the model is sampled: its key path, sampler block, dataset key and frame counts."""
    path: str
    sampler: dict
    dataset: str
    context_length: int
    unroll_length: int


def _samplings(opt: ExperimentOptions) -> Iterator[_Sampling]:
    validation = (opt.trainer or {}).get('validation')
    if isinstance(validation, SamplingOptions):
        yield _Sampling('trainer.validation', validation.sampler, validation.dataset, validation.context_length,
                        validation.unroll_length)
    if opt.test is not None:
        protocol = opt.test.protocol
        yield _Sampling('test', opt.test.sampler, opt.test.dataset, setting(PROTOCOLS, protocol, 'context_length') or 0,
                        setting(PROTOCOLS, protocol, 'unroll_length'))


def check_consistency(opt: ExperimentOptions, file: str):
    """Raise OptionError (naming both keys) when settings of different blocks contradict each other."""

    def fail(path: str, problem: str):
        raise OptionError(file, path, problem)

    condition = _model_condition(opt, fail)
    trained = ['train'] if opt.trainer is not None else []
    for key in trained + [s.dataset for s in _samplings(opt)]:
        _check_dataset_conditions(opt, key, condition, fail)
    window = setting(MODELS, opt.model, 'short_term_ctx_winsize')
    for key in {'train', *(s.dataset for s in _samplings(opt))} & set(opt.datasets):
        dataset_window = setting(DATASETS, opt.datasets[key], 'window')
        if opt.model and window is not None and dataset_window is not None and dataset_window != window:
            fail(f'datasets.{key}.window', f"is {dataset_window}, but model.short_term_ctx_winsize is {window}: "
                                           f"the dataset's revisit frames are defined by the model's short-term "
                                           f"window; set both to the same number of frames")
    for sampling in _samplings(opt):
        _check_sampling(opt, sampling, condition, fail)
    _check_trainer(opt, fail)
    _check_encoded_clips(opt, fail)
    _check_vocabulary(opt, fail)


def _names(classes) -> str:
    return ' or '.join(c.__name__ for c in (classes if isinstance(classes, tuple) else (classes,)))


def _check_trainer(opt: ExperimentOptions, fail):
    """A trainer trains the model and autoencoder classes it names (``model_class``, ``autoencoder_class``)."""
    if opt.trainer is None:
        return
    trainer_class = TRAINERS.get(opt.trainer['type'])
    for key, registry, block in (('model', MODELS, opt.model), ('autoencoder', AUTOENCODERS, opt.autoencoder)):
        accepted = getattr(trainer_class, f'{key}_class', object)
        if block is not None and not issubclass(_entry_class(registry, block['type']), accepted):
            fail(f'{key}.type', f"is {block['type']}, but trainer {opt.trainer['type']} trains with a "
                                f'{_names(accepted)} {key}; change the {key} block or the trainer')


def _model_condition(opt: ExperimentOptions, fail) -> Optional[Condition]:
    if opt.model is None:
        return None
    kinds = getattr(_entry_class(MODELS, opt.model['type']), 'condition_kinds', KINDS)
    try:
        return Condition.parse(setting(MODELS, opt.model, 'condition_cfg'), kinds)
    except (ValueError, OSError) as error:
        fail('model.condition_cfg', str(error))


def _check_dataset_conditions(opt: ExperimentOptions, key: str, condition: Optional[Condition], fail):
    if key not in opt.datasets:
        return
    block = opt.datasets[key]
    provided = getattr(DATASETS.get(block['type']), 'conditions', None)  # e.g. {'label': 9}
    if condition is None or provided is None:
        return
    name = f"datasets.{key} ({block['type']})"
    field = condition.field
    if field not in provided:
        fail('model.condition_cfg', f"is {condition.to_config()}, but the items of {name} carry no "
                                    f"'{field}' (they carry {sorted(provided) or 'no condition'}); "
                                    f"use condition_cfg: null or a dataset that provides it")
    if condition.field_classes != provided[field]:
        fail('model.condition_cfg', f'has {condition.field_classes} {field} classes, but {name} has '
                                    f'{provided[field]}; set the model to {provided[field]}')


def _family(model_class: type) -> set:
    """The most derived of the classes samplers declare (``model_class``) that ``model_class`` belongs to: a
    VideoDiT (a FAR with its own sampler) is sampled by VideoDiT's sampler only, a FAR_Long by FAR's."""
    declared = {getattr(PIPELINES.get(name), 'model_class', object) for name in PIPELINES.keys()} - {object}
    fitting = {cls for cls in declared if issubclass(model_class, cls)}
    return {cls for cls in fitting if not any(other is not cls and issubclass(other, cls) for other in fitting)}


def _check_sampling(opt: ExperimentOptions, sampling: _Sampling, condition: Optional[Condition], fail):
    where = f'{sampling.path}.sampler'
    sampler_class = PIPELINES.get(sampling.sampler['type'])
    if opt.model is not None:
        model_class = _entry_class(MODELS, opt.model['type'])
        accepted = getattr(sampler_class, 'model_class', object)
        family = _family(model_class)
        if accepted is not object and accepted not in family:
            samplers = [n for n in PIPELINES.keys() if getattr(PIPELINES.get(n), 'model_class', None) in family]
            fail(f'{where}.type', f"{sampling.sampler['type']} samples {accepted.__name__} models, but model.type is "
                                  f"{opt.model['type']}; choose the sampler of that model family: "
                                  f"{', '.join(samplers) or 'none is registered'}")
    autoencoder_class = _entry_class(AUTOENCODERS, opt.autoencoder['type'])
    accepted = getattr(sampler_class, 'autoencoder_class', object)
    if not issubclass(autoencoder_class, accepted):
        fail(f'{where}.type', f"{sampling.sampler['type']} decodes through a {_names(accepted)}, but autoencoder.type "
                              f"is {opt.autoencoder['type']}; use a {_names(accepted)} autoencoder block")
    guidance = setting(PIPELINES, sampling.sampler, 'guidance_scale')
    if condition is None and guidance not in (None, 1, 1.0):
        fail(f'{where}.guidance_scale', f'is {guidance}, but model.condition_cfg is null (an unconditional model): '
                                        f'guidance needs a conditional model; set it to 1')
    schedule = setting(PIPELINES, sampling.sampler, 'scheduler')
    objective = (opt.trainer or {}).get('objective')
    trained = getattr(getattr(objective, 'scheduler', None), 'num_train_timesteps', None)
    if schedule is not None and trained is not None and schedule.num_train_timesteps != trained:
        fail(f'{where}.scheduler.num_train_timesteps',
             f'is {schedule.num_train_timesteps}, but trainer.objective.scheduler.num_train_timesteps is {trained}: '
             f'the model reads timesteps on the scale it was trained on; use the same number')
    frames = sampling.context_length + sampling.unroll_length
    block = opt.datasets.get(sampling.dataset)
    if block is not None:
        target = DATASETS.get(block['type'])
        length_key = getattr(target, 'clip_length_arg', 'num_frames')
        length = setting(DATASETS, block, length_key)
        if isinstance(length, int) and length < frames:
            path = 'test.protocol' if sampling.path == 'test' else sampling.path
            fail(f'datasets.{sampling.dataset}.{length_key}',
                 f'is {length}, but {path} needs clips of {frames} frames ({sampling.context_length} context + '
                 f'{sampling.unroll_length} predicted); lengthen the clips or shorten the prediction')
    if sampling.path == 'test':
        _check_protocol_baselines(opt, sampler_class, frames, fail)


def _check_protocol_baselines(opt: ExperimentOptions, sampler_class, frames: int, fail):
    window = setting(PROTOCOLS, opt.test.protocol, 'sliding_window_baseline')
    if window is None:
        return
    options_class = getattr(sampler_class, 'options_class', None)
    if options_class is None or 'context_window' not in {f.name for f in dataclasses.fields(options_class)}:
        fail('test.protocol.sliding_window_baseline',
             f"needs a sampler with a sliding window (context_window); test.sampler.type {sampler_class.__name__} "
             f"has none: remove the baseline or change the sampler")
    if window >= frames:
        fail('test.protocol.sliding_window_baseline',
             f'is {window} frames, but the protocol samples only {frames} (context_length + unroll_length): such '
             f'a window sees everything and is no baseline; make it smaller')


def _check_encoded_clips(opt: ExperimentOptions, fail):
    """An autoencoder that compresses time by r (``temporal_compression``, e.g. the NBP tokenizer: 4) encodes
    clips of 1 + r m frames: the training clips, the clips it reconstructs in validation, and the context and
    whole videos of every sampling."""
    rate = getattr(_entry_class(AUTOENCODERS, opt.autoencoder['type']), 'temporal_compression', 1)
    if rate == 1:
        return
    fix = f'1 + {rate} m frames (1, {1 + rate}, {1 + 2 * rate}, {1 + 3 * rate}, {1 + 4 * rate}, ...)'

    def check(path: str, frames: int, what: str):
        if frames < 1 or (frames - 1) % rate:
            fail(path, f'{what} {frames} frames, but autoencoder {opt.autoencoder["type"]} compresses time by {rate} '
                       f'and encodes {fix}; change the frame count')

    encoded = ['train'] if opt.trainer is not None else []
    encoded += [value.dataset for value in (opt.trainer or {}).values()
                if dataclasses.is_dataclass(value) and not isinstance(value, SamplingOptions)
                and isinstance(getattr(value, 'dataset', None), str)]
    for key in dict.fromkeys(encoded):
        block = opt.datasets.get(key)
        length_key = getattr(DATASETS.get(block['type']), 'clip_length_arg', 'num_frames') if block else None
        length = setting(DATASETS, block, length_key) if block else None
        if isinstance(length, int):
            check(f'datasets.{key}.{length_key}', length, 'is')
    for sampling in _samplings(opt):
        path = 'test.protocol' if sampling.path == 'test' else sampling.path
        if sampling.context_length:
            check(f'{path}.context_length', sampling.context_length, 'gives a context of')
        check(f'{path}.unroll_length', sampling.context_length + sampling.unroll_length,
              'makes (with context_length) videos of')


def _check_vocabulary(opt: ExperimentOptions, fail):
    """A token model's video vocabulary is the tokenizer's codebook (the product of its FSQ levels), and its frames
    are the size the tokenizer was built for."""
    vocabulary = setting(MODELS, opt.model, 'video_vocab_size')
    levels = setting(AUTOENCODERS, opt.autoencoder, 'fsq_levels')
    if vocabulary is not None and levels is not None and math.prod(levels) != vocabulary:
        codes = math.prod(levels)
        fail('model.video_vocab_size', f'is {vocabulary}, but the codebook of autoencoder.fsq_levels {list(levels)} '
                                       f'has {codes} codes; set model.video_vocab_size: {codes}')
    size = setting(AUTOENCODERS, opt.autoencoder, 'image_size')
    for key, block in opt.datasets.items() if size is not None else ():
        resolution = setting(DATASETS, block, 'resolution')
        if resolution is not None and resolution != size:
            fail(f'datasets.{key}.resolution', f'is {resolution}, but autoencoder.image_size is {size}: the tokenizer '
                                               f'reads {size}x{size} frames; set both to the same size')
