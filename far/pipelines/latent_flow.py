"""What the flow-matching samplers of latent frames share (FAR's frame-by-frame sampler, the Video DiT's window
sampler): their modules and settings, the condition ids of a guided batch, and pixels in and out through the
autoencoder, and the Euler update. A subclass declares ``model_families`` and ``options_class`` (a dataclass with
``guidance_scale``, ``guided`` and ``scheduler``) and implements ``generate_latents``.
"""
import abc
from typing import List, Optional, Sequence, Tuple, Union

import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from diffusers.utils.torch_utils import randn_tensor

from ..conditions import Condition, Conditions
from ..models.autoencoders import LATENT_FAMILIES
from ..objectives.flow_matching import CLEAN_TIMESTEP
from .base import VideoSampler, guide


def euler_step(sample: torch.Tensor, velocity: torch.Tensor, dt: torch.Tensor) -> torch.Tensor:
    """One Euler step of the flow ``x + (sigma_next - sigma) * v`` (``dt = sigma_next - sigma``), in float32."""
    return sample + dt * velocity.float()


def euler_steps(scheduler, num_inference_steps: int, device: torch.device) -> List[Tuple[torch.Tensor, torch.Tensor]]:
    """``(timestep, sigma_next - sigma)`` of every step of ``scheduler``, whose step must be :func:`euler_step`."""
    if not isinstance(scheduler, FlowMatchEulerDiscreteScheduler) or scheduler.config.stochastic_sampling:
        raise ValueError(f'the FAR samplers step x + (sigma_next - sigma) * velocity: they need a deterministic '
                         f'FlowMatchEulerDiscreteScheduler, got {type(scheduler).__name__}')
    scheduler.set_timesteps(num_inference_steps, device=device)
    sigmas = scheduler.sigmas
    return [(t, sigmas[i + 1] - sigmas[i]) for i, t in enumerate(scheduler.timesteps)]


class LatentFlowSampler(DiffusionPipeline, VideoSampler):
    """A diffusers pipeline over ``transformer`` (sampled) and ``vae`` (``encode`` video ``[B, T, 3, H, W]`` in [0, 1]
    -> scaled latents, ``decode`` back; ``None`` to sample latents only). ``scheduler``: a diffusers flow-matching
    scheduler, by default built from ``options.scheduler``; ``options``: an ``options_class`` instance (its
    defaults when ``None``), which every generate call may change in part."""

    model_cpu_offload_seq = 'transformer->vae'
    autoencoder_families = LATENT_FAMILIES

    def __init__(self, transformer: torch.nn.Module, vae: Optional[torch.nn.Module] = None, scheduler=None,
                 options=None):
        super().__init__()
        options = self.options_class() if options is None else options
        family = getattr(transformer, 'family', None)
        if family not in self.model_families:
            raise ValueError(f'{type(self).__name__} samples {" or ".join(self.model_families)} models, got a '
                             f'{type(transformer).__name__} (family {family})')
        if options.guidance_scale != 1 and transformer.condition is None:
            raise ValueError(f'guidance_scale is {options.guidance_scale}, but the transformer is unconditional: '
                             'guidance needs a label- or action-conditioned model; set it to 1')
        self.register_modules(transformer=transformer, vae=vae,
                              scheduler=scheduler if scheduler is not None else options.scheduler.build())
        self.options = options

    @property
    def condition(self) -> Optional[Condition]:
        return self.transformer.condition

    def replace(self, **options) -> 'LatentFlowSampler':
        pipe = type(self)(transformer=self.transformer, vae=self.vae, scheduler=self.scheduler,
                          options=self.options_with(**options))
        pipe.set_progress_bar_config(**getattr(self, '_progress_bar_config', {}))
        return pipe

    def guided_conditions(self, conditions: Conditions, options, batch_size: int, num_frames: int,
                           device: torch.device) -> Conditions:
        """Model conditions for the whole video; with guidance the batch is ``[unconditional, conditional]``."""
        condition = self.condition
        if condition is None:
            if conditions is not None or options.guided:
                raise ValueError('the transformer is unconditional: pass conditions=None and guidance_scale <= 1')
            return None
        ids = condition.check(conditions, batch_size, num_frames,
                              'the transformer (conditions must cover context and generated frames)').to(device)
        if options.guidance_scale == -1:
            ids = condition.null(ids)
        elif options.guided:
            ids = torch.cat([condition.null(ids), ids])
        return {condition.kind: ids}

    def denoise(self, clean: torch.Tensor, x: torch.Tensor, conditions: Conditions, options) -> torch.Tensor:
        """The new frames ``x`` (noise ``[B, n, C, H, W]``) denoised beside the clean frames ``clean``
        ``[B, m, C, H, W]`` (timestep -1), the whole clip fed at every step (no cache). ``conditions`` cover the
        ``m + n`` frames (the guided batch under guidance)."""
        num_clean = clean.shape[1]
        for t, dt in euler_steps(self.scheduler, options.num_inference_steps, x.device):
            frames = torch.cat([clean, x], dim=1)                                  # [B, m + n, C, H, W]
            timestep = torch.full(frames.shape[:2], CLEAN_TIMESTEP, device=x.device, dtype=t.dtype)
            timestep[:, num_clean:] = t
            if options.guided:
                frames, timestep = torch.cat([frames, frames]), torch.cat([timestep, timestep])
            velocity = self.forward_uncached(frames, timestep, conditions, options)[:, num_clean:]
            if options.guided:
                velocity = guide(velocity, options.guidance_scale)
            x = euler_step(x, velocity, dt)
        return x

    def forward_uncached(self, frames: torch.Tensor, timestep: torch.Tensor, conditions: Conditions,
                         options) -> torch.Tensor:
        """The transformer's velocity of every frame of ``frames`` (a sampler may add settings of its own)."""
        return self.transformer(frames, timestep=timestep, conditions=conditions).sample

    @abc.abstractmethod
    def generate_latents(self, context: Optional[torch.Tensor], noise: torch.Tensor, conditions: Conditions = None,
                         **options) -> torch.Tensor:
        """``[B, Tc + Tg, C, H, W]``: the clean latents ``context`` (``[B, Tc, C, H, W]`` or ``None``) followed by
        ``Tg`` frames generated from ``noise`` ``[B, Tg, C, H, W]``."""

    @torch.no_grad()
    def generate(self, context_video: Optional[torch.Tensor] = None, num_frames: int = 1,
                 conditions: Conditions = None,
                 generator: Union[torch.Generator, List[torch.Generator], None] = None, batch_size: int = 1,
                 height: Optional[int] = None, width: Optional[int] = None, **options) -> torch.Tensor:
        """Generate ``num_frames`` frames after ``context_video`` ``[B, Tc, 3, H, W]`` in [0, 1] (or from
        nothing: then give ``batch_size``, ``height`` and ``width`` in pixels).

        Returns the video ``[B, Tc + num_frames, 3, H, W]`` in [0, 1]; its context frames are the
        autoencoder's reconstructions. ``generator`` seeds the noise (one per video, or one for all).
        ``options``: settings of ``options_class`` for this call.
        """
        name = type(self).__name__
        if self.vae is None:
            raise ValueError(f'{name}.generate needs a vae; with vae=None use generate_latents')
        if context_video is not None:
            context = self.vae.encode(context_video.to(self.transformer.device))
            batch_size, (latent_height, latent_width) = context.shape[0], context.shape[-2:]
        else:
            if height is None or width is None:
                raise ValueError(f'{name}.generate without context_video needs height and width (pixels)')
            context = None
            latent_height = height // self.vae.spatial_compression
            latent_width = width // self.vae.spatial_compression
        shape = (batch_size, num_frames, self.transformer.config.in_channels, latent_height, latent_width)
        noise = randn_tensor(shape, generator=generator, device=self.transformer.device, dtype=torch.float32)
        return self.vae.decode(self.generate_latents(context, noise, conditions, **options))

    def predict(self, *, context: Optional[torch.Tensor], num_frames: int, conditions: Conditions,
                generators: Sequence[torch.Generator], height: int, width: int) -> torch.Tensor:
        return self.generate(context_video=context, num_frames=num_frames, conditions=conditions,
                             generator=list(generators), batch_size=len(generators), height=height, width=width)
