"""Trainers of generative video models: validation by prediction through the model's sampler.

Every ``validation.every`` steps the sampler of ``validation.sampler`` (any registered sampler) predicts the
first ``num_videos`` videos of ``datasets[validation.dataset]`` from their first ``context_length`` frames with
the sampling (EMA) weights; the videos go to ``samples/step-<step>/``, with a grid of the first
``num_grid_videos`` (and to wandb when it is on).
"""
from dataclasses import dataclass
from typing import Optional

import torch

from far.evaluation import SamplingOptions, refresh_sampling_copy, row_label, sample_videos, sampling_dtype
from far.grids import save_grid
from far.pipelines import VideoSampler, build_sampler
from far.trainers.base import Trainer
from far.video import save_videos


@dataclass(frozen=True, kw_only=True)
class ValidationOptions(SamplingOptions):
    """``trainer.validation``: a sampler block, the dataset and how many videos to predict, how often."""
    every: int = 1000
    num_videos: int = 4
    context_length: int = 2
    unroll_length: int = 14

    def __post_init__(self):
        super().__post_init__()
        if min(self.every, self.num_videos, self.unroll_length) < 1 or self.context_length < 0:
            raise ValueError(f'validation: every, num_videos and unroll_length must be >= 1 and context_length >= 0, '
                             f'got {self.every}, {self.num_videos}, {self.unroll_length} and {self.context_length}')


class GenerativeTrainer(Trainer):
    """A trainer whose model is sampled through a sampler, with a frozen ``autoencoder`` between pixels and the
    model's inputs (latents, tokens). Subclasses say what one step computes."""

    runtime_args = Trainer.runtime_args + ('autoencoder',)

    def __init__(self, *, autoencoder: torch.nn.Module, validation: Optional[ValidationOptions] = None, **options):
        super().__init__(validation=validation, **options)
        self.autoencoder = autoencoder.to(self.accelerator.device).eval().requires_grad_(False)
        self._sampling_copy: Optional[torch.nn.Module] = None

    def sampling_weights(self) -> torch.nn.Module:
        """The sampling (EMA) weights as validation samples them: under bf16/fp16 mixed precision, one persistent
        copy in that dtype, refreshed in place before each validation (cast once per validation, not per pass)."""
        precision = self.accelerator.mixed_precision
        dtype = sampling_dtype(precision)
        if dtype is None or next(self.sampling_model.parameters()).dtype == dtype:
            return self.sampling_model
        self._sampling_copy = refresh_sampling_copy(self.sampling_model, self._sampling_copy, precision)
        return self._sampling_copy

    def sampler(self) -> VideoSampler:
        """A sampler of the current sampling weights (a new one each time: sampling changes a scheduler's state)."""
        sampler = build_sampler(self.validation.sampler, model=self.sampling_weights(), autoencoder=self.autoencoder)
        sampler.set_progress_bar_config(disable=True)
        return sampler

    def validate(self, step: int):
        opt, acc = self.validation, self.accelerator
        dataset = self.datasets[opt.dataset]
        self.sampling_model.eval()
        with acc.autocast():
            samples, gt = sample_videos(
                self.sampler(), dataset, range(min(opt.num_videos, len(dataset))), context_length=opt.context_length,
                unroll_length=opt.unroll_length, accelerator=acc, seed=self.seed, batch_size=opt.batch_size,
                name=f'validation at step {step}')
        acc.unwrap_model(self.model).train()
        if acc.is_main_process:
            folder = self.folder / 'samples' / f'step-{step:07d}'
            names = [f'video_{i:04d}' for i in range(len(gt))]
            paths = save_videos(samples, gt, names, folder, opt.context_length)
            save_grid({'ground truth': gt, row_label(''): samples[:, 0]}, folder, names=names,
                      context_length=opt.context_length, num_videos=opt.num_grid_videos)
            if self.wandb is not None:
                import wandb
                self.wandb.log({'val/grid': wandb.Image(str(folder / 'grid.png')),
                                **{f'val/{p.stem}': wandb.Video(str(p), format='mp4') for p in paths}}, step=step)
        acc.wait_for_everyone()
