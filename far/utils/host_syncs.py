"""Counting the points where the host waits for the device: scalar reads (``.item()``, ``bool(tensor)``,
``.tolist()``), data-dependent shapes (``nonzero``, boolean indexing) and copies from an accelerator to the host.

On a CPU every tensor is already on the host, so copies cannot be seen there; scalar reads and data-dependent
shapes can, and they are what makes a step wait on a GPU. Used by the tests of the training step and by
``scripts/gpu_check.py``.
"""
import contextlib
from typing import Dict, Iterator

import torch
from torch.utils._python_dispatch import TorchDispatchMode

_SCALAR_READS = {torch.ops.aten._local_scalar_dense.default}
_DATA_DEPENDENT = {torch.ops.aten.nonzero.default, torch.ops.aten.masked_select.default,
                   torch.ops.aten._unique2.default, torch.ops.aten.unique_consecutive.default}


def _boolean_index(indices) -> bool:
    return any(i is not None and i.dtype == torch.bool for i in indices)


class _HostSyncCounter(TorchDispatchMode):
    def __init__(self, found: Dict[str, int]):
        super().__init__()
        self.found = found

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _SCALAR_READS:
            self.found['scalar_reads'] += 1
        elif func in _DATA_DEPENDENT or (func is torch.ops.aten.index.Tensor and _boolean_index(args[1])):
            self.found['data_dependent'] += 1
        elif func in (torch.ops.aten._to_copy.default, torch.ops.aten.copy_.default):
            source = args[1] if func is torch.ops.aten.copy_.default else args[0]
            target = args[0].device if func is torch.ops.aten.copy_.default else kwargs.get('device')
            if target is not None and torch.device(target).type == 'cpu' and source.device.type != 'cpu':
                self.found['to_host'] += 1
        return func(*args, **kwargs)


@contextlib.contextmanager
def count_host_syncs() -> Iterator[Dict[str, int]]:
    """Counts host syncs inside the block: ``{'scalar_reads', 'data_dependent', 'to_host', 'total'}``."""
    found = {'scalar_reads': 0, 'data_dependent': 0, 'to_host': 0}
    try:
        with _HostSyncCounter(found):
            yield found
    finally:
        found['total'] = found['scalar_reads'] + found['data_dependent'] + found['to_host']
