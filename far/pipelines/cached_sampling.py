"""Cached sampling of the FAR transformers: every frame's keys/values are computed once and kept in the slots of a
preallocated cache (``far.models.kv_cache.SlotKVCache``), eagerly or through compiled passes.

A plan kept on the host lists the cached frames in slot order (FAR-Long's long-term frames first, then the
short-term window). The first denoising step of a new frame also feeds the clean frames not cached yet (the
context, the frame made just before, or the window re-encoded behind a new long-term frame) and keeps their
keys/values; the other steps feed the new frame alone.

* eager: a pass attends to exactly the slots in use, without a mask when no fed token may skip one;
* compiled: the one-frame step and the two-frame step (the frame made just before, then the new one) are
  ``torch.compile``-d with fixed shapes, attending to every slot under a mask from the plan (on CUDA replayed as
  CUDA graphs); the rarer passes (the context, a window slide) run eagerly. A compiled engine is kept per model and
  shape family (:func:`compiled_engine`) and reused by later samplers; a larger batch or a longer video grows it to
  the next power of two. Its passes compile on private copies of their code, so engines never add up to Dynamo's
  recompile limit; a pass that cannot compile (a graph break, a failed CUDA-graph capture, the recompile limit)
  makes its engine run eagerly from then on, with one warning.

For FAR-Long, when the short-term window slides, the frame that leaves it is encoded once into the long-term
slots (multi-level cache) and the window is re-encoded behind it; ``multi_level_cache=False`` re-encodes the
whole context instead (a single-level cache). The result equals uncached sampling up to float rounding: a frame's
keys and values depend only on the frames up to it, however the passes group them.

A stream (``far.pipelines.streaming``) drives an engine of its own frame by frame (``denoise_frame``) and, once the
engine's frames are full, drops the oldest before each new frame (``drop_oldest``).
"""
import logging
import types
import weakref
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional, Tuple

import torch

from ..conditions import Conditions
from ..models.attention import Segment, SlotAttention, frame_ids
from ..models.kv_cache import FrameIndex, select_frames
from ..objectives.flow_matching import CLEAN_TIMESTEP
from ..utils.compile import count_compilations
from .base import guide
from .latent_flow import euler_step

logger = logging.getLogger('far')

Step = Tuple[torch.Tensor, torch.Tensor]  # (timestep, sigma_next - sigma)
BACKEND = 'inductor'  # torch.compile's backend for the compiled passes


@dataclass
class _CompiledPass:
    """A fixed-size pass: its compiled function and the index buffers the plan fills before a call."""
    run: Callable
    frames: torch.Tensor       # [m] frame of each fed frame (the new one last)
    slots: torch.Tensor        # [m * tokens] the slot of each fed token


def _private_code(method: Callable) -> Callable:
    """``method`` on its own copy of its code object: Dynamo keeps compiled entries, and counts them against its
    recompile limit, per code object, which every engine's bound methods would otherwise share."""
    fn = method.__func__
    copy = types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
    return types.MethodType(copy, method.__self__)


def _first_frames(segments: Iterable[Segment], num_frames: int) -> List[Segment]:
    """The segments of the first ``num_frames`` frames of ``segments``."""
    kept = []
    for first, count, tokens in segments:
        if num_frames <= 0:
            break
        kept.append((first, min(count, num_frames), tokens))
        num_frames -= count
    return kept


class CachedFrameSampler:
    """Samples videos of up to ``num_frames`` frames for up to ``batch_size`` videos of ``height x width`` latents.

    Args:
        model: a ``FAR`` or ``FAR_Long`` model (held weakly; the passes take it as an argument).
        guidance_scale: as ``FARSampling`` (> 1: the batch is doubled, ``[unconditional, conditional]``).
        slope: the temporal attention bias of the passes.
        compiled: compile the one- and two-frame steps (``inductor``; on CUDA in ``reduce-overhead`` mode).
    """

    def __init__(self, model, *, batch_size: int, num_frames: int, height: int, width: int, guidance_scale: float,
                 slope: float, compiled: bool = False):
        self._model = weakref.ref(model)
        self.batch_size, self.num_frames, self.height, self.width = batch_size, num_frames, height, width
        self.guidance_scale, self.slope, self.guided = guidance_scale, float(slope), guidance_scale > 1
        self.tokens = model.tokens_per_frame(height, width)
        device = model.device
        self.cache = model.make_slot_cache(2 * batch_size if self.guided else batch_size, num_frames, height, width)
        self.video = torch.zeros(batch_size, num_frames, model.config.in_channels, height, width, device=device)
        self.conditions: Conditions = None
        self.segments: List[Segment] = []  # the cached frames (positions), in slot order
        self.num_long = 0                  # how many leading cached frames are long-term frames
        self.start = 0                     # the video frame at position 0 (sliding window)
        self.fallback: Optional[str] = None  # why the compiled passes run eagerly
        self.warned_cudagraphs = False
        self.passes: Dict[int, _CompiledPass] = {}
        if compiled:
            self.passes = {m: self._compiled_pass(m, device) for m in (1, 2)}
        self._plan_key: Optional[tuple] = None

    @property
    def model(self):
        return self._model()

    @property
    def dtype(self) -> torch.dtype:
        """The dtype keys and values are kept in (the compute dtype when the engine was built)."""
        return self.cache.keys.dtype

    def fits(self, batch_size: int, num_frames: int) -> bool:
        return batch_size <= self.batch_size and num_frames <= self.num_frames

    def _compiled_pass(self, num_frames: int, device: torch.device) -> _CompiledPass:
        mode = 'reduce-overhead' if device.type == 'cuda' and BACKEND == 'inductor' else None
        run = torch.compile(_private_code(self._step), backend=BACKEND, mode=mode, dynamic=False, fullgraph=True)
        step = _CompiledPass(run, torch.zeros(num_frames, dtype=torch.long, device=device),
                             torch.zeros(num_frames * self.tokens, dtype=torch.long, device=device))
        if device.type == 'cuda':
            for tensor in (self.cache.keys, self.cache.values, self.cache.slot_frames, self.video, step.frames,
                           step.slots):
                torch._dynamo.mark_static_address(tensor)  # CUDA graphs may then update them in place
        return step

    # ----- one pass (eager, or compiled with fixed shapes: everything that changes is a tensor) -----

    def _step(self, model, positions: FrameIndex, rows: FrameIndex, x: torch.Tensor, t: torch.Tensor,
              dt: torch.Tensor, num_long: int, attend) -> torch.Tensor:
        """Feed the clean video frames ``rows[:-1]`` and the new frame ``x`` ``[B, C, H, W]`` at timestep ``t``
        (RoPE ``positions``; the first ``num_long`` are long-term frames); return ``x`` after one Euler step.
        ``attend`` is None in a compiled pass: the fed frames attend to every slot, masked by the plan."""
        clean = select_frames(self.video, 1, rows[:-1])
        latents = torch.cat([clean, x[:, None]], dim=1)                             # [B, m, C, H, W]
        if self.guided:
            latents = torch.cat([latents, latents])                                 # [uncond, cond]
        timestep = torch.full(latents.shape[:2], CLEAN_TIMESTEP, device=x.device, dtype=t.dtype)
        timestep[:, -1] = t
        if attend is None:
            attend = SlotAttention(positions.repeat_interleave(self.tokens), self.cache.slot_frames, self.slope)
        velocity = model.forward_cached(latents, timestep, self._frame_conditions(model, rows), cache=self.cache,
                                        frames=positions, attend=attend, num_long_term=num_long)[:, -1]
        if self.guided:
            velocity = guide(velocity, self.guidance_scale)
        return euler_step(x, velocity, dt)

    def _frame_conditions(self, model, rows: FrameIndex) -> Conditions:
        condition = model.condition
        if condition is None or not condition.per_frame:
            return self.conditions
        return {condition.kind: select_frames(self.conditions[condition.kind], 1, rows)}

    # ----- the plan: which frames are cached, which are fed -----

    def _fed_segments(self, first: int, position: int) -> Tuple[List[Segment], int]:
        """The fed positions ``first..position`` as segments (long-term first) and how many are long-term."""
        model = self.model
        num_long = max(model.num_long_term_frames(position + 1) - first, 0)
        segments = [(first, num_long, model.tokens_per_frame(self.height, self.width, long_term=True))] \
            if num_long else []
        return segments + [(first + num_long, position + 1 - first - num_long, self.tokens)], num_long

    def _run(self, first: int, position: int, x: torch.Tensor, t: torch.Tensor, dt: torch.Tensor) -> torch.Tensor:
        """One denoising step of the frame at ``position`` that also feeds (and caches) the clean positions
        ``first..position-1``."""
        fed, num_long = self._fed_segments(first, position)
        cached_tokens = sum(count * tokens for _, count, tokens in self.segments)
        fed_tokens = sum(count * tokens for _, count, tokens in fed)
        if self.passes and self.fallback is None and not num_long and position - first < len(self.passes):
            x = self._run_compiled(fed, cached_tokens, position - first + 1, position, x, t, dt)
        else:
            model = self.model
            self.cache.write, self.cache.visible = slice(cached_tokens, cached_tokens + fed_tokens), \
                cached_tokens + fed_tokens
            attend = model.attention_for(fed, self.segments + fed, x.device, self.slope).prepare(self.dtype)
            rows = range(first + self.start, position + 1 + self.start)
            x = self._step(model, range(first, position + 1), rows, x, t, dt, num_long, attend)
        self.segments += _first_frames(fed, position - first)
        self.num_long += min(position - first, num_long)
        return x

    def _run_compiled(self, fed: List[Segment], cached_tokens: int, num_frames: int, position: int,
                      x: torch.Tensor, t: torch.Tensor, dt: torch.Tensor) -> torch.Tensor:
        step = self.passes[num_frames]
        key = (cached_tokens, num_frames, position)
        if key != self._plan_key:  # the later steps of a frame reuse the buffers of its second step
            step.frames.copy_(torch.arange(position + 1 - num_frames, position + 1), non_blocking=True)
            step.slots.copy_(torch.arange(cached_tokens, cached_tokens + num_frames * self.tokens), non_blocking=True)
            plan = torch.full((self.cache.num_slots,), -1, dtype=torch.long)
            ids = frame_ids(self.segments + fed, torch.device('cpu'))
            plan[:len(ids)] = ids
            self.cache.slot_frames.copy_(plan, non_blocking=True)
            self._plan_key = key
        self.cache.write, self.cache.visible = step.slots, None
        args = (self.model, step.frames, step.frames, x, t, dt, 0, None)
        if self.fallback is None:
            try:
                with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True), count_compilations() as counted:
                    out = step.run(*args)
                self._check_cuda_graphs(counted, x.device)
                return out.clone()  # a CUDA graph overwrites its output at its next replay
            except Exception as error:  # noqa: BLE001 -- any failure to compile falls back to the same pass, eagerly
                reason = str(error).strip().splitlines()[0] if str(error).strip() else ''
                self.fallback = f'{type(error).__name__}: {reason}'[:300]
                logger.warning('compiled sampling runs eagerly from now on for the %dx%d engine of batch %d, '
                               '%d frames: %s', self.height, self.width, self.batch_size, self.num_frames,
                               self.fallback)
        return self._step(*args)

    def _check_cuda_graphs(self, counted: Dict[str, int], device: torch.device):
        if device.type == 'cuda' and counted['cudagraph_skips'] and not self.warned_cudagraphs:
            self.warned_cudagraphs = True
            logger.warning('compiled sampling passes do not run as CUDA graphs (%d skipped graphs): every replay '
                           'launches its kernels one by one', counted['cudagraph_skips'])

    def _keep(self, total: int, multi_level_cache: bool) -> int:
        """Forget the cached frames that no longer hold when the video has ``total`` positions; return how many
        stay (the first fed position)."""
        cached = sum(count for _, count, _ in self.segments)
        if self.model.num_long_term_frames(total) > self.num_long and cached > self.num_long:
            # the window slid: the cached short-term frames must be re-encoded behind the new long-term ones
            cached = self.num_long if multi_level_cache else 0
        self.segments = _first_frames(self.segments, cached)
        self.num_long = min(self.num_long, cached)
        return cached

    # ----- sampling -----

    @torch.no_grad()
    def sample(self, context: Optional[torch.Tensor], noise: torch.Tensor, conditions: Conditions,
               steps: List[Step], *, multi_level_cache: bool = True, context_window: Optional[int] = None,
               progress: Callable = iter) -> torch.Tensor:
        """``[B, Tc + Tg, C, H, W]``: ``context`` (or None) followed by ``Tg`` frames denoised from ``noise``.

        ``conditions`` cover every frame and the guided batch (``[uncond, cond]``); ``steps`` are the Euler steps
        (``far.pipelines.latent_flow.euler_steps``); ``context_window``: each frame sees only the last this-many
        frames, renumbered from 0 (sliding window; eager engines only).
        """
        batch, num_new = noise.shape[:2]
        num_context = 0 if context is None else context.shape[1]
        self.reset(context, conditions)
        for frame in progress(range(num_context, num_context + num_new)):
            start = 0 if context_window is None else max(frame + 1 - context_window, 0)
            if start != self.start:  # the window slid and its frames were renumbered: nothing cached holds
                self.segments, self.num_long, self.start = [], 0, start
            self.denoise_frame(frame - start, noise[:, frame - num_context], steps, multi_level_cache)
        return self.video[:batch, :num_context + num_new].clone()

    def denoise_frame(self, position: int, noise: torch.Tensor, steps: List[Step],
                      multi_level_cache: bool) -> torch.Tensor:
        """The frame at RoPE ``position`` denoised from ``noise`` ``[b, C, H, W]`` over the frames before it, kept in
        the video; returns it ``[batch_size, C, H, W]`` (rows past ``b`` padding)."""
        x = torch.zeros_like(self.video[:, 0])
        x[:noise.shape[0]] = noise
        first = self._keep(position + 1, multi_level_cache)
        for index, (t, dt) in enumerate(steps):
            x = self._run(first if index == 0 else position, position, x, t, dt)
        self.video[:, position + self.start] = x
        return x

    def reset(self, context: Optional[torch.Tensor], conditions: Conditions):
        """Start a video from ``context`` ``[b, Tc, C, H, W]`` (or None) and the guided batch's ``conditions``."""
        self.segments, self.num_long, self.start, self._plan_key = [], 0, 0, None
        self.video.zero_()
        if context is not None:
            self.video[:context.shape[0], :context.shape[1]] = context
        self.conditions = None if conditions is None else {k: self._pad(v) for k, v in conditions.items()}

    def set_frame_conditions(self, position: int, conditions: Conditions):
        """Write the guided batch's per-frame ``conditions`` ``{kind: [R]}`` of the frame at ``position``."""
        for kind, ids in (conditions or {}).items():
            self.conditions[kind][:, position + self.start] = self._pad(ids)

    def drop_oldest(self, count: int):
        """Forget the video's first ``count`` frames: the others move to the front and are renumbered from 0, so
        nothing cached holds (a stream's sliding window)."""
        kept = self.num_frames - count
        self.video[:, :kept] = self.video[:, count:].clone()
        condition = self.model.condition
        if condition is not None and condition.per_frame:
            ids = self.conditions[condition.kind]
            ids[:, :kept] = ids[:, count:].clone()
        self.segments, self.num_long, self.start, self._plan_key = [], 0, 0, None

    def _pad(self, ids: torch.Tensor) -> torch.Tensor:
        """Condition ids of the guided batch padded to the engine's batch (and frames): ``[R]`` or ``[R, F]``."""
        halves = ids.chunk(2) if self.guided else (ids,)
        shape = (self.batch_size, *((self.num_frames,) if ids.ndim == 2 else ()))
        padded = []
        for half in halves:
            full = torch.zeros(shape, dtype=ids.dtype, device=ids.device)
            full[tuple(slice(0, n) for n in half.shape)] = half
            padded.append(full)
        return torch.cat(padded)


_ENGINES: 'weakref.WeakKeyDictionary' = weakref.WeakKeyDictionary()  # model -> {shape family: engine}


def _power_of_two(n: int) -> int:
    return 1 << (n - 1).bit_length()


def compiled_engine(model, *, batch_size: int, num_frames: int, height: int, width: int, guidance_scale: float,
                    slope: float) -> CachedFrameSampler:
    """The model's compiled engine of this shape family (settings, compute dtype, device, latent size) that fits
    the call, grown to the next power of two in batch and frames when it does not (every sampler of the model
    shares it)."""
    family = (float(guidance_scale), float(slope), model.compute_dtype(), str(model.device), height, width)
    engines = _ENGINES.setdefault(model, {})
    engine = engines.get(family)
    if engine is None or not engine.fits(batch_size, num_frames):
        if engine is not None:
            batch_size, num_frames = max(batch_size, engine.batch_size), max(num_frames, engine.num_frames)
        engine = CachedFrameSampler(model, batch_size=_power_of_two(batch_size), num_frames=_power_of_two(num_frames),
                                    height=height, width=width, guidance_scale=guidance_scale, slope=slope,
                                    compiled=True)
        engines[family] = engine
    return engine
