"""Frame-by-frame sampler of the FAR transformers: flow-matching Euler steps, classifier-free guidance and KV
caching.

Each new frame starts from its noise and is denoised with ``num_inference_steps`` Euler steps of the noise schedule
(``FlowMatchEulerDiscreteScheduler``), attending to the clean frames before it (timestep -1). With the KV cache
(``far.pipelines.cached_sampling``) no frame's keys/values are computed twice; without it every step feeds the
whole video (the reference's uncached sampler).

``context_window`` samples with a sliding window instead: each frame sees only the last few frames, renumbered
from 0, e.g. a FAR-Long model restricted to its short-term window (the memory baseline).
"""
from dataclasses import dataclass
from typing import Literal, Optional

import torch

from ..conditions import Conditions
from ..objectives.flow_matching import FlowMatchSchedule
from ..registry import PIPELINES
from .cached_sampling import CachedFrameSampler, compiled_engine
from .latent_flow import LatentFlowSampler, euler_steps
from .streaming import FrameStream, StreamStart


@dataclass(frozen=True)
class FARSampling:
    """How :class:`FARPipeline` samples: the keys of a ``sampler: {type: FARPipeline, ...}`` YAML block.

    Args:
        num_inference_steps: Euler steps per frame (the paper: 50).
        guidance_scale: > 1 classifier-free guidance, 1 none, -1 fully unconditional (null ids everywhere).
        use_kv_cache: cache the context's keys/values (same result, much faster).
        multi_level_cache: FAR-Long only: keep long-term frames cached across window slides.
        slope_scale: test-time linear temporal attention bias (``None``: the model's ``slope_scale``).
        context_window: sliding window: the transformer sees only the last ``context_window`` frames, the
            generated one included, numbered from 0 (older frames are dropped). For FAR-Long,
            ``short_term_ctx_winsize`` restricts the model to its short-term window. ``None``: every frame.
        scheduler: the flow-matching noise schedule stepped along (``num_train_timesteps`` as in training).
        execution: ``eager`` runs the cached passes as they are; ``compiled`` compiles the per-step ones with
            ``torch.compile`` (on CUDA replayed as CUDA graphs), for the KV cache over the whole context.
    """
    num_inference_steps: int = 50
    guidance_scale: float = 1.0
    use_kv_cache: bool = True
    multi_level_cache: bool = True
    slope_scale: Optional[float] = None
    context_window: Optional[int] = None
    scheduler: FlowMatchSchedule = FlowMatchSchedule()
    execution: Literal['eager', 'compiled'] = 'eager'

    def __post_init__(self):
        if self.num_inference_steps < 1:
            raise ValueError(f'num_inference_steps must be >= 1, got {self.num_inference_steps}')
        if self.context_window is not None and self.context_window < 1:
            raise ValueError(f'context_window must be >= 1 frame (or null for all), got {self.context_window}')
        if self.execution not in ('eager', 'compiled'):
            raise ValueError(f"execution must be 'eager' or 'compiled' (the KV cache always has fixed slots), got "
                             f"'{self.execution}'")
        if self.execution == 'compiled' and (not self.use_kv_cache or self.context_window is not None):
            raise ValueError('execution: compiled compiles the KV-cached passes over the whole context: it needs '
                             'use_kv_cache: true and no context_window (use execution: eager)')

    @property
    def guided(self) -> bool:
        return self.guidance_scale > 1


@PIPELINES.register()
class FARPipeline(LatentFlowSampler):
    """Sampler for FAR / FAR-Long.

    Args:
        transformer: a ``FAR`` or ``FAR_Long`` model.
        vae: autoencoder wrapper (``encode`` video [B,T,3,H,W] in [0,1] -> scaled latents, ``decode``
            back), or ``None`` to sample in latent space only (``generate_latents``).
        scheduler: a diffusers flow-matching scheduler; by default built from ``options.scheduler``.
        options: :class:`FARSampling`; every generate call may change some of them (``num_inference_steps=10``).

    The per-frame progress bar is switched off with ``pipe.set_progress_bar_config(disable=True)``.
    """

    model_families = ('FAR',)
    options_class = FARSampling

    @torch.no_grad()
    def generate_latents(self, context: Optional[torch.Tensor], noise: torch.Tensor, conditions: Conditions = None,
                         **options) -> torch.Tensor:
        """Generate ``Tg`` frames after the context, in latent space.

        Args:
            context: ``[B, Tc, C, H, W]`` clean (scaled) latents, or ``None``.
            noise: ``[B, Tg, C, H, W]``: generated frame i starts from ``noise[:, i]``.
            conditions: ``{'label': [B]}`` or ``{'action': [B, Tc + Tg]}`` (ids of every frame) or ``None``.
            options: :class:`FARSampling` settings for this call (the pipeline's ``options`` otherwise).

        Returns:
            ``[B, Tc + Tg, C, H, W]``: the context followed by the generated frames.
        """
        opt = self.options_with(**options)
        model = self.transformer
        batch, num_new = noise.shape[:2]
        num_context = 0 if context is None else context.shape[1]
        if context is not None and (context.shape[0] != batch or context.shape[2:] != noise.shape[2:]):
            raise ValueError(f'context {tuple(context.shape)} and noise {tuple(noise.shape)} must agree in batch '
                             'size, channels and latent size')
        # the sampled latents stay in float32 whatever precision the transformer runs in
        noise, device = noise.float(), noise.device
        conditions = self.guided_conditions(conditions, opt, batch, num_context + num_new, device)

        if not opt.use_kv_cache:
            return self._sample_uncached(context, noise, conditions, opt)
        batch, num_new, _, height, width = noise.shape
        sizes = dict(batch_size=batch, num_frames=num_context + num_new, height=height, width=width,
                     guidance_scale=opt.guidance_scale, slope=self.slope(opt))
        engine = compiled_engine(model, **sizes) if opt.execution == 'compiled' else CachedFrameSampler(model, **sizes)
        return engine.sample(context, noise, conditions, euler_steps(self.scheduler, opt.num_inference_steps, device),
                             multi_level_cache=opt.multi_level_cache, context_window=opt.context_window,
                             progress=self.progress_bar)

    def open_stream(self, **start) -> FrameStream:
        """A video made frame by frame in bounded memory (``far.pipelines.streaming``): ``start`` holds the keys of
        :class:`StreamStart` (``context``, ``conditions``, ``seed``, ``guidance_scale``, ``max_frames``, ...);
        ``stream.step(action)`` makes the next frame. It samples with the KV cache whatever ``use_kv_cache`` says."""
        return FrameStream(self, StreamStart(**start))

    def slope(self, options: FARSampling) -> float:
        """The temporal attention bias sampling with ``options`` uses."""
        return self.transformer.slope_scale if options.slope_scale is None else options.slope_scale

    def _sample_uncached(self, context: Optional[torch.Tensor], noise: torch.Tensor, conditions: Conditions,
                         opt: FARSampling) -> torch.Tensor:
        """Every denoising step feeds the whole video (or its ``context_window`` last frames)."""
        model = self.transformer
        num_context = 0 if context is None else context.shape[1]
        video = noise.new_empty(noise.shape[0], num_context + noise.shape[1], *noise.shape[2:])
        if context is not None:
            video[:, :num_context] = context
        for index in self.progress_bar(range(num_context, video.shape[1])):
            start = 0 if opt.context_window is None else max(index + 1 - opt.context_window, 0)
            video[:, index:index + 1] = self.denoise(
                video[:, start:index], noise[:, index - num_context, None],
                model.condition_frames(conditions, start, index + 1), opt)
        return video

    def forward_uncached(self, frames: torch.Tensor, timestep: torch.Tensor, conditions: Conditions,
                         options: FARSampling) -> torch.Tensor:
        return self.transformer(frames, timestep=timestep, conditions=conditions,
                                slope_scale=options.slope_scale).sample
