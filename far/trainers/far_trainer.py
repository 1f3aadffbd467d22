"""Training FAR: frame-wise flow matching on autoencoder latents, and validation by prediction."""
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional

import torch
from accelerate.utils import broadcast
from diffusers import FlowMatchEulerDiscreteScheduler

from far.evaluation import model_conditions, sample_videos
from far.objectives import FlowMatchingObjective
from far.pipelines import FARPipeline
from far.registry import TRAINERS
from far.trainers.base import CheckpointOptions, LogOptions, LRScheduleOptions, OptimizerOptions, Trainer
from far.trainers.guards import FaultOptions
from far.utils.video import save_videos


@dataclass(frozen=True)
class ValidationOptions:
    """Every ``every`` steps, predict the first ``num_videos`` videos of ``datasets[dataset]`` from their
    first ``context_length`` frames and save them under ``samples/step-<step>/``."""
    every: int = 1000
    num_videos: int = 4
    context_length: int = 2
    unroll_length: int = 14
    num_inference_steps: int = 25
    guidance_scale: float = 1.0
    use_kv_cache: bool = True
    dataset: str = 'val'
    batch_size: int = 8

    def __post_init__(self):
        if min(self.every, self.num_videos, self.unroll_length, self.num_inference_steps, self.batch_size) < 1 \
                or self.context_length < 0:
            raise ValueError(f'validation: every, num_videos, unroll_length, num_inference_steps and batch_size must '
                             f'be >= 1 and context_length >= 0, got {self}')


@TRAINERS.register()
class FARTrainer(Trainer):
    """Trains a FAR model with :class:`FlowMatchingObjective` on the latents of ``autoencoder``.

    Items carry pixels (``'video'``, encoded on the fly) or raw latents (``'latent'``, scaled here), and
    ``'label'``/``'action'`` for conditional models. The loss covers the model's short-term window
    (``short_term_ctx_winsize``), the last frames of each clip. With ``objective.training_type:
    long_context`` every step trains on a clip of random length between that window and the whole video
    (the same length on every rank) at a random start.
    """

    runtime_args = Trainer.runtime_args + ('autoencoder', 'scheduler')

    def __init__(
        self,
        accelerator,
        model: torch.nn.Module,
        autoencoder: torch.nn.Module,
        scheduler: FlowMatchEulerDiscreteScheduler,
        datasets: dict,
        folder: Path,
        seed: int,
        config: dict,
        total_steps: int,
        batch_size: int,
        optimizer: OptimizerOptions = OptimizerOptions(),
        lr_schedule: LRScheduleOptions = LRScheduleOptions(),
        max_grad_norm: Optional[float] = 1.0,
        ema_decay: Optional[float] = 0.9999,
        gradient_checkpointing: bool = False,
        objective: FlowMatchingObjective = FlowMatchingObjective(),
        checkpoint: CheckpointOptions = CheckpointOptions(),
        log: LogOptions = LogOptions(),
        validation: Optional[ValidationOptions] = None,
        num_workers: int = 0,
        fault: FaultOptions = FaultOptions(),
    ):
        super().__init__(accelerator, model, datasets, folder, seed, config, total_steps, batch_size, optimizer,
                         lr_schedule, max_grad_norm, ema_decay, gradient_checkpointing, checkpoint, log, num_workers,
                         validation.every if validation is not None else None, fault=fault)
        if validation is not None and validation.dataset not in datasets:
            raise ValueError(f"validation.dataset '{validation.dataset}' is not among the datasets built: "
                             f"{', '.join(datasets)}")
        if validation is not None and validation.guidance_scale != 1.0 and model.config.condition_cfg is None:
            raise ValueError(f'validation.guidance_scale is {validation.guidance_scale}, but the model is '
                             'unconditional: guidance needs a label- or action-conditioned model; set it to 1.0')
        self.autoencoder = autoencoder.to(accelerator.device).eval().requires_grad_(False)
        self.scheduler, self.objective, self.validation = scheduler, objective, validation
        self.window = model.config.short_term_ctx_winsize

    def _random_clip(self, batch: dict) -> dict:
        """A clip of ``window..T`` frames at a random start, cut from every per-frame field (video or latent,
        action, ...); its length is broadcast so that all ranks agree."""
        frames = batch['video' if 'video' in batch else 'latent'].shape[1]
        if frames < self.window:
            raise ValueError(f'long_context training needs clips of at least short_term_ctx_winsize={self.window} '
                             f'frames, the dataset gives {frames}')
        length = torch.randint(self.window, frames + 1, (1,), device=self.accelerator.device)
        length = int(broadcast(length).item())
        start = int(torch.randint(0, frames - length + 1, (1,)).item())
        return {k: v[:, start:start + length] if torch.is_tensor(v) and v.dim() > 1 else v for k, v in batch.items()}

    def train_step(self, batch: dict, step: int) -> Dict[str, torch.Tensor]:
        if self.objective.training_type == 'long_context':
            batch = self._random_clip(batch)
        with torch.no_grad(), self.accelerator.autocast():
            if 'video' in batch:
                latents = self.autoencoder.encode(batch['video'])
            else:
                latents = self.autoencoder.scale_latents(batch['latent'])
        conditions = model_conditions(self.accelerator.unwrap_model(self.model), batch)
        loss = self.objective(self.model, latents, self.scheduler, self.window, conditions)
        return {'loss': loss}

    def pipeline(self) -> FARPipeline:
        """A sampler of the current sampling weights, with its own scheduler (sampling changes its state)."""
        pipe = FARPipeline(transformer=self.sampling_model, vae=self.autoencoder,
                           scheduler=FlowMatchEulerDiscreteScheduler.from_config(self.scheduler.config))
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def validate(self, step: int):
        opt, acc = self.validation, self.accelerator
        dataset = self.datasets[opt.dataset]
        self.sampling_model.eval()
        with acc.autocast():
            samples, gt = sample_videos(
                self.pipeline(), dataset, range(min(opt.num_videos, len(dataset))), opt.context_length,
                opt.unroll_length, acc, self.seed, batch_size=opt.batch_size,
                num_inference_steps=opt.num_inference_steps, guidance_scale=opt.guidance_scale,
                use_kv_cache=opt.use_kv_cache, name=f'validation at step {step}')
        acc.unwrap_model(self.model).train()
        if acc.is_main_process:
            folder = self.folder / 'samples' / f'step-{step:07d}'
            paths = save_videos(samples, gt, [f'video_{i:04d}' for i in range(len(gt))], folder, opt.context_length)
            if self.wandb is not None:
                import wandb
                self.wandb.log({'val/grid': wandb.Image(str(folder / 'grid.png')),
                                **{f'val/{p.stem}': wandb.Video(str(p), format='mp4') for p in paths}}, step=step)
        acc.wait_for_everyone()
