"""The training loop every trainer shares: AdamW, lr schedule, clipping, EMA, checkpoints, logging.

A trainer subclass says what one step computes (``train_step``) and what validation does
(``validate``). Resuming is exact: the data order and every random draw of a batch are functions of
(seed, rank, batch number), and a checkpoint holds the model, optimizer, lr schedule, EMA and RNG states.
"""
import contextlib
import logging
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch
from accelerate.utils import set_seed
from torch.utils.data import DataLoader, IterableDataset

from far.trainers.curves import TrainingCurves
from far.trainers.ema import EMA
from far.trainers.guards import FaultOptions, NonFiniteGuard
from far.trainers.lr_schedule import AppliedStepsSchedule, LRScheduleOptions
from far.trainers.parallel import ParallelOptions
from far.trainers.strategies import build_strategy
from far.utils.checkpoints import load_checkpoint, resume_checkpoint, save_checkpoint
from far.utils.compile import compile_blocks
from far.utils.distributed import StepBatchSampler, seed_for
from far.utils.logger import Progress, setup_wandb

logger = logging.getLogger('far')


@dataclass(frozen=True)
class OptimizerOptions:
    """AdamW. ``decayed_modules``: class names of the modules whose ``weight`` is decayed (minGPT's recipe:
    ``[Linear]``; biases, norms, embeddings and free parameters are not); null decays every parameter."""
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: Tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    decayed_modules: Optional[Tuple[str, ...]] = None

    def parameter_groups(self, model: torch.nn.Module) -> List[dict]:
        """The trained parameters of ``model`` as AdamW groups: decayed, and not decayed (weight decay 0)."""
        if self.decayed_modules is None:
            return [{'params': [p for p in model.parameters() if p.requires_grad]}]
        decayed = {id(module.weight) for module in model.modules()
                   if type(module).__name__ in self.decayed_modules and isinstance(getattr(module, 'weight', None),
                                                                                torch.nn.Parameter)}
        trained = [p for p in model.parameters() if p.requires_grad]
        return [{'params': [p for p in trained if id(p) in decayed]},
                {'params': [p for p in trained if id(p) not in decayed], 'weight_decay': 0.0}]


@dataclass(frozen=True)
class CheckpointOptions:
    every: int = 1000
    keep: Optional[int] = 3  # most recent checkpoints kept; null keeps all

    def __post_init__(self):
        if self.every < 1 or (self.keep is not None and self.keep < 1):
            raise ValueError(f'checkpoint: every must be >= 1 and keep >= 1 or null, got {self.every} and {self.keep}')


@dataclass(frozen=True)
class LogOptions:
    every: int = 10
    use_wandb: bool = False  # WANDB_MODE=offline logs locally
    wandb_project: str = 'far'
    wandb_entity: Optional[str] = None

    def __post_init__(self):
        if self.every < 1:
            raise ValueError(f'log: every must be >= 1, got {self.every}')


class Trainer(ABC):
    """Runs ``total_steps`` optimisation steps of ``batch_size`` items per process on ``datasets['train']``.

    The experiment folder receives ``checkpoints/`` (every ``checkpoint.every`` steps and at the end),
    whatever ``validate`` writes (every ``validation.every`` steps), and the logged values with their picture
    (``metrics.jsonl``, ``training_curves.png``: ``far.trainers.curves``); a run started again resumes from the
    newest checkpoint.

    ``compile``: regional compilation (``torch.compile`` of each transformer block, once for all of them); it pays
    on GPUs and takes minutes to warm up on a CPU. The optimiser is AdamW, fused into one kernel. ``num_workers``:
    the data loader's worker processes; null: 0 on CPU (workers would take the training's cores), else up to
    ``CUDA_WORKERS`` per process, with pinned memory.

    ``parallel``: what each process holds (DDP, or the optimizer state or everything sharded: see
    ``ParallelOptions``).

    ``ema_warmup``: the EMA's decay grows with its updates (see ``EMA``), so that a short run's EMA weights are
    usable; off, it is ``ema_decay`` from the second update on, as in the reference.

    ``gradient_accumulation``: batches per optimisation step; the step's gradient is that of their mean loss (the
    batch of a step: processes x ``batch_size`` x ``gradient_accumulation``), and the ranks exchange gradients at
    its last batch only. Steps (``total_steps``, schedules, checkpoints, logs) count optimisation steps.

    A step waits on the host only at log, checkpoint and validation steps: whether its update is applied is
    decided on the device (``NonFiniteGuard``) and the optimizer, lr schedule and EMA obey that decision there.

    A subclass takes its own options as keyword arguments and hands the rest on (``**options``); the YAML
    validator reads the whole chain of signatures, so the defaults here are the only ones.
    """

    # Built by train.py, not set in the YAML file.
    runtime_args = ('accelerator', 'model', 'datasets', 'folder', 'seed', 'config')
    CUDA_WORKERS = 4  # data loader workers per process on CUDA, when num_workers is null

    def __init__(self, *, accelerator, model: torch.nn.Module, datasets: dict, folder: Path, seed: int,
                 config: dict, total_steps: int, batch_size: int, optimizer: OptimizerOptions = OptimizerOptions(),
                 lr_schedule: LRScheduleOptions = LRScheduleOptions(), max_grad_norm: Optional[float] = 1.0,
                 ema_decay: Optional[float] = 0.9999, ema_warmup: bool = True, gradient_checkpointing: bool = False,
                 checkpoint: CheckpointOptions = CheckpointOptions(), log: LogOptions = LogOptions(),
                 fault: FaultOptions = FaultOptions(), parallel: ParallelOptions = ParallelOptions(),
                 num_workers: Optional[int] = None, compile: bool = False, gradient_accumulation: int = 1,
                 validation=None):
        if 'train' not in datasets:
            raise ValueError("the trainer needs datasets['train']")
        if total_steps < 1 or batch_size < 1 or (num_workers is not None and num_workers < 0):
            raise ValueError(f'need total_steps >= 1, batch_size >= 1 and num_workers >= 0 or null, got {total_steps}, '
                             f'{batch_size} and {num_workers}')
        if gradient_accumulation < 1:
            raise ValueError(f'gradient_accumulation is the number of batches per step (>= 1), got '
                             f'{gradient_accumulation}')
        if ema_decay is not None and not 0.0 <= ema_decay < 1.0:
            raise ValueError(f'ema_decay must be in [0, 1) or null, got {ema_decay}')
        if validation is not None and validation.dataset not in datasets:
            raise ValueError(f"validation.dataset '{validation.dataset}' is not among the datasets built: "
                             f"{', '.join(datasets)}")
        if gradient_checkpointing and not getattr(model, '_supports_gradient_checkpointing', False):
            raise ValueError(f'gradient_checkpointing: {type(model).__name__} does not support it; set it to false')
        self.parallel = build_strategy(parallel, accelerator, model)
        self.accelerator, self.model, self.datasets = accelerator, model, datasets
        self.folder, self.seed, self.config = Path(folder), seed, config
        self.total_steps, self.batch_size, self.num_workers = total_steps, batch_size, num_workers
        self.gradient_accumulation = gradient_accumulation
        self.optimizer_options, self.lr_schedule = optimizer, lr_schedule
        self.max_grad_norm, self.ema_decay, self.ema_warmup = max_grad_norm, ema_decay, ema_warmup
        self.gradient_checkpointing, self.compile = gradient_checkpointing, compile
        self.checkpoint, self.log, self.validation = checkpoint, log, validation
        self.guard = NonFiniteGuard(accelerator, fault.max_nonfinite_steps, self.folder / 'checkpoints')
        self.ema: Optional[EMA] = None
        self.wandb = None
        self.curves = TrainingCurves(self.folder)

    @abstractmethod
    def train_step(self, batch: dict, step: int) -> Dict[str, torch.Tensor]:
        """Scalar tensors to log; ``'loss'`` is optimised."""

    @abstractmethod
    def validate(self, step: int):
        """Sample and save what shows progress (called on every rank)."""

    @property
    def sampling_model(self) -> torch.nn.Module:
        """The weights to sample with: the EMA model when there is one."""
        return self.parallel.full_module(self.ema.module if self.ema is not None
                                         else self.accelerator.unwrap_model(self.model))

    def _train_batches(self, start_step: int):
        """Endless training batches from ``start_step`` on, on the accelerator's device."""
        dataset = self.datasets['train']
        acc = self.accelerator
        loader_args = dict(num_workers=self._loader_workers(), pin_memory=acc.device.type == 'cuda',
                           generator=torch.Generator().manual_seed(self.seed))
        if isinstance(dataset, IterableDataset):  # a stream splits itself over ranks, evenly
            batches = self._stream_batches(dataset, start_step, loader_args)
        else:
            sampler = StepBatchSampler(len(dataset), self.batch_size, acc.num_processes, acc.process_index,
                                       self.seed, start_step)
            batches = iter(DataLoader(dataset, batch_sampler=sampler, **loader_args))
        for batch in batches:
            yield {k: v.to(acc.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}

    def _loader_workers(self) -> int:
        """``num_workers``, or its default for the device (see the class docstring)."""
        if self.num_workers is not None:
            return self.num_workers
        if self.accelerator.device.type != 'cuda':
            return 0
        return min(self.CUDA_WORKERS, (os.cpu_count() or 1) // max(torch.cuda.device_count(), 1))

    def _stream_batches(self, stream, start_step: int, loader_args: dict):
        """A stream's batches from ``start_step`` on. Epoch e of the stream is a function of (seed, e), so a
        resumed epoch continues after the samples each of its readers had yielded."""
        loader = DataLoader(stream, batch_size=self.batch_size, drop_last=True, **loader_args)
        position = stream.resume_point(start_step, batch_size=self.batch_size, num_workers=loader_args['num_workers'])
        while True:
            stream.start_epoch(seed=self.seed, position=position)
            yield from loader
            position = position.following()

    def _setup(self):
        """Optimizer, lr schedule and EMA, prepared by accelerate; resume. Returns (optimizer, schedule, step)."""
        acc, opt = self.accelerator, self.optimizer_options
        model = self.model.to(acc.device)
        if self.gradient_checkpointing:
            model.enable_gradient_checkpointing()
        if self.compile:
            logger.info(f'compiling {compile_blocks(model)} transformer blocks (regional compilation)')
        model.train()
        trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
        if self.ema_decay is not None:
            # Built before prepare(): a copy of the plain module, not of a wrapper.
            self.ema = EMA(model, decay=self.ema_decay, warmup=self.ema_warmup)
        self.parallel.shard(model, self.ema.module if self.ema is not None else None)
        optimizer = self.parallel.optimizer(opt.parameter_groups(model), lr=opt.lr, betas=tuple(opt.betas),
                                            weight_decay=opt.weight_decay, eps=opt.eps)
        schedule = self.lr_schedule.build(optimizer, self.total_steps)
        self.model, optimizer, schedule = self.parallel.prepare(model, optimizer, schedule)
        accumulated = f' x {self.gradient_accumulation} accumulated' if self.gradient_accumulation > 1 else ''
        logger.info(f'model: {trained / 1e6:.2f}M trained parameters; {acc.num_processes} process(es) x batch '
                    f'{self.batch_size}{accumulated}; parallel strategy {self.parallel.options.strategy}')

        step = 0
        latest = resume_checkpoint(acc, self.folder / 'checkpoints')
        if latest is not None:
            step = load_checkpoint(acc, latest, self.ema, self.parallel)
            logger.info(f'resumed from {latest} (step {step})')
        return optimizer, AppliedStepsSchedule(schedule.scheduler, optimizer, total_steps=self.total_steps,
                                               device=acc.device), step

    def fit(self):
        acc = self.accelerator
        optimizer, schedule, step = self._setup()
        if step >= self.total_steps:
            logger.info(f'training already complete ({step}/{self.total_steps} steps)')
            return
        if self.log.use_wandb and acc.is_main_process:
            self.wandb = setup_wandb(self.folder, self.folder.name, self.log.wandb_project, self.log.wandb_entity,
                                     self.config)
        logger.info(f'training from step {step} to {self.total_steps}')
        progress = Progress(self.total_steps, start=step)
        batches = self._train_batches(step * self.gradient_accumulation)
        while step < self.total_steps:
            logs = self._accumulate(batches, step)
            logs['grad_norm'] = self._grad_norm()
            self._update(optimizer, schedule, self.guard.check(step + 1, logs['loss'], logs['grad_norm']))
            step += 1

            last = step == self.total_steps
            log, checkpoint = step % self.log.every == 0 or last, step % self.checkpoint.every == 0 or last
            if log or checkpoint:
                self.guard.review()
            if log:
                self._log(step, logs, schedule.last_lr(), progress(step))
            # Not while updates are skipped: the weights may be what diverged. The final one always.
            if (checkpoint and not self.guard.in_a_row) or last:
                schedule.sync()
                self._save(step)
            if self.validation is not None and (step % self.validation.every == 0 or last):
                self.validate(step)
        if self.wandb is not None:
            self.wandb.finish()

    def _accumulate(self, batches, step: int) -> Dict[str, torch.Tensor]:
        """The gradients of step ``step``'s batches (of their mean loss) and the mean of their logged values."""
        acc, count = self.accelerator, self.gradient_accumulation
        means: Dict[str, torch.Tensor] = {}
        for index in range(step * count, (step + 1) * count):
            # Data augmentation, noise and dropout of a batch depend on its number only: resuming is exact.
            set_seed(seed_for(self.seed, acc.process_index, index))
            last = index == (step + 1) * count - 1
            with contextlib.nullcontext() if last else acc.no_sync(self.model):  # gradients exchanged once
                logs = self.train_step(next(batches), step)
                acc.backward(self.guard.backward_loss(logs['loss']) / count)
            for key, value in logs.items():
                means[key] = means.get(key, 0) + value.detach() / count
        return means

    def _update(self, optimizer, schedule: AppliedStepsSchedule, applied: torch.Tensor):
        """The optimiser, lr schedule and EMA steps, each leaving its state exactly as it was where ``applied`` (a
        bool tensor on the device) is false."""
        # Fused AdamW then skips its update and keeps its step count (what GradScaler uses it for).
        self.parallel.fused_optimizer().found_inf = (~applied).float()
        optimizer.step()
        schedule.advance(applied)
        if self.ema is not None:
            self.ema.update_parameters(self.accelerator.unwrap_model(self.model), applied)
        optimizer.zero_grad(set_to_none=True)

    def _grad_norm(self) -> torch.Tensor:
        """The gradients' total norm, after clipping them to ``max_grad_norm`` when set."""
        if self.max_grad_norm is not None:
            norm = self.accelerator.clip_grad_norm_(self.model.parameters(), self.max_grad_norm)
        else:
            norm = torch.nn.utils.get_total_norm([p.grad for p in self.model.parameters() if p.grad is not None])
        return self.parallel.full_norm(norm)

    def _save(self, step: int):
        """Save a checkpoint of finite weights; non-finite ones stop the run instead."""
        weights = list(self.model.parameters()) + (list(self.ema.parameters()) if self.ema is not None else [])
        self.guard.check_weights(step, weights)
        save_checkpoint(self.accelerator, self.folder / 'checkpoints', step, self.ema, self.checkpoint.keep,
                        self.parallel)

    def _log(self, step: int, logs: Dict[str, torch.Tensor], lr: float, progress: str):
        names = sorted(logs)
        values = self.accelerator.reduce(torch.stack([logs[k].detach().float() for k in names]), 'mean').tolist()
        shown = ' | '.join(f'{k} {v:.4f}' for k, v in zip(names, values))
        skipped = f' | {self.guard.skipped} non-finite steps skipped' if self.guard.skipped else ''
        logger.info(f'step {step}/{self.total_steps} | {shown} | lr {lr:.2e}{skipped} | {progress}')
        scalars = {**{f'train/{k}': v for k, v in zip(names, values)}, 'train/lr': lr}
        self.record(step, scalars, redraw=step == self.total_steps)
        if self.wandb is not None:
            self.wandb.log(scalars, step=step)

    def record(self, step: int, values: Dict[str, float], *, redraw: bool = False):
        """Keep ``values`` in metrics.jsonl and refresh training_curves.png (main process; see ``TrainingCurves``)."""
        if self.accelerator.is_main_process:
            self.curves.record(step, values, redraw=redraw)
