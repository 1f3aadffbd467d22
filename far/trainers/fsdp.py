"""``fsdp``: FSDP2, weights, gradients, AdamW moments and EMA sharded over the processes."""
import copy
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from safetensors.torch import load_file, save_file
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_optimizer_state_dict,
                                                     set_model_state_dict, set_optimizer_state_dict)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard
from torch.distributed.tensor import DTensor

from far.trainers.parallel import DataParallel
from far.utils.checkpoints import MODEL_FILE
from far.utils.compile import repeated_blocks

OPTIMIZER_FOLDER = 'optimizer'  # torch.distributed.checkpoint: one file per process and their .metadata


class FullySharded(DataParallel):
    """``fully_shard`` on each repeated block, then on the root; the EMA's copy is sharded the same way, so each
    process averages its own share. The sampler gets a full copy gathered when asked (``full_module``). A single
    process holds everything (there is nothing to shard) and saves the same files."""

    def check(self, model: torch.nn.Module):
        super().check(model)
        if not repeated_blocks(model):
            raise ValueError(f'trainer.parallel.strategy fsdp shards a model per transformer block and '
                             f'{type(model).__name__} names none (_no_split_modules): use strategy ddp or zero1')

    def shard(self, model: torch.nn.Module, ema):
        self.template = copy.deepcopy(model)
        for module in self.template.modules():  # structure and buffers only: filled when gathered
            for name, parameter in module.named_parameters(recurse=False):
                module._parameters[name] = torch.nn.Parameter(torch.empty_like(parameter, device='meta'))
        if self.accelerator.num_processes == 1:
            return
        mesh = init_device_mesh(self.accelerator.device.type, (self.accelerator.num_processes,))
        offload = CPUOffloadPolicy() if self.options.cpu_offload else OffloadPolicy()
        bf16 = self.accelerator.mixed_precision == 'bf16'
        precision = MixedPrecisionPolicy(param_dtype=torch.bfloat16 if bf16 else None, reduce_dtype=torch.float32)
        for block in repeated_blocks(model):
            fully_shard(block, mesh=mesh, mp_policy=precision, offload_policy=offload)
        fully_shard(model, mesh=mesh, mp_policy=precision, offload_policy=offload)
        if ema is not None:  # never run forward: only its shards are averaged
            fully_shard(ema, mesh=mesh, offload_policy=offload)

    def prepare(self, model, optimizer, schedule) -> tuple:
        self.model, self.optimizer = model, optimizer
        return model, optimizer, self.accelerator.prepare(schedule)

    def fused_optimizer(self) -> torch.optim.Optimizer:
        return self.optimizer

    def full_norm(self, norm: torch.Tensor) -> torch.Tensor:
        return norm.full_tensor() if isinstance(norm, DTensor) else norm

    def save(self, folder: Path):
        self.save_module(self.model, folder / MODEL_FILE)
        state = get_optimizer_state_dict(self.model, self.optimizer)
        for group in state['param_groups']:  # the schedule's device tensors as numbers, as a fresh optimizer has them
            group['lr'] = float(group['lr'])
        dcp.save({'optimizer': state}, checkpoint_id=folder / OPTIMIZER_FOLDER)

    def load(self, folder: Path):
        self.load_module(self.model, folder / MODEL_FILE)
        state = get_optimizer_state_dict(self.model, self.optimizer)
        try:
            dcp.load({'optimizer': state}, checkpoint_id=folder / OPTIMIZER_FOLDER)  # any process count: resharded
        except CheckpointException as error:  # a BaseException carrying each process's failure
            rank, (failure, _) = next(iter(error.failures.items()))
            raise OSError(f'process {rank}: {failure}') from None
        set_optimizer_state_dict(self.model, self.optimizer, state)

    def save_module(self, module: torch.nn.Module, file: Path):
        state = self.full_state(module)
        if self.accelerator.is_main_process:
            save_file({name: tensor.contiguous() for name, tensor in state.items()}, str(file),
                      metadata={'format': 'pt'})

    def load_module(self, module: torch.nn.Module, file: Path):
        set_model_state_dict(module, load_file(str(file)),  # copied onto each parameter's device
                             options=StateDictOptions(full_state_dict=True))

    def full_module(self, module: torch.nn.Module) -> torch.nn.Module:
        full = copy.deepcopy(self.template)
        full.load_state_dict(self.full_state(module), assign=True)
        return full.to(self.accelerator.device).eval().requires_grad_(False)

    def full_state(self, module: torch.nn.Module) -> dict:
        """``module``'s full state dict on every process (a collective when sharded)."""
        return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True))
