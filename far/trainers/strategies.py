"""The strategy object ``trainer.parallel`` names, for the processes launched."""
import torch

from far.trainers.fsdp import FullySharded
from far.trainers.parallel import DataParallel, ParallelOptions
from far.trainers.zero1 import ZeroOne

STRATEGIES = {'ddp': DataParallel, 'zero1': ZeroOne, 'fsdp': FullySharded}


def build_strategy(options: ParallelOptions, accelerator, model: torch.nn.Module) -> DataParallel:
    """The strategy of ``options``; a single process under ``zero1`` has nothing to share and trains as DDP (the
    checkpoints of both are the same)."""
    alone = accelerator.num_processes == 1 and options.strategy == 'zero1'
    return (DataParallel if alone else STRATEGIES[options.strategy])(options, accelerator, model)
