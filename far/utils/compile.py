"""torch.compile for the framework: regional compilation of a model's repeated blocks, and counting compilations.

Regional compilation compiles one transformer block and reuses the code for every block of the model (and of
every model with the same block), so warm-up costs one block, not the whole network.
"""
import contextlib
from typing import Dict, Iterator

import torch
from torch._dynamo.utils import counters


def compile_blocks(model: torch.nn.Module, **options) -> int:
    """``torch.compile`` (in place) every submodule whose class is one of the model's repeated blocks (diffusers'
    ``_no_split_modules``, e.g. ``FARBlock``); returns how many were compiled."""
    names = set(getattr(model, '_no_split_modules', None) or ())
    blocks = [module for module in model.modules() if type(module).__name__ in names]
    if not blocks:
        raise ValueError(f'{type(model).__name__} names no repeated block (_no_split_modules) to compile')
    for block in blocks:
        block.compile(**options)
    return len(blocks)


@contextlib.contextmanager
def count_compilations() -> Iterator[Dict[str, int]]:
    """Counts the graphs ``torch.compile`` makes inside the block: ``{'graphs': n, 'frames': m}`` (0 and 0 when
    everything ran compiled code made before)."""
    found: Dict[str, int] = {}
    before = (counters['stats']['unique_graphs'], counters['frames']['total'])
    try:
        yield found
    finally:
        found['graphs'] = counters['stats']['unique_graphs'] - before[0]
        found['frames'] = counters['frames']['total'] - before[1]
