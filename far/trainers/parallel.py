"""How training spreads over processes: ``trainer.parallel``, and the DDP strategy the sharded ones extend.

A strategy decides what each process holds (see ``ParallelOptions``), builds the optimizer over what it holds,
hands the parts to accelerate, and saves and loads what accelerate's own state does not cover. Every strategy's
checkpoint holds ``model.safetensors`` (full weights, the names of a DDP checkpoint) and ``ema.safetensors``, so
``test.py`` and ``load_weights`` read any of them.
"""
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import torch
from accelerate.utils import DistributedDataParallelKwargs, DistributedType
from safetensors.torch import load_model, save_model


def allow_unused_parameters(accelerator):
    """Tell DDP, before the model is prepared, that a step may leave some parameters without gradient (it then looks
    for them every step, a cost only such trainings pay)."""
    accelerator.ddp_handler = DistributedDataParallelKwargs(find_unused_parameters=True)


@dataclass(frozen=True)
class ParallelOptions:
    """``trainer.parallel``. ``strategy``:

    - ``ddp``: every process holds the weights, gradients, AdamW moments and EMA (accelerate's DDP).
    - ``zero1``: weights, gradients and EMA replicated, the AdamW moments sharded over the processes (torch's
      ``ZeroRedundancyOptimizer``, DeepSpeed stage 1's split); checkpoints hold the optimizer state gathered once.
    - ``fsdp``: FSDP2 (``fully_shard`` per transformer block, the blocks regional compilation compiles, then the
      root): weights, gradients, moments and EMA sharded; under ``mixed_precision: bf16`` blocks compute in bf16
      while master weights and gradient reduction stay fp32. Activation checkpointing per block is the trainer's
      ``gradient_checkpointing``; ``cpu_offload`` keeps parameters, gradients and moments in host memory between
      uses (GPUs only). Checkpoints hold the optimizer state as one shard per process (torch.distributed.checkpoint,
      read back under any process count).

    ``world_size``: the number of processes this experiment is meant for (a launch with another count stops before
    any work); null: any.
    """
    strategy: Literal['ddp', 'zero1', 'fsdp'] = 'ddp'
    cpu_offload: bool = False
    world_size: Optional[int] = None

    def __post_init__(self):
        if self.cpu_offload and self.strategy != 'fsdp':
            raise ValueError(f'parallel: cpu_offload needs strategy fsdp, got strategy {self.strategy}')
        if self.world_size is not None and self.world_size < 1:
            raise ValueError(f'parallel: world_size must be >= 1 or null, got {self.world_size}')


# accelerate's own sharding plugins, which the strategies replace: a launch config that names one is refused.
PLUGIN_TYPES = (DistributedType.FSDP, DistributedType.DEEPSPEED)


def parallel_options(trainer: dict) -> ParallelOptions:
    """The parallel options of a validated trainer block (train.py checks the launch before building the trainer)."""
    return trainer.get('parallel') or ParallelOptions()


def check_launch(options: ParallelOptions, accelerator):
    """Stop when the processes launched, their precision or accelerate's config do not fit ``options``."""
    expected, launched = options.world_size, accelerator.num_processes
    if expected is not None and expected != launched:
        raise ValueError(f'trainer.parallel.world_size is {expected} but {launched} process(es) were launched: '
                         f'launch {expected} (accelerate launch --num_processes {expected} ...) or set '
                         f'trainer.parallel.world_size={launched}')
    if options.strategy != 'ddp' and accelerator.mixed_precision == 'fp16':
        raise ValueError(f'trainer.parallel.strategy {options.strategy} trains in fp32 or bf16: set '
                         f'mixed_precision: bf16 (fp16 needs a loss scaler over the shards)')
    if options.cpu_offload and accelerator.device.type == 'cpu':
        raise ValueError('trainer.parallel.cpu_offload moves the shards from GPU to host memory and this run has no '
                         'GPU: set trainer.parallel.cpu_offload=false')
    if accelerator.distributed_type in PLUGIN_TYPES:
        raise ValueError(f'the accelerate config launches {accelerator.distributed_type.value}, which '
                         f'trainer.parallel replaces: launch with a MULTI_GPU config (options/accelerate/) and set '
                         f'trainer.parallel.strategy')


class DataParallel:
    """``ddp``: accelerate prepares model, optimizer and schedule; its state is the whole checkpoint."""

    def __init__(self, options: ParallelOptions, accelerator, model: torch.nn.Module):
        self.options, self.accelerator = options, accelerator
        self.check(model)

    def check(self, model: torch.nn.Module):
        """Stop before any work when the launch or the model does not fit the strategy."""
        check_launch(self.options, self.accelerator)

    def shard(self, model: torch.nn.Module, ema: Optional[torch.nn.Module]):
        """Split ``model`` and the EMA's copy over the processes, in place (before the optimizer is built)."""

    def optimizer(self, groups: list, **adamw) -> torch.optim.Optimizer:
        # One kernel for the whole update, which skips it on the device when told to (`found_inf`).
        return torch.optim.AdamW(groups, fused=True, **adamw)

    def prepare(self, model, optimizer, schedule) -> tuple:
        """``(model, optimizer, schedule)`` as the training loop uses them."""
        self.model, self.optimizer, schedule = self.accelerator.prepare(model, optimizer, schedule)
        return self.model, self.optimizer, schedule

    def fused_optimizer(self) -> torch.optim.Optimizer:
        """The AdamW whose ``found_inf`` skips an update."""
        return self.optimizer.optimizer

    def full_norm(self, norm: torch.Tensor) -> torch.Tensor:
        """A gradient norm as a plain tensor."""
        return norm

    def save(self, folder: Path):
        """What a checkpoint needs besides accelerate's state (every rank calls it)."""

    def load(self, folder: Path):
        """Restore what ``save`` wrote."""

    def save_module(self, module: torch.nn.Module, file: Path):
        """``module``'s full weights to one safetensors file (every rank calls it, the main process writes)."""
        if self.accelerator.is_main_process:
            save_model(module, str(file))

    def load_module(self, module: torch.nn.Module, file: Path):
        load_model(module, str(file), device=str(next(module.parameters()).device))

    def full_module(self, module: torch.nn.Module) -> torch.nn.Module:
        """``module`` with full weights on this process (the sampler's view)."""
        return module

