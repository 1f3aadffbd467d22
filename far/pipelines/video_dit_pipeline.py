"""Window sampler of the video diffusion transformer (``far.models.VideoDiT``): all new frames of a window are
denoised together, with flow-matching Euler steps and classifier-free guidance, next to the context frames,
which stay clean (timestep -1, inpainting-style) and attend to the new frames as these attend to them.

A video longer than ``window`` frames is made window by window: each later window starts from the last
``window_context`` frames made so far, kept clean, and adds ``window - window_context`` new frames, so the
transformer never sees more frames than it was trained on. ``window: null`` denoises the whole video at once.
"""
from dataclasses import dataclass
from typing import List, Optional

import torch

from ..conditions import Conditions
from ..models.video_dit import VideoDiT
from ..objectives.flow_matching import FlowMatchSchedule
from ..registry import PIPELINES
from .latent_flow import LatentFlowSampler


@dataclass(frozen=True)
class VideoDiTSampling:
    """How :class:`VideoDiTPipeline` samples: the keys of a ``sampler: {type: VideoDiTPipeline, ...}`` YAML block.

    Args:
        num_inference_steps: Euler steps per window.
        guidance_scale: > 1 classifier-free guidance, 1 none, -1 fully unconditional (null ids everywhere).
        window: the most frames the transformer sees at once, context included (e.g. the training clip
            length); ``None``: the whole video at once.
        window_context: clean frames each later window starts from (``None``: as many as the call's context
            frames, at least 1); fewer than ``window``.
        scheduler: the flow-matching noise schedule stepped along (``num_train_timesteps`` as in training).
    """
    num_inference_steps: int = 50
    guidance_scale: float = 1.0
    window: Optional[int] = None
    window_context: Optional[int] = None
    scheduler: FlowMatchSchedule = FlowMatchSchedule()

    def __post_init__(self):
        if self.num_inference_steps < 1:
            raise ValueError(f'num_inference_steps must be >= 1, got {self.num_inference_steps}')
        if self.window is not None and self.window < 2:
            raise ValueError(f'window must be >= 2 frames (context and new frames) or null, got {self.window}')
        too_long = self.window is not None and self.window_context is not None and self.window_context >= self.window
        if too_long or (self.window_context is not None and self.window_context < 1):
            raise ValueError(f'window_context must be >= 1 and smaller than window ({self.window}), '
                             f'got {self.window_context}')

    @property
    def guided(self) -> bool:
        return self.guidance_scale > 1


@PIPELINES.register()
class VideoDiTPipeline(LatentFlowSampler):
    """Sampler for ``VideoDiT``.

    Args:
        transformer: a ``VideoDiT`` model.
        vae: autoencoder wrapper (``encode`` video [B,T,3,H,W] in [0,1] -> scaled latents, ``decode`` back), or
            ``None`` to sample latents only (``generate_latents``).
        scheduler: a diffusers flow-matching scheduler; by default built from ``options.scheduler``.
        options: :class:`VideoDiTSampling`; every generate call may change some of them.
    """

    model_families = ('VideoDiT',)
    options_class = VideoDiTSampling

    def __init__(self, transformer: VideoDiT, vae: Optional[torch.nn.Module] = None, scheduler=None,
                 options: VideoDiTSampling = VideoDiTSampling()):
        super().__init__(transformer=transformer, vae=vae, scheduler=scheduler, options=options)

    @staticmethod
    def windows(num_context: int, total: int, opt: VideoDiTSampling) -> List[tuple]:
        """``(first, start, end)`` of every pass: frames ``first:start`` are its clean context, ``start:end`` new."""
        window = opt.window or total
        keep = opt.window_context or max(num_context, 1)
        passes, start = [], num_context
        while start < total:
            context = min(start, window - 1, num_context if start == num_context else keep)
            end = min(total, start - context + window)
            passes.append((start - context, start, end))
            start = end
        return passes

    @torch.no_grad()
    def generate_latents(self, context: Optional[torch.Tensor], noise: torch.Tensor, conditions: Conditions = None,
                         **options) -> torch.Tensor:
        """The context followed by ``Tg`` frames generated window by window from ``noise`` (as
        :meth:`LatentFlowSampler.generate_latents`); ``conditions`` cover every frame; ``options``:
        :class:`VideoDiTSampling` settings for this call."""
        opt = self.options_with(**options)
        batch, num_new = noise.shape[:2]
        num_context = 0 if context is None else context.shape[1]
        if context is not None and (context.shape[0] != batch or context.shape[2:] != noise.shape[2:]):
            raise ValueError(f'context {tuple(context.shape)} and noise {tuple(noise.shape)} must agree in batch '
                             'size, channels and latent size')
        video = torch.cat([context.float(), noise.float()], 1) if context is not None else noise.float()
        conditions = self.guided_conditions(conditions, opt, batch, num_context + num_new, noise.device)
        for first, start, end in self.progress_bar(self.windows(num_context, num_context + num_new, opt)):
            video[:, start:end] = self.denoise(
                video[:, first:start], video[:, start:end], self.transformer.condition_frames(conditions, first, end),
                opt)
        return video
