"""Streaming generation: a FAR model makes one frame at a time, for as long as the caller wants, in bounded memory.

``stream = sampler.open_stream(context=..., conditions=..., seed=0)`` starts a video (:class:`StreamStart`);
``stream.step(action)`` returns the next frame (:class:`StreamFrame`); ``stream.reset(seed=1)`` starts over.

A stream keeps at most ``max_frames`` frames, the context and the frame being made included, in an engine of its own
(``far.pipelines.cached_sampling.CachedFrameSampler``: its slot KV cache, video and per-frame conditions are
allocated once, for ``max_frames``); once full, every new frame drops the oldest. Plain FAR thus samples with a
sliding window of ``max_frames`` frames; FAR-Long keeps its short-term window and at most
``max_frames - short_term_ctx_winsize`` long-term frames. While the video fits, a stream makes the frames of batch
sampling (``generate_latents`` with the same noise); beyond, those of batch sampling with
``context_window=max_frames``.

Positions are re-based: when the oldest frame is dropped, the kept frames are renumbered from 0, so the model only
ever sees the RoPE positions ``0..max_frames-1`` it was trained on. Keeping them growing would equal this in exact
arithmetic (rotary positions and the temporal bias act through position differences), but positions past 256 collide
when ``reference_dtype_rounding`` rounds them to bf16 and the rotary tables would grow without bound. And a kept
frame's keys depend on the frames before it (deeper layers attend to them), so keys cached while the dropped frame
was visible are not the model's keys of the window: dropping cached keys without recomputing them (a rolling cache)
would sample from something the model never computes. The price: with a full window the first denoising step of a
frame re-encodes the kept frames (FAR-Long re-encodes its short-term window on every slide anyway); the other steps
feed the new frame alone, through the compiled one-frame pass under ``execution: compiled``.

Each stream draws its noise (``[B, C, h, w]`` per frame, in turn) from its own generator and has its own guidance and
engine, so streams of one model do not interfere; ``reset`` reuses the engine (and its compiled passes) when the
batch, frame size, window and guidance stay.
"""
import dataclasses
from dataclasses import dataclass
from typing import NamedTuple, Optional, Union

import torch

from ..conditions import Conditions
from .cached_sampling import CachedFrameSampler
from .latent_flow import euler_steps

LONG_TERM_WINDOWS = 3  # FAR-Long's default long-term memory, in short-term windows


@dataclass(frozen=True)
class StreamStart:
    """How a stream starts: the keywords of ``open_stream`` and ``reset``.

    Args:
        context: ``[B, T, 3, H, W]`` pixels in [0, 1] when the sampler has a vae, else latents ``[B, T, C, h, w]``;
            ``None``: from nothing (then give ``height`` and ``width``). Only its last ``max_frames - 1`` frames
            are kept.
        conditions: ``{'label': [B]}``, or ``{'action': [B, T]}`` (the context frames' actions; ``None`` without
            context), or ``None`` for an unconditional model. The batch is the context's, else the conditions', else 1.
        seed: the stream's noise generator seed.
        guidance_scale: classifier-free guidance (``None``: the sampler's).
        max_frames: the frames the stream keeps, the new one included (``None``: the sampler's ``context_window``,
            else the model's ``short_term_ctx_winsize``, times ``1 + LONG_TERM_WINDOWS`` for FAR-Long).
        height, width: the frame size without context, in pixels (in latents without a vae).
    """
    context: Optional[torch.Tensor] = None
    conditions: Conditions = None
    seed: int = 0
    guidance_scale: Optional[float] = None
    max_frames: Optional[int] = None
    height: Optional[int] = None
    width: Optional[int] = None


class StreamFrame(NamedTuple):
    """A frame of a stream."""
    latent: torch.Tensor            # [B, C, h, w]
    pixels: Optional[torch.Tensor]  # [B, 3, H, W] in [0, 1]; None when the sampler has no vae
    index: int                      # the frame's index in the video, context frames included


def default_max_frames(model) -> int:
    window = model.config.short_term_ctx_winsize
    return window * (1 + LONG_TERM_WINDOWS) if model.has_long_term_stream else window


class FrameStream:
    """A video made frame by frame by ``sampler`` (a ``FARPipeline``), in bounded memory. See the module docs."""

    def __init__(self, sampler, start: StreamStart):
        self.sampler = sampler
        self.engine: Optional[CachedFrameSampler] = None
        self._begin(start)

    def reset(self, **changes) -> None:
        """Start over from the stream's start with ``changes`` (keys of :class:`StreamStart`, e.g. ``seed=1``)."""
        self._begin(dataclasses.replace(self.start, **changes))

    @property
    def max_frames(self) -> int:
        return self.engine.num_frames

    @torch.no_grad()
    def step(self, action: Union[int, torch.Tensor, None] = None) -> StreamFrame:
        """The next frame; ``action``: its action (an id, or ``[B]`` ids) for an action-conditioned model, else None."""
        engine = self.engine
        if self.length == engine.num_frames:
            engine.drop_oldest(1)
            self.length -= 1
        self._write_action(action)
        noise = torch.randn(self.shape, generator=self.generator, device=self.generator.device, dtype=torch.float32)
        latent = engine.denoise_frame(self.length, noise, self.steps, self.options.multi_level_cache)
        self.length += 1
        self.index += 1
        vae = self.sampler.vae
        pixels = None if vae is None else vae.decode(latent[:, None])[:, 0]
        return StreamFrame(latent, pixels, self.index - 1)

    # ----- starting -----

    @torch.no_grad()
    def _begin(self, start: StreamStart):
        sampler, model = self.sampler, self.sampler.transformer
        changes = {} if start.guidance_scale is None else {'guidance_scale': start.guidance_scale}
        options = sampler.options_with(**changes)
        window = next((n for n in (start.max_frames, options.context_window) if n is not None),
                      default_max_frames(model))
        if not isinstance(window, int) or window < 1:
            raise ValueError(f'open_stream: max_frames must be an int >= 1 (frames the stream keeps), got {window}')
        context = self._latent_context(start)
        batch = self._batch_size(start, context)
        height, width = self._latent_size(start, context)
        num_context = 0 if context is None else context.shape[1]
        kept = min(num_context, window - 1)
        context = None if kept == 0 else context[:, num_context - kept:]
        conditions = self._context_conditions(start.conditions, options, batch, num_context, kept)

        slope = sampler.slope(options)
        engine_key = (batch, window, height, width, options.guidance_scale, slope, options.execution)
        if self.engine is None or engine_key != self._engine_key:
            self.engine = CachedFrameSampler(model, batch_size=batch, num_frames=window, height=height, width=width,
                                             guidance_scale=options.guidance_scale, slope=slope,
                                             compiled=options.execution == 'compiled')
            self._engine_key = engine_key
        self.engine.reset(context, conditions)
        self.start, self.options, self.length, self.index = start, options, kept, num_context
        self.shape = (batch, model.config.in_channels, height, width)
        device = model.device
        self.steps = euler_steps(sampler.scheduler, options.num_inference_steps, device)
        self.generator = torch.Generator(device=device).manual_seed(start.seed)

    def _latent_context(self, start: StreamStart) -> Optional[torch.Tensor]:
        if start.context is None:
            return None
        model, vae = self.sampler.transformer, self.sampler.vae
        context = start.context.to(model.device)
        latents = context.float() if vae is None else vae.encode(context)
        channels = model.config.in_channels
        if latents.ndim != 5 or latents.shape[2] != channels:
            what = 'latents [B, T, C, h, w]' if vae is None else 'pixels [B, T, 3, H, W] in [0, 1]'
            raise ValueError(f'open_stream: context must be {what} giving {channels}-channel latents, got '
                             f'{tuple(start.context.shape)}')
        return latents

    @staticmethod
    def _batch_size(start: StreamStart, context: Optional[torch.Tensor]) -> int:
        if context is not None:
            return context.shape[0]
        return next(iter(start.conditions.values())).shape[0] if start.conditions else 1

    def _latent_size(self, start: StreamStart, context: Optional[torch.Tensor]):
        if context is not None:
            return tuple(context.shape[-2:])
        if start.height is None or start.width is None:
            raise ValueError('open_stream without context needs height and width (the frame size, in pixels)')
        vae = self.sampler.vae
        scale = 1 if vae is None else vae.spatial_compression
        return start.height // scale, start.width // scale

    def _context_conditions(self, conditions: Conditions, options, batch: int, num_context: int,
                            kept: int) -> Conditions:
        """The guided batch's conditions of the kept context frames (per-frame ids), or of the video (a label)."""
        sampler, condition = self.sampler, self.sampler.condition
        per_frame = condition is not None and condition.per_frame
        if per_frame and conditions is None and num_context == 0:
            conditions = {condition.kind: torch.zeros(batch, 0, dtype=torch.long)}
        conditions = sampler.guided_conditions(conditions, options, batch, num_context, sampler.transformer.device)
        return sampler.transformer.condition_frames(conditions, num_context - kept) if per_frame else conditions

    def _write_action(self, action: Union[int, torch.Tensor, None]):
        sampler, condition = self.sampler, self.sampler.condition
        if condition is None or not condition.per_frame:
            if action is not None:
                raise ValueError(f'step(action={action}): the model takes no actions '
                                 f'({condition and condition.to_config()}); call step() without one')
            return
        batch = self.shape[0]
        ids = torch.as_tensor(action if action is not None else -1, dtype=torch.long).reshape(-1)
        if ids.numel() not in (1, batch) or ids.min() < 0 or ids.max() >= condition.num_classes:
            raise ValueError(f'step(action={action}): the model is action-conditioned ({condition.to_config()}): '
                             f'give an action id in [0, {condition.num_classes}), or {batch} of them')
        ids = ids.expand(batch).to(sampler.transformer.device)
        guided = sampler.guided_conditions({condition.kind: ids[:, None]}, self.options, batch, 1, ids.device)
        self.engine.set_frame_conditions(self.length, {condition.kind: guided[condition.kind][:, 0]})
