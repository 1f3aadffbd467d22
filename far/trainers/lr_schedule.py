"""The learning-rate schedule: diffusers' warmup with constant or cosine decay, or the timm-shaped cosine NBP's
reference trained with; advanced on the device."""
import math
from dataclasses import dataclass
from typing import Callable, Literal

import torch
from diffusers.optimization import get_scheduler


@dataclass(frozen=True)
class LRScheduleOptions:
    """Linear warmup over ``warmup_steps``, then constant or cosine decay to zero at the last step.

    ``timm_cosine`` is the schedule of NBP's training scripts (timm's ``CosineLRScheduler`` with ``t_initial`` the
    total steps, no warmup prefix, stepped after each update with the step just taken): the cosine counts from step
    0, not from the end of the warmup, so it is already below its peak when the warmup ends, and step s trains with
    the value at s - 1 (the first two steps at 0).
    """
    name: Literal['constant', 'cosine', 'timm_cosine'] = 'constant'
    warmup_steps: int = 0

    def build(self, optimizer, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
        if self.name == 'timm_cosine':
            return torch.optim.lr_scheduler.LambdaLR(optimizer, timm_cosine(self.warmup_steps, total_steps))
        return get_scheduler('constant_with_warmup' if self.name == 'constant' else 'cosine', optimizer,
                             num_warmup_steps=self.warmup_steps, num_training_steps=total_steps)


def timm_cosine(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """The lr factor of step s under ``LRScheduleOptions(name='timm_cosine')``: f(max(s - 1, 0)), with f(t) = t / W
    during the warmup (t < W), 0.5 (1 + cos(pi t / T)) until T, 0 after. A function, not an object, so that a
    checkpoint does not carry T (a resumed run with more steps follows its new length)."""
    def factor(step: int) -> float:
        t = max(step - 1, 0)
        if t < warmup_steps:
            return t / warmup_steps
        return 0.5 * (1 + math.cos(math.pi * t / total_steps)) if t < total_steps else 0.0
    return factor


class AppliedStepsSchedule:
    """The lr of every step looked up on the device by the number of optimiser steps applied so far.

    A skipped step must not advance the schedule, and whether a step was skipped is known on the device only:
    so the count of applied steps is a device tensor, each parameter group's lr a device tensor, and the
    schedule's values (diffusers' ``LambdaLR`` computes them) a table on the device. ``schedule``, the
    ``LambdaLR`` accelerate saves and loads, carries the count in checkpoints (its ``last_epoch``, as before).
    """

    def __init__(self, schedule: torch.optim.lr_scheduler.LambdaLR, optimizer, *, total_steps: int, device):
        self.schedule, self.optimizer = schedule, optimizer
        factors = [[factor(step) for factor in schedule.lr_lambdas] for step in range(total_steps + 1)]
        base = torch.tensor(schedule.base_lrs, dtype=torch.float64)
        self.table = (torch.tensor(factors, dtype=torch.float64) * base).float().to(device)  # [steps + 1, groups]
        self.applied = torch.zeros(1, dtype=torch.long, device=device)
        self.restore()

    def restore(self):
        """Take the count from ``schedule`` (after a checkpoint was loaded into it and the optimizer)."""
        self.applied.fill_(self.schedule.last_epoch)
        for group in self.optimizer.param_groups:
            group['lr'] = torch.zeros((), device=self.table.device)
        self._set_lrs()

    def advance(self, applied: torch.Tensor):
        """After an optimiser step: count it when ``applied`` (a bool tensor on the device) is true."""
        self.applied += applied
        self._set_lrs()

    def _set_lrs(self):
        lrs = self.table.index_select(0, self.applied)[0]
        for group, lr in zip(self.optimizer.param_groups, lrs):
            group['lr'].copy_(lr)

    def sync(self):
        """Before a checkpoint is saved (a host sync): the count into ``schedule``."""
        self.schedule.last_epoch = int(self.applied)

    def last_lr(self) -> float:
        """The first group's lr, for the log (a host sync)."""
        return float(self.optimizer.param_groups[0]['lr'])
