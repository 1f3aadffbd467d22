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
from typing import Dict, List, Optional, Union

import torch
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from diffusers.schedulers import FlowMatchEulerDiscreteScheduler
from diffusers.utils.torch_utils import randn_tensor

from ..models.far import CONDITION_KEYS, FAR, slice_conditions
from ..models.kv_cache import KVCache
from ..registry import PIPELINES


@PIPELINES.register()
class FARPipeline(DiffusionPipeline):
    """Sampler for FAR / FAR-Long.

    Args:
        transformer: a ``FAR`` or ``FAR_Long`` model.
        vae: autoencoder wrapper (``encode`` video [B,T,3,H,W] in [0,1] -> scaled latents, ``decode``
            back), or ``None`` to sample in latent space only (``generate_latents``).
        scheduler: ``FlowMatchEulerDiscreteScheduler``.

    The per-frame progress bar is switched off with ``pipe.set_progress_bar_config(disable=True)``.
    """

    model_cpu_offload_seq = 'transformer->vae'

    def __init__(self, transformer: FAR, vae: Optional[torch.nn.Module],
                 scheduler: FlowMatchEulerDiscreteScheduler):
        super().__init__()
        self.register_modules(transformer=transformer, vae=vae, scheduler=scheduler)

    def _guided_conditions(self, conditions: Optional[Dict[str, torch.Tensor]], guidance_scale: float,
                           batch_size: int, num_frames: int,
                           device: torch.device) -> Optional[Dict[str, torch.Tensor]]:
        """Model conditions for the whole video; with guidance the batch is ``[unconditional, conditional]``.

        ``guidance_scale > 1``: the unconditional half uses the null id (= number of classes/actions);
        ``guidance_scale == -1``: fully unconditional, null ids everywhere.
        """
        cfg = self.transformer.config.condition_cfg
        if cfg is None:
            if conditions is not None or guidance_scale > 1:
                raise ValueError('the transformer is unconditional: pass conditions=None and guidance_scale <= 1')
            return None
        kind = cfg['type']
        shape = (batch_size,) if kind == 'label' else (batch_size, num_frames)
        ids = None if conditions is None else conditions.get(kind)
        if ids is None or tuple(ids.shape) != shape:
            raise ValueError(f"the transformer is {kind}-conditioned: pass conditions={{'{kind}': "
                             f"LongTensor{list(shape)}}} covering context and generated frames, "
                             f"got {None if ids is None else tuple(ids.shape)}")
        ids = ids.to(device)
        null = torch.full_like(ids, cfg[CONDITION_KEYS[kind]])
        if guidance_scale == -1:
            ids = null
        elif guidance_scale > 1:
            ids = torch.cat([null, ids])
        return {kind: ids}

    def _frames_to_keep(self, cache: KVCache, total_frames: int, multi_level_cache: bool) -> int:
        """How many cached frames stay valid when the video grows to ``total_frames`` frames."""
        long_term = self.transformer.num_long_term_frames(total_frames)
        if long_term > cache.num_long_term_frames and cache.num_frames > cache.num_long_term_frames:
            # the window slid: cached short-term frames must be re-encoded behind the new long-term ones
            return cache.num_long_term_frames if multi_level_cache else 0
        return cache.num_frames

    @torch.no_grad()
    def generate_latents(
        self,
        context: Optional[torch.Tensor],
        noise: torch.Tensor,
        conditions: Optional[Dict[str, torch.Tensor]] = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 1.0,
        use_kv_cache: bool = True,
        multi_level_cache: bool = True,
        slope_scale: Optional[float] = None,
        context_window: Optional[int] = None,
    ) -> torch.Tensor:
        """Generate ``Tg`` frames after the context, in latent space.

        Args:
            context: ``[B, Tc, C, H, W]`` clean (scaled) latents, or ``None``.
            noise: ``[B, Tg, C, H, W]``: generated frame i starts from ``noise[:, i]``.
            conditions: ``{'label': [B]}`` or ``{'action': [B, Tc + Tg]}`` (ids of every frame) or ``None``.
            guidance_scale: > 1 classifier-free guidance, 1 none, -1 fully unconditional (null ids).
            use_kv_cache: cache the context's keys/values (same result, much faster).
            multi_level_cache: FAR-Long only: keep long-term frames cached across window slides.
            slope_scale: test-time linear temporal attention bias (overrides ``transformer.slope_scale``).
            context_window: sliding window: the transformer sees only the last ``context_window`` frames, the
                generated one included, numbered from 0 (older frames are dropped). For FAR-Long,
                ``short_term_ctx_winsize`` restricts the model to its short-term window. ``None``: every frame.

        Returns:
            ``[B, Tc + Tg, C, H, W]``: the context followed by the generated frames.
        """
        if context_window is not None and context_window < 1:
            raise ValueError(f'context_window must be >= 1 frame (or None for all), got {context_window}')
        model = self.transformer
        batch, num_new, channels, height, width = noise.shape
        num_context = 0 if context is None else context.shape[1]
        if context is not None and (context.shape[0] != batch or context.shape[2:] != noise.shape[2:]):
            raise ValueError(f'context {tuple(context.shape)} and noise {tuple(noise.shape)} must agree in batch '
                             'size, channels and latent size')
        # the sampled latents stay in float32 whatever precision the transformer runs in
        noise, device, guided = noise.float(), noise.device, guidance_scale > 1
        conditions = self._guided_conditions(conditions, guidance_scale, batch, num_context + num_new, device)

        video = torch.empty(batch, num_context + num_new, channels, height, width, device=device)
        if context is not None:
            video[:, :num_context] = context
        cache = (model.make_kv_cache(2 * batch if guided else batch, num_context + num_new, height, width)
                 if use_kv_cache else None)

        previous_slope = model.slope_scale
        if slope_scale is not None:
            model.slope_scale = slope_scale
        try:
            for index in self.progress_bar(range(num_context, num_context + num_new)):
                start = 0 if context_window is None else max(index + 1 - context_window, 0)
                if start and cache is not None:
                    cache.truncate(0)  # the window slid and its frames were renumbered: nothing cached holds
                video[:, index] = self._denoise_frame(
                    video[:, start:], index - start, noise[:, index - num_context], slice_conditions(conditions, start),
                    num_inference_steps, guidance_scale, cache, multi_level_cache)
        finally:
            model.slope_scale = previous_slope
        return video

    def _denoise_frame(self, video: torch.Tensor, index: int, x: torch.Tensor,
                       conditions: Optional[Dict[str, torch.Tensor]], num_inference_steps: int,
                       guidance_scale: float, cache: Optional[KVCache], multi_level_cache: bool) -> torch.Tensor:
        """Denoise frame ``index`` from noise ``x`` given the clean frames ``video[:, :index]``."""
        guided = guidance_scale > 1
        # clean frames fed at the first step: all of them without a cache, else those not cached yet
        first = 0 if cache is None else self._frames_to_keep(cache, index + 1, multi_level_cache)
        if cache is not None:
            cache.truncate(first)

        self.scheduler.set_timesteps(num_inference_steps, device=x.device)
        for step, t in enumerate(self.scheduler.timesteps):
            start = first if (cache is None or step == 0) else index
            frames = torch.cat([video[:, start:index], x[:, None]], dim=1)
            timestep = torch.full(frames.shape[:2], -1.0, device=x.device, dtype=t.dtype)
            timestep[:, -1] = t
            if guided:
                frames, timestep = torch.cat([frames, frames]), torch.cat([timestep, timestep])
            velocity = self.transformer(
                frames, timestep=timestep, conditions=slice_conditions(conditions, start, index + 1), kv_cache=cache,
                cache_frames=index - start if cache is not None else 0).sample[:, -1]
            if guided:
                uncond, cond = velocity.chunk(2)
                velocity = uncond + guidance_scale * (cond - uncond)
            x = self.scheduler.step(velocity.float(), t, x).prev_sample
        return x

    @torch.no_grad()
    def generate(
        self,
        context_video: Optional[torch.Tensor] = None,
        num_frames: int = 1,
        conditions: Optional[Dict[str, torch.Tensor]] = None,
        generator: Union[torch.Generator, List[torch.Generator], None] = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 1.0,
        use_kv_cache: bool = True,
        multi_level_cache: bool = True,
        slope_scale: Optional[float] = None,
        context_window: Optional[int] = None,
        batch_size: int = 1,
        height: Optional[int] = None,
        width: Optional[int] = None,
    ) -> torch.Tensor:
        """Generate ``num_frames`` frames after ``context_video`` ``[B, Tc, 3, H, W]`` in [0, 1] (or from
        nothing: then give ``batch_size``, ``height`` and ``width`` in pixels).

        Returns the video ``[B, Tc + num_frames, 3, H, W]`` in [0, 1]; its context frames are the
        autoencoder's reconstructions. ``generator`` seeds the noise (one per video, or one for all).
        Other arguments as in :meth:`generate_latents`.
        """
        if self.vae is None:
            raise ValueError('FARPipeline.generate needs a vae; with vae=None use generate_latents')
        if context_video is not None:
            context = self.vae.encode(context_video.to(self.transformer.device))
            batch_size, (latent_height, latent_width) = context.shape[0], context.shape[-2:]
        else:
            if height is None or width is None:
                raise ValueError('FARPipeline.generate without context_video needs height and width (pixels)')
            context = None
            latent_height = height // self.vae.spatial_compression
            latent_width = width // self.vae.spatial_compression
        shape = (batch_size, num_frames, self.transformer.config.in_channels, latent_height, latent_width)
        noise = randn_tensor(shape, generator=generator, device=self.transformer.device, dtype=torch.float32)
        latents = self.generate_latents(
            context, noise, conditions=conditions, num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale, use_kv_cache=use_kv_cache, multi_level_cache=multi_level_cache,
            slope_scale=slope_scale, context_window=context_window)
        return self.vae.decode(latents)

