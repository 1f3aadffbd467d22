"""Name -> constructor registries, filled by decorators and read by the YAML builder.

A YAML block ``{type: NAME, **kwargs}`` builds ``REGISTRY.get(NAME)(**kwargs)``; the kwargs are
checked against the constructor's signature first (see ``far.options``), so a misspelt key fails
before any work starts. ``NAME`` is the class (or factory) name; a few short aliases (``mcvd``,
``psnr``, ...) are accepted as well.

An entry whose settings form a dataclass declares it as ``options_class``: the block's keys are that
dataclass's fields, and the entry is built as ``Entry(**runtime_objects, options=Options(**keys))``.
"""
import inspect
from typing import Any, Callable, Dict, Iterable, Optional, Sequence


class Registry:

    def __init__(self, name: str):
        self.name = name
        self._entries: Dict[str, Callable] = {}
        self._aliases: Dict[str, str] = {}

    def register(self, obj: Optional[Callable] = None, *, name: Optional[str] = None, aliases: Sequence[str] = ()):
        """Use as ``@REG.register()``, ``@REG.register(aliases=('x',))`` or ``REG.register(obj)``."""

        def _add(o):
            key = name or o.__name__
            for taken in (key, *aliases):
                if taken in self and self.get(taken) is not o:
                    raise KeyError(f"{self.name} registry: '{taken}' is already registered")
            self._entries[key] = o
            self._aliases.update({alias: key for alias in aliases})
            return o

        return _add if obj is None else _add(obj)

    def canonical(self, name: str) -> str:
        """The registered name behind ``name`` (itself, or what the alias stands for)."""
        return self._aliases.get(name, name)

    def get(self, name: str) -> Callable:
        if name not in self:
            raise KeyError(f"{self.name} registry has no '{name}'; registered: {', '.join(self.keys())}")
        return self._entries[self.canonical(name)]

    def entry_class(self, name: str):
        """The class behind entry ``name``: a size variant (a factory with ``target``) stands for its class."""
        target = self.get(name)
        return getattr(target, 'target', target)

    def __contains__(self, name: str) -> bool:
        return self.canonical(name) in self._entries

    def keys(self) -> Iterable[str]:
        return sorted(self._entries)

    def build(self, cfg: Dict[str, Any], **injected):
        """Build from a ``{type: ..., **kwargs}`` dict; ``injected`` are runtime objects (accelerator, ...)."""
        cfg = dict(cfg)
        target = self.get(cfg.pop('type'))
        options_class = getattr(target, 'options_class', None)
        if options_class is not None:
            return target(**injected, options=options_class(**cfg))
        return target(**cfg, **injected)

    def __repr__(self):
        return f'Registry({self.name}: {", ".join(self.keys())})'


def variant(target: Callable, name: str, doc: str = '', **fixed) -> Callable:
    """A size variant: ``target`` with some arguments fixed, whose signature shows only the free ones.

    The signature matters because the YAML validator reads it (a fixed argument is not a valid key).
    """
    sig = inspect.signature(target)
    free = [p for n, p in sig.parameters.items() if n not in fixed and n != 'self']

    def factory(**kwargs):
        return target(**fixed, **kwargs)

    factory.__name__ = factory.__qualname__ = name
    factory.__signature__ = sig.replace(parameters=free)
    factory.__doc__ = doc or f'{target.__name__} with ' + ', '.join(f'{k}={v}' for k, v in fixed.items())
    factory.fixed_kwargs = dict(fixed)
    factory.target = target
    for attribute in ('runtime_args', 'options_class'):
        if hasattr(target, attribute):
            setattr(factory, attribute, getattr(target, attribute))
    return factory


MODELS = Registry('model')              # video transformers (FAR, FAR-Long, NBP)
AUTOENCODERS = Registry('autoencoder')  # latent autoencoders (DC-AE, KL, identity) and the NBP video tokenizer
DATASETS = Registry('dataset')
SOURCES = Registry('data source')      # where a dataset's clips come from: a JSON list or tar shards
TRAINERS = Registry('trainer')
PIPELINES = Registry('pipeline')        # samplers: a model + its autoencoder -> videos (far.pipelines.base)
METRICS = Registry('metric')            # per-frame video metrics (PSNR, SSIM, LPIPS, MSE) and FVD
PROTOCOLS = Registry('protocol')        # evaluation protocols (Latte, MCVD, TECO, memory)
