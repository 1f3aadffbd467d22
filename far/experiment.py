"""What an experiment YAML file holds (train.py and test.py read the same file), and building its parts.

Every group is validated before any work (see ``far.options``): an unknown key, a wrong type or a
missing required key stops the run with one message naming the file, the key path and what is allowed.
"""
import contextlib
import dataclasses
from dataclasses import dataclass
from typing import Dict, Iterator, Literal, Optional, Sequence, Tuple

from diffusers import FlowMatchEulerDiscreteScheduler

from far.options import Block, OptionError, apply_overrides, load_yaml, validate
from far.registry import AUTOENCODERS, DATASETS, MODELS, PROTOCOLS, TRAINERS


@dataclass(frozen=True)
class SchedulerOptions:
    """Arguments of diffusers' FlowMatchEulerDiscreteScheduler: training noise levels and sampling."""
    num_train_timesteps: int = 1000
    shift: float = 1.0

    def build(self) -> FlowMatchEulerDiscreteScheduler:
        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=self.num_train_timesteps, shift=self.shift)


@dataclass(frozen=True)
class EvaluationOptions:
    """What test.py evaluates and how it samples.

    ``checkpoint``: ``latest`` (the experiment's newest checkpoint), a checkpoint folder, a
    ``save_pretrained`` folder, or a raw state dict (.pth/.safetensors) such as a released FAR model.
    """
    protocol: Block(PROTOCOLS)
    dataset: str = 'val'
    checkpoint: str = 'latest'
    use_ema: bool = True
    num_inference_steps: int = 25
    guidance_scale: float = 1.0
    use_kv_cache: bool = True
    batch_size: int = 8


@dataclass(frozen=True)
class ExperimentOptions:
    name: str                                     # the experiment folder: experiments/<name>/
    autoencoder: Block(AUTOENCODERS)
    datasets: Dict[str, Block(DATASETS)]          # by key: train, val, ...
    model: Optional[Block(MODELS)] = None         # the FAR model (absent when training an autoencoder)
    trainer: Optional[Block(TRAINERS)] = None     # train.py
    test: Optional[EvaluationOptions] = None      # test.py
    seed: int = 0
    mixed_precision: Literal['no', 'fp16', 'bf16'] = 'no'
    pretrained: Optional[str] = None              # initial weights for training (strict load)
    scheduler: SchedulerOptions = SchedulerOptions()

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
    return opt


def require(opt: ExperimentOptions, path: str, key: str, purpose: str):
    """Stop when an optional group that ``purpose`` needs is missing (``key`` 'trainer', 'test', 'datasets.train')."""
    node = opt
    for part in key.split('.'):
        node = node.get(part) if isinstance(node, dict) else getattr(node, part, None)
    if node is None:
        raise OptionError(path, key, f'missing: {purpose} needs it')
