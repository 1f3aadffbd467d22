"""torch.compile for the framework: regional compilation of a model's repeated blocks, and counting compilations.

Regional compilation compiles one transformer block and reuses the code for every block of the model (and of
every model with the same block), so warm-up costs one block, not the whole network.
"""
import contextlib
from typing import Dict, Iterator, List

import torch
from torch._dynamo.utils import counters


def repeated_blocks(model: torch.nn.Module) -> List[torch.nn.Module]:
    """The submodules whose class is one of the model's repeated blocks (diffusers' ``_no_split_modules``, e.g.
    ``FARBlock``): what regional compilation compiles and FSDP shards one by one."""
    names = set(getattr(model, '_no_split_modules', None) or ())
    return [module for module in model.modules() if type(module).__name__ in names]


def compile_blocks(model: torch.nn.Module, **options) -> int:
    """``torch.compile`` (in place) every repeated block of ``model``; returns how many were compiled."""
    blocks = repeated_blocks(model)
    if not blocks:
        raise ValueError(f'{type(model).__name__} names no repeated block (_no_split_modules) to compile')
    for block in blocks:
        block.compile(**options)
    return len(blocks)


_COUNTED = {
    'graphs': ('stats', 'unique_graphs'),        # graphs compiled: after warm-up, each one is a recompile
    'frames': ('frames', 'total'),               # Python frames Dynamo looked at
    'graph_breaks': ('graph_break', None),       # graph breaks (summed over reasons)
    'cudagraph_skips': ('inductor', 'cudagraph_skips'),  # graphs Inductor could not capture as CUDA graphs
}


def compile_counters() -> Dict[str, int]:
    """The process's running totals of what ``torch.compile`` did (see ``_COUNTED``)."""
    return {name: int(counters[group][key]) if key is not None else int(sum(counters[group].values()))
            for name, (group, key) in _COUNTED.items()}


@contextlib.contextmanager
def count_compilations() -> Iterator[Dict[str, int]]:
    """Counts what ``torch.compile`` does inside the block: ``{'graphs', 'frames', 'graph_breaks',
    'cudagraph_skips'}`` (all 0 when everything ran code compiled before)."""
    found: Dict[str, int] = {}
    before = compile_counters()
    try:
        yield found
    finally:
        found.update({name: value - before[name] for name, value in compile_counters().items()})
