"""The training loop every trainer shares: AdamW, lr schedule, clipping, EMA, checkpoints, logging.

A trainer subclass says what one step computes (``train_step``) and what validation does
(``validate``). Resuming is exact: the data order and every random draw of a step are functions of
(seed, rank, step), and a checkpoint holds the model, optimizer, lr schedule, EMA and RNG states.
"""
import itertools
import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Literal, Optional, Tuple

import torch
from accelerate.utils import set_seed
from diffusers.optimization import get_scheduler
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, IterableDataset

from far.utils.checkpoints import latest_checkpoint, load_checkpoint, save_checkpoint
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
class LRScheduleOptions:
    """Linear warmup over ``warmup_steps``, then constant or cosine decay to zero at the last step."""
    name: Literal['constant', 'cosine'] = 'constant'
    warmup_steps: int = 0


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

    The experiment folder receives ``checkpoints/`` (every ``checkpoint.every`` steps and at the end)
    and whatever ``validate`` writes (every ``validation.every`` steps); a run started again resumes from the
    newest checkpoint.

    A subclass takes its own options as keyword arguments and hands the rest on (``**options``); the YAML
    validator reads the whole chain of signatures, so the defaults here are the only ones.
    """

    # Built by train.py, not set in the YAML file.
    runtime_args = ('accelerator', 'model', 'datasets', 'folder', 'seed', 'config')

    def __init__(self, *, accelerator, model: torch.nn.Module, datasets: dict, folder: Path, seed: int,
                 config: dict, total_steps: int, batch_size: int, optimizer: OptimizerOptions = OptimizerOptions(),
                 lr_schedule: LRScheduleOptions = LRScheduleOptions(), max_grad_norm: Optional[float] = 1.0,
                 ema_decay: Optional[float] = 0.9999, gradient_checkpointing: bool = False,
                 checkpoint: CheckpointOptions = CheckpointOptions(), log: LogOptions = LogOptions(),
                 num_workers: int = 0, validation=None):
        if 'train' not in datasets:
            raise ValueError("the trainer needs datasets['train']")
        if total_steps < 1 or batch_size < 1 or num_workers < 0:
            raise ValueError(f'need total_steps >= 1, batch_size >= 1 and num_workers >= 0, got {total_steps}, '
                             f'{batch_size} and {num_workers}')
        if ema_decay is not None and not 0.0 <= ema_decay < 1.0:
            raise ValueError(f'ema_decay must be in [0, 1) or null, got {ema_decay}')
        if validation is not None and validation.dataset not in datasets:
            raise ValueError(f"validation.dataset '{validation.dataset}' is not among the datasets built: "
                             f"{', '.join(datasets)}")
        if gradient_checkpointing and not getattr(model, '_supports_gradient_checkpointing', False):
            raise ValueError(f'gradient_checkpointing: {type(model).__name__} does not support it; set it to false')
        self.accelerator, self.model, self.datasets = accelerator, model, datasets
        self.folder, self.seed, self.config = Path(folder), seed, config
        self.total_steps, self.batch_size, self.num_workers = total_steps, batch_size, num_workers
        self.optimizer_options, self.lr_schedule = optimizer, lr_schedule
        self.max_grad_norm, self.ema_decay = max_grad_norm, ema_decay
        self.gradient_checkpointing = gradient_checkpointing
        self.checkpoint, self.log, self.validation = checkpoint, log, validation
        self.ema: Optional[AveragedModel] = None
        self.wandb = None

    @abstractmethod
    def train_step(self, batch: dict, step: int) -> Dict[str, torch.Tensor]:
        """Scalar tensors to log; ``'loss'`` is optimised."""

    @abstractmethod
    def validate(self, step: int):
        """Sample and save what shows progress (called on every rank)."""

    @property
    def sampling_model(self) -> torch.nn.Module:
        """The weights to sample with: the EMA model when there is one."""
        return self.ema.module if self.ema is not None else self.accelerator.unwrap_model(self.model)

    def _train_batches(self, start_step: int):
        """Endless training batches from ``start_step`` on, on the accelerator's device."""
        dataset = self.datasets['train']
        acc = self.accelerator
        loader_args = dict(num_workers=self.num_workers, pin_memory=acc.device.type == 'cuda',
                           generator=torch.Generator().manual_seed(self.seed))
        if isinstance(dataset, IterableDataset):  # a stream splits itself over ranks, evenly
            loader = DataLoader(dataset, batch_size=self.batch_size, drop_last=True, **loader_args)
            logger.info('the training set is a stream: a resumed run continues with a new pass over it')
            batches = itertools.chain.from_iterable(itertools.repeat(loader))
        else:
            sampler = StepBatchSampler(len(dataset), self.batch_size, acc.num_processes, acc.process_index,
                                       self.seed, start_step)
            batches = iter(DataLoader(dataset, batch_sampler=sampler, **loader_args))
        for batch in batches:
            yield {k: v.to(acc.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}

    def _setup(self):
        """Optimizer, lr schedule and EMA, prepared by accelerate; resume. Returns (optimizer, schedule, step)."""
        acc, opt = self.accelerator, self.optimizer_options
        model = self.model.to(acc.device)
        if self.gradient_checkpointing:
            model.enable_gradient_checkpointing()
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(opt.parameter_groups(model), lr=opt.lr, betas=tuple(opt.betas),
                                      weight_decay=opt.weight_decay, eps=opt.eps)
        schedule = get_scheduler('constant_with_warmup' if self.lr_schedule.name == 'constant' else 'cosine',
                                 optimizer, num_warmup_steps=self.lr_schedule.warmup_steps,
                                 num_training_steps=self.total_steps)
        if self.ema_decay is not None:
            # Built before prepare(): a copy of the plain module, not of a wrapper.
            self.ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(self.ema_decay)).requires_grad_(False)
            self.ema.eval()
        self.model, optimizer, schedule = acc.prepare(model, optimizer, schedule)
        logger.info(f'model: {sum(p.numel() for p in params) / 1e6:.2f}M trained parameters; '
                    f'{acc.num_processes} process(es) x batch {self.batch_size}')

        step = 0
        latest = latest_checkpoint(self.folder / 'checkpoints')
        if latest is not None:
            step = load_checkpoint(acc, latest, self.ema)
            logger.info(f'resumed from {latest} (step {step})')
        return optimizer, schedule, step

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
        batches = self._train_batches(step)
        while step < self.total_steps:
            # Data augmentation, noise and dropout of a step depend on the step only: resuming is exact.
            set_seed(seed_for(self.seed, acc.process_index, step))
            logs = self.train_step(next(batches), step)
            acc.backward(logs['loss'])
            if self.max_grad_norm is not None:
                logs['grad_norm'] = acc.clip_grad_norm_(self.model.parameters(), self.max_grad_norm)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            if self.ema is not None:
                self.ema.update_parameters(acc.unwrap_model(self.model))
            step += 1

            last = step == self.total_steps
            if step % self.log.every == 0 or last:
                self._log(step, logs, schedule.get_last_lr()[0], progress(step))
            if step % self.checkpoint.every == 0 or last:
                save_checkpoint(acc, self.folder / 'checkpoints', step, self.ema, self.checkpoint.keep)
            if self.validation is not None and (step % self.validation.every == 0 or last):
                self.validate(step)
        if self.wandb is not None:
            self.wandb.finish()

    def _log(self, step: int, logs: Dict[str, torch.Tensor], lr: float, progress: str):
        names = sorted(logs)
        values = self.accelerator.reduce(torch.stack([logs[k].detach().float() for k in names]), 'mean').tolist()
        shown = ' | '.join(f'{k} {v:.4f}' for k, v in zip(names, values))
        logger.info(f'step {step}/{self.total_steps} | {shown} | lr {lr:.2e} | {progress}')
        if self.wandb is not None:
            self.wandb.log({**{f'train/{k}': v for k, v in zip(names, values)}, 'train/lr': lr}, step=step)
