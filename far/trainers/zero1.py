"""``zero1``: DDP's replicated weights and gradients, with the AdamW moments sharded over the processes."""
from pathlib import Path

import torch
from torch.distributed.optim import ZeroRedundancyOptimizer

from far.trainers.parallel import DataParallel

OPTIMIZER_FILE = 'optimizer.bin'  # the name and format of accelerate's: a DDP run resumes from it as well


class ZeroOne(DataParallel):
    """Each process updates its share of the parameters and broadcasts them (``ZeroRedundancyOptimizer``). The
    checkpoint's optimizer state is gathered on the main process, as a DDP run's, so that it resumes under any
    process count (a single process, with nothing to share, trains as DDP)."""

    def optimizer(self, groups: list, **adamw) -> torch.optim.Optimizer:
        return ZeroRedundancyOptimizer(groups, optimizer_class=torch.optim.AdamW, fused=True, **adamw)

    def prepare(self, model, optimizer, schedule) -> tuple:
        self.optimizer = optimizer
        self.model, schedule = self.accelerator.prepare(model, schedule)
        return self.model, optimizer, schedule

    def fused_optimizer(self) -> torch.optim.Optimizer:
        return self.optimizer.optim  # this process's AdamW over its share

    def save(self, folder: Path):
        self.optimizer.consolidate_state_dict(to=0)
        if self.accelerator.is_main_process:
            torch.save(self.optimizer.state_dict(), folder / OPTIMIZER_FILE)

    def load(self, folder: Path):
        self.optimizer.load_state_dict(torch.load(folder / OPTIMIZER_FILE, map_location=self.accelerator.device,
                                                  weights_only=True))
