"""The trainer's fault options and the guard that keeps non-finite steps out of the weights."""
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import torch

from far.utils.checkpoints import latest_checkpoint
from far.utils.distributed import local_tensor
from far.utils.faults import NonFiniteTraining

logger = logging.getLogger('far')


@dataclass(frozen=True)
class FaultOptions:
    """A step whose loss or gradient norm is not finite is skipped (no optimizer, EMA or schedule step);
    more than ``max_nonfinite_steps`` in a row stop the run, at the next log or checkpoint step. A process waits at most
    ``collective_timeout`` seconds for the others (a dead or hung process) before it stops: more than the
    main process alone ever works between two collectives (writing a dataset on first use, saving or
    checking a checkpoint)."""
    max_nonfinite_steps: int = 3
    collective_timeout: float = 600.0

    def __post_init__(self):
        if self.max_nonfinite_steps < 0 or self.collective_timeout <= 0:
            raise ValueError(f'fault: max_nonfinite_steps must be >= 0 and collective_timeout > 0, got '
                             f'{self.max_nonfinite_steps} and {self.collective_timeout}')


def fault_options(trainer: dict) -> FaultOptions:
    """The fault options of a validated trainer block (train.py needs them before building the trainer)."""
    return trainer.get('fault') or FaultOptions()


class NonFiniteGuard:
    """Decides on the device, the same way on every rank, whether a step's update is applied, and reads its
    decisions on the host only when asked (``review``, at log and checkpoint steps): it then warns about the
    skipped steps and stops the run when more than ``max_in_a_row`` were skipped in a row. The stop comes at the
    first review after the limit was passed and names the step that passed it; until then, steps whose update is
    skipped change nothing, so no non-finite weight is ever saved."""

    def __init__(self, accelerator, max_in_a_row: int, checkpoints: Path):
        self.accelerator, self.max_in_a_row, self.checkpoints = accelerator, max_in_a_row, checkpoints
        self.in_a_row = self.skipped = 0
        self.unread = []  # (step, [applied, loss, gradient norm]) of the steps since the last review

    def last_finite_checkpoint(self) -> str:
        """The newest checkpoint: weights are checked before every save, so all of them are finite."""
        return str(latest_checkpoint(self.checkpoints) or 'none (none was saved)')

    def on_any_rank(self, flag: torch.Tensor) -> torch.Tensor:
        """Whether ``flag`` is true on some rank, as a bool tensor (one all-reduce, no host sync)."""
        flag = flag.float()
        if self.accelerator.num_processes > 1:
            flag = self.accelerator.reduce(flag, 'sum')
        return flag > 0

    def backward_loss(self, loss: torch.Tensor) -> torch.Tensor:
        """The loss to differentiate. Under fp16 the GradScaler decides whether the optimiser steps, from the
        gradients: a non-finite loss (on any rank) makes them all NaN, so that it skips the step too."""
        if self.accelerator.scaler is None:
            return loss
        return loss * torch.where(self.on_any_rank(~torch.isfinite(loss.detach())), float('nan'), 1.0)

    def check(self, step: int, loss: torch.Tensor, grad_norm: torch.Tensor) -> torch.Tensor:
        """A bool tensor: whether step ``step`` (counted from 1) may update the weights."""
        # Under fp16 the GradScaler skips steps whose gradients overflow, and lowers its scale.
        loss, grad_norm = loss.detach().float(), grad_norm.detach().float()
        checked = torch.stack([loss] + ([grad_norm] if self.accelerator.scaler is None else []))
        applied = ~self.on_any_rank(~torch.isfinite(checked).all())
        self.unread.append((step, torch.stack([applied.float(), loss, grad_norm])))
        return applied

    def review(self):
        """Read the decisions since the last review (one host sync): warn about each skipped step, and stop the
        run at the first step that passed the limit."""
        if not self.unread:
            return
        steps = [step for step, _ in self.unread]
        decisions = torch.stack([values for _, values in self.unread]).tolist()
        self.unread = []
        for step, (applied, loss, grad_norm) in zip(steps, decisions):
            if applied:
                self.in_a_row = 0
                continue
            self.in_a_row += 1
            self.skipped += 1
            if self.in_a_row > self.max_in_a_row:
                raise NonFiniteTraining(
                    f'step {step}: the loss or gradient norm was not finite {self.in_a_row} steps in a row (more than '
                    f'trainer.fault.max_nonfinite_steps={self.max_in_a_row}): training stopped; the last finite '
                    f'checkpoint is {self.last_finite_checkpoint()}; lower trainer.optimizer.lr or set '
                    f'trainer.max_grad_norm')
            logger.warning(f'step {step}: loss {loss:.4g}, gradient norm {grad_norm:.4g} on this process: update '
                           f'skipped ({self.in_a_row} in a row, {self.skipped} in this run)')

    def check_weights(self, step: int, parameters: Iterable[torch.Tensor]):
        """Stop before non-finite weights are saved: no step can follow them."""
        finite = torch.stack([torch.isfinite(local_tensor(p.detach())).all() for p in parameters]).all()
        if self.on_any_rank(~finite).item():
            raise NonFiniteTraining(f'step {step}: the weights hold non-finite values and were not saved; the last '
                                    f'finite checkpoint is {self.last_finite_checkpoint()}')
