"""What an experiment YAML file holds (train.py and test.py read the same file), and building its parts.

Every group is validated before any work (see ``far.options``): an unknown key, a wrong type or a
missing required key stops the run with one message naming the file, the key path and what is allowed.
Then the settings that must agree across blocks are checked (``far.checks``): the rules of the interfaces
between blocks, and those each class used declares beside itself.
"""
import contextlib
import dataclasses
from dataclasses import dataclass
from typing import Dict, Iterator, Literal, Optional, Sequence, Tuple

from far.checks import check_experiment, explain_sampler_error
from far.evaluation import SamplingOptions
from far.options import Block, OptionError, apply_overrides, load_yaml, validate
from far.registry import AUTOENCODERS, DATASETS, MODELS, PIPELINES, PROTOCOLS, TRAINERS


@dataclass(frozen=True, kw_only=True)
class EvaluationOptions(SamplingOptions):
    """What test.py evaluates and how it samples (``sampler``, ``dataset``, ``batch_size``: see SamplingOptions).

    ``checkpoint``: ``latest`` (the experiment's newest checkpoint), a checkpoint folder, a
    ``save_pretrained`` folder, or a raw state dict (.pth/.safetensors) such as a released FAR model; with a
    reconstruction protocol, the autoencoder's weights in any form its block's ``checkpoint`` takes (e.g. a released
    ``magvit2_*.pt``). ``sampler``: null only with a reconstruction protocol, which samples no model.
    """
    sampler: Optional[Block(PIPELINES)] = None
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
    written = apply_overrides(load_yaml(path), overrides, file=path)
    try:
        opt = validate(written, ExperimentOptions, path)
    except OptionError as error:
        explain_sampler_error(written, error)
        raise
    for key_path, key in dataset_references(opt):
        if key not in opt.datasets:
            raise OptionError(path, key_path, f"names dataset '{key}', which is not a key of `datasets` "
                                              f"(keys: {', '.join(opt.datasets) or 'none'})")
    check_experiment(opt, path)
    return opt


def require(opt: ExperimentOptions, path: str, key: str, purpose: str):
    """Stop when an optional group that ``purpose`` needs is missing (``key`` 'trainer', 'test', 'datasets.train')."""
    node = opt
    for part in key.split('.'):
        node = node.get(part) if isinstance(node, dict) else getattr(node, part, None)
    if node is None:
        raise OptionError(path, key, f'missing: {purpose} needs it')
