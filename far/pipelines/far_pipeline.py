"""Frame-by-frame sampler of the FAR transformers: flow-matching Euler steps, classifier-free guidance
and KV caching.

Each new frame starts from its noise and is denoised with ``num_inference_steps`` Euler steps of
diffusers' ``FlowMatchEulerDiscreteScheduler``, attending to the clean frames before it (timestep -1).

With the KV cache, the first step of a new frame also feeds the clean frames that are not cached yet
and keeps their keys/values; the other steps feed the new frame alone, so generating a frame never
recomputes the context. For FAR-Long, when the short-term window slides, the frame that leaves it is
encoded once into the long-term part of the cache (multi-level cache) and the window is re-encoded
behind it; ``multi_level_cache=False`` re-encodes the whole context instead (a single-level cache).

``context_window`` samples with a sliding window instead: each frame sees only the last few frames,
renumbered from 0, e.g. a FAR-Long model restricted to its short-term window (the memory baseline).
"""
from dataclasses import dataclass
from typing import List, Literal, Optional

import torch

from ..conditions import Conditions
from ..models.far import FAR
from ..models.kv_cache import KVCache
from ..objectives.flow_matching import CLEAN_TIMESTEP, FlowMatchSchedule
from ..registry import PIPELINES
from .latent_flow import LatentFlowSampler
from .static_sampling import StaticFrameSampler


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
        execution: ``eager``: the KV cache grows frame by frame (shapes change every frame); ``static``: fixed
            cache slots and masks, so every pass has the same shapes (``far.pipelines.static_sampling``);
            ``compiled``: static, with each pass compiled once by ``torch.compile`` (on CUDA captured as a CUDA
            graph). Static execution needs the KV cache and no ``context_window``; otherwise sampling is eager.
    """
    num_inference_steps: int = 50
    guidance_scale: float = 1.0
    use_kv_cache: bool = True
    multi_level_cache: bool = True
    slope_scale: Optional[float] = None
    context_window: Optional[int] = None
    scheduler: FlowMatchSchedule = FlowMatchSchedule()
    execution: Literal['eager', 'static', 'compiled'] = 'eager'

    def __post_init__(self):
        if self.num_inference_steps < 1:
            raise ValueError(f'num_inference_steps must be >= 1, got {self.num_inference_steps}')
        if self.context_window is not None and self.context_window < 1:
            raise ValueError(f'context_window must be >= 1 frame (or null for all), got {self.context_window}')

    @property
    def guided(self) -> bool:
        return self.guidance_scale > 1

    @property
    def static(self) -> bool:
        """Whether sampling runs the fixed-shape passes (only with the KV cache and the whole context)."""
        return self.execution != 'eager' and self.use_kv_cache and self.context_window is None


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

    def __init__(self, transformer: FAR, vae: Optional[torch.nn.Module] = None, scheduler=None,
                 options: FARSampling = FARSampling()):
        super().__init__(transformer=transformer, vae=vae, scheduler=scheduler, options=options)
        self._engines: List[StaticFrameSampler] = []  # built once per shape family, reused by later calls

    def _frames_to_keep(self, cache: KVCache, total_frames: int, multi_level_cache: bool) -> int:
        """How many cached frames stay valid when the video grows to ``total_frames`` frames."""
        long_term = self.transformer.num_long_term_frames(total_frames)
        if long_term > cache.num_long_term_frames and cache.num_frames > cache.num_long_term_frames:
            # the window slid: cached short-term frames must be re-encoded behind the new long-term ones
            return cache.num_long_term_frames if multi_level_cache else 0
        return cache.num_frames

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
        conditions = self._guided_conditions(conditions, opt, batch, num_context + num_new, device)

        previous_slope = model.slope_scale
        if opt.slope_scale is not None:
            model.slope_scale = opt.slope_scale
        try:
            if opt.static:
                return self._sample_static(context, noise, conditions, opt)
            return self._sample_eager(context, noise, conditions, opt)
        finally:
            model.slope_scale = previous_slope

    def _sample_eager(self, context: Optional[torch.Tensor], noise: torch.Tensor, conditions: Conditions,
                      opt: FARSampling) -> torch.Tensor:
        model = self.transformer
        batch, num_new, channels, height, width = noise.shape
        num_context = 0 if context is None else context.shape[1]
        video = torch.empty(batch, num_context + num_new, channels, height, width, device=noise.device)
        if context is not None:
            video[:, :num_context] = context
        cache = (model.make_kv_cache(2 * batch if opt.guided else batch, num_context + num_new, height, width)
                 if opt.use_kv_cache else None)
        for index in self.progress_bar(range(num_context, num_context + num_new)):
            start = 0 if opt.context_window is None else max(index + 1 - opt.context_window, 0)
            if start and cache is not None:
                cache.truncate(0)  # the window slid and its frames were renumbered: nothing cached holds
            video[:, index] = self._denoise_frame(
                video[:, start:], index - start, noise[:, index - num_context],
                model.condition_frames(conditions, start), opt, cache)
        return video

    def _sample_static(self, context: Optional[torch.Tensor], noise: torch.Tensor, conditions: Conditions,
                       opt: FARSampling) -> torch.Tensor:
        batch, num_new, _, height, width = noise.shape
        engine = self._engine(opt, batch, num_new + (0 if context is None else context.shape[1]), height, width)
        self.scheduler.set_timesteps(opt.num_inference_steps, device=noise.device)
        return engine.sample(context, noise, conditions, self.scheduler.timesteps, self.scheduler.sigmas,
                             multi_level_cache=opt.multi_level_cache)

    def _engine(self, opt: FARSampling, batch: int, num_frames: int, height: int, width: int) -> StaticFrameSampler:
        """The engine for these settings that fits the call, or a new one as large as any before it."""
        model = self.transformer
        dtype = torch.get_autocast_dtype(model.device.type) if torch.is_autocast_enabled(model.device.type) \
            else model.dtype
        backend = 'inductor' if opt.execution == 'compiled' else None
        settings = (opt.guidance_scale, backend, dtype)
        same = [e for e in self._engines if (e.guidance_scale, e.backend, e.dtype) == settings]
        fitting = next((e for e in same if e.fits(batch, num_frames, height, width)), None)
        if fitting is not None:
            return fitting
        engine = StaticFrameSampler(
            model, batch_size=max([batch] + [e.batch_size for e in same]),
            num_frames=max([num_frames] + [e.num_frames for e in same]), height=height, width=width,
            guidance_scale=opt.guidance_scale, backend=backend)
        self._engines = [e for e in self._engines if e not in same] + [engine]
        return engine

    def _denoise_frame(self, video: torch.Tensor, index: int, x: torch.Tensor, conditions: Conditions,
                       opt: FARSampling, cache: Optional[KVCache]) -> torch.Tensor:
        """Denoise frame ``index`` from noise ``x`` given the clean frames ``video[:, :index]``."""
        # clean frames fed at the first step: all of them without a cache, else those not cached yet
        first = 0 if cache is None else self._frames_to_keep(cache, index + 1, opt.multi_level_cache)
        if cache is not None:
            cache.truncate(first)

        self.scheduler.set_timesteps(opt.num_inference_steps, device=x.device)
        for step, t in enumerate(self.scheduler.timesteps):
            start = first if (cache is None or step == 0) else index
            frames = torch.cat([video[:, start:index], x[:, None]], dim=1)      # [B, F, C, H, W]
            timestep = torch.full(frames.shape[:2], CLEAN_TIMESTEP, device=x.device, dtype=t.dtype)
            timestep[:, -1] = t
            if opt.guided:
                frames, timestep = torch.cat([frames, frames]), torch.cat([timestep, timestep])
            velocity = self.transformer(
                frames, timestep=timestep, conditions=self.transformer.condition_frames(conditions, start, index + 1),
                kv_cache=cache, cache_frames=index - start if cache is not None else 0).sample[:, -1]
            if opt.guided:
                uncond, cond = velocity.chunk(2)
                velocity = uncond + opt.guidance_scale * (cond - uncond)
            x = self.scheduler.step(velocity.float(), t, x).prev_sample
        return x
