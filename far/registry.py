"""Name -> constructor registries, filled by decorators and read by the YAML builder.

A YAML block ``{type: NAME, **kwargs}`` builds ``REGISTRY.get(NAME)(**kwargs)``; the kwargs are
checked against the constructor's signature first (see ``far.options``), so a misspelt key fails
before any work starts.
"""
import inspect
from typing import Any, Callable, Dict, Iterable, Optional


class Registry:

    def __init__(self, name: str):
        self.name = name
        self._entries: Dict[str, Callable] = {}

    def register(self, obj: Optional[Callable] = None, *, name: Optional[str] = None):
        """Use as ``@REG.register()``, ``@REG.register(name='X')`` or ``REG.register(obj)``."""

        def _add(o):
            key = name or o.__name__
            if key in self._entries and self._entries[key] is not o:
                raise KeyError(f"{self.name} registry: '{key}' is already registered")
            self._entries[key] = o
            return o

        return _add if obj is None else _add(obj)

    def get(self, name: str) -> Callable:
        if name not in self._entries:
            raise KeyError(f"{self.name} registry has no '{name}'; registered: {', '.join(sorted(self._entries))}")
        return self._entries[name]

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def keys(self) -> Iterable[str]:
        return sorted(self._entries)

    def build(self, cfg: Dict[str, Any], **injected):
        """Build from a ``{type: ..., **kwargs}`` dict; ``injected`` are runtime objects (accelerator, ...)."""
        cfg = dict(cfg)
        return self.get(cfg.pop('type'))(**cfg, **injected)

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
    return factory


MODELS = Registry('model')              # FAR and NBP transformers
AUTOENCODERS = Registry('autoencoder')  # latent autoencoders (DC-AE, KL, identity), NBP video tokenizer
DATASETS = Registry('dataset')
TRAINERS = Registry('trainer')
PIPELINES = Registry('pipeline')
METRICS = Registry('metric')            # per-video metrics (psnr, ssim, lpips, mse, fvd)
PROTOCOLS = Registry('protocol')        # evaluation protocols (latte, mcvd, teco)
