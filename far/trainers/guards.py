"""The trainer's fault options and the guard that keeps non-finite steps out of the weights."""
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import torch

from far.utils.checkpoints import latest_checkpoint
from far.utils.faults import NonFiniteTraining

logger = logging.getLogger('far')


@dataclass(frozen=True)
class FaultOptions:
    """A step whose loss or gradient norm is not finite is skipped (no optimizer, EMA or schedule step);
    more than ``max_nonfinite_steps`` in a row stop the run. A process waits at most
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
    """Decides once per step, the same way on every rank, whether its update is applied."""

    def __init__(self, accelerator, max_in_a_row: int, checkpoints: Path):
        self.accelerator, self.max_in_a_row, self.checkpoints = accelerator, max_in_a_row, checkpoints
        self.in_a_row = self.skipped = 0

    def last_finite_checkpoint(self) -> str:
        """The newest checkpoint: weights are checked before every save, so all of them are finite."""
        return str(latest_checkpoint(self.checkpoints) or 'none (none was saved)')

    def on_any_rank(self, flag: torch.Tensor) -> bool:
        """Whether ``flag`` is true on some rank: one all-reduce and one host sync."""
        flag = flag.float()
        if self.accelerator.num_processes > 1:
            flag = self.accelerator.reduce(flag, 'sum')
        return flag.item() > 0

    def allows(self, step: int, loss: torch.Tensor, grad_norm: torch.Tensor) -> bool:
        """Whether step ``step`` (counted from 1) may update the weights; stops the run after too many refusals."""
        # Under fp16 the GradScaler skips steps whose gradients overflow, and lowers its scale.
        checked = [loss.detach().float()] + ([grad_norm.float()] if self.accelerator.scaler is None else [])
        if not self.on_any_rank(~torch.isfinite(torch.stack(checked)).all()):
            self.in_a_row = 0
            return True
        self.in_a_row += 1
        self.skipped += 1
        if self.in_a_row > self.max_in_a_row:
            raise NonFiniteTraining(
                f'step {step}: the loss or gradient norm was not finite {self.in_a_row} steps in a row (more than '
                f'trainer.fault.max_nonfinite_steps={self.max_in_a_row}): training stopped; the last finite '
                f'checkpoint is {self.last_finite_checkpoint()}; lower trainer.optimizer.lr or set '
                f'trainer.max_grad_norm')
        logger.warning(f'step {step}: loss {loss.item():.4g}, gradient norm {grad_norm.item():.4g} on this process: '
                       f'update skipped ({self.in_a_row} in a row, {self.skipped} in this run)')
        return False

    def check_weights(self, step: int, parameters: Iterable[torch.Tensor]):
        """Stop before non-finite weights are saved: no step can follow them."""
        finite = torch.stack([torch.isfinite(p.detach()).all() for p in parameters]).all()
        if self.on_any_rank(~finite):
            raise NonFiniteTraining(f'step {step}: the weights hold non-finite values and were not saved; the last '
                                    f'finite checkpoint is {self.last_finite_checkpoint()}')
