"""Static-shape sampling of the FAR transformers: every pass has the same shapes, so each is compiled once and,
on CUDA, replayed as a captured graph.

The KV cache is a fixed set of slots (``far.models.kv_cache.SlotKVCache``): FAR-Long's long-term frames first,
then the short-term window (every frame, for FAR). A plan kept on the host says which frame lives in which
slot; a pass writes its frames' keys/values into their slots and attends over every slot, masked by frame.
Sampling is made of four passes of fixed size, whatever the length of the video:

* ``denoise``: one Euler step of the new frame (one frame; classifier-free guidance inside);
* ``commit``: a clean frame into its window slot (one frame at timestep -1);
* ``long_term``: a frame that left the window into the long-term slots (coarse patches), with the first frame of
  the window behind it (FAR-Long);
* ``window``: the rest of the clean window re-encoded behind the new long-term frame (W - 2 frames; FAR-Long).

The multi-level and the single-level cache differ only in how many ``long_term`` passes follow a slide. A batch
smaller than the engine's is padded; a longer video or a larger batch builds a larger engine (warm-up). The
result equals the dynamic sampler's up to float rounding: a frame's keys and values depend only on the frames up
to it, however the passes group them.
"""
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import torch

from ..conditions import Conditions
from ..objectives.flow_matching import CLEAN_TIMESTEP


@dataclass
class _Pass:
    """A pass of fixed size: its function (compiled or not) and the index buffers the plan fills before a call."""
    run: Callable
    frames: torch.Tensor       # [m] frame index of each fed frame
    slots: torch.Tensor        # [tokens] the slot of each fed token (long-term tokens first)


class StaticFrameSampler:
    """Samples videos of up to ``num_frames`` frames for up to ``batch_size`` videos with fixed-shape passes.

    Args:
        model: a ``FAR`` or ``FAR_Long`` model (its ``slope_scale`` is read by the passes).
        guidance_scale: as ``FARSampling`` (a constant of the passes).
        backend: ``torch.compile`` backend for the passes (``inductor``; on CUDA in ``reduce-overhead`` mode, i.e.
            captured as CUDA graphs), or ``None`` to run them eagerly.
    """

    def __init__(self, model, *, batch_size: int, num_frames: int, height: int, width: int, guidance_scale: float,
                 backend: Optional[str] = None):
        self.model, self.guidance_scale, self.backend = model, guidance_scale, backend
        self.batch_size, self.num_frames, self.height, self.width = batch_size, num_frames, height, width
        self.guided = guidance_scale > 1
        rows = 2 * batch_size if self.guided else batch_size
        self.window = model.config.short_term_ctx_winsize if model.has_long_term_stream else num_frames
        self.tokens = model.tokens_per_frame(height, width)
        self.long_tokens = model.tokens_per_frame(height, width, long_term=True) if model.has_long_term_stream else 0
        self.short_offset = max(num_frames - self.window, 0) * self.long_tokens  # long-term slots come first
        device = model.device
        self.cache = model.make_slot_cache(rows, num_frames, height, width)
        self.video = torch.zeros(batch_size, num_frames, model.config.in_channels, height, width, device=device)
        self.conditions: Conditions = None
        self.plan = torch.full((self.cache.num_slots,), -1, dtype=torch.long)  # host copy of cache.slot_frames
        if model.has_long_term_stream and self.window < 2:
            raise ValueError('static sampling needs a short-term window of at least 2 frames; use execution: eager')
        compiled, window = self._compiler(backend, device), max(self.window - 2, 1)
        self.passes: Dict[str, _Pass] = {
            'denoise': self._pass(compiled(self._denoise), 1, self.tokens),
            'commit': self._pass(compiled(self._encode), 1, self.tokens),
            'long_term': self._pass(compiled(self._encode_long_term), 2, self.long_tokens + self.tokens),
            'window': self._pass(compiled(self._encode), window, window * self.tokens),
        }
        if device.type == 'cuda':
            for tensor in (self.cache.keys, self.cache.values, self.cache.slot_frames, self.video,
                           *(t for p in self.passes.values() for t in (p.frames, p.slots))):
                torch._dynamo.mark_static_address(tensor)  # CUDA graphs may then update them in place

    @staticmethod
    def _compiler(backend: Optional[str], device: torch.device) -> Callable:
        if backend is None:
            return lambda fn: fn
        mode = 'reduce-overhead' if device.type == 'cuda' and backend == 'inductor' else None
        return lambda fn: torch.compile(fn, backend=backend, mode=mode, dynamic=False, fullgraph=True)

    def _pass(self, run: Callable, num_frames: int, num_tokens: int) -> _Pass:
        device = self.model.device
        return _Pass(run, torch.zeros(num_frames, dtype=torch.long, device=device),
                     torch.zeros(num_tokens, dtype=torch.long, device=device))

    @property
    def dtype(self) -> torch.dtype:
        """The dtype keys and values are kept in (the compute dtype when the engine was built)."""
        return self.cache.keys.dtype

    def fits(self, batch_size: int, num_frames: int, height: int, width: int) -> bool:
        return (batch_size <= self.batch_size and num_frames <= self.num_frames
                and (height, width) == (self.height, self.width))

    # ----- the passes (fixed shapes; everything that changes between calls is a tensor) -----

    def _rows(self, latents: torch.Tensor) -> torch.Tensor:
        """The batch the cache holds: ``[unconditional, conditional]`` under guidance."""
        return torch.cat([latents, latents]) if self.guided else latents

    def _frame_conditions(self, frames: torch.Tensor) -> Conditions:
        condition = self.model.condition
        if condition is None or not condition.per_frame:
            return self.conditions
        return {condition.kind: self.conditions[condition.kind].index_select(1, frames)}

    def _encode(self, frames: torch.Tensor) -> None:
        latents = self._rows(self.video.index_select(1, frames))                 # [R, m, C, H, W]
        timestep = torch.full(latents.shape[:2], CLEAN_TIMESTEP, device=latents.device)
        self.model.forward_slots(latents, timestep, self._frame_conditions(frames), cache=self.cache, frames=frames)

    def _encode_long_term(self, frames: torch.Tensor) -> None:
        latents = self._rows(self.video.index_select(1, frames))                 # [R, 2, C, H, W]: long, short
        timestep = torch.full(latents.shape[:2], CLEAN_TIMESTEP, device=latents.device)
        self.model.forward_slots(latents, timestep, self._frame_conditions(frames), cache=self.cache, frames=frames,
                                 num_long_term=1)

    def _denoise(self, frames: torch.Tensor, x: torch.Tensor, t: torch.Tensor, dt: torch.Tensor) -> torch.Tensor:
        """One Euler step ``x + dt * velocity`` of the new frame ``x [B, C, H, W]`` at timestep ``t``."""
        latents = self._rows(x[:, None])                                         # [R, 1, C, H, W]
        timestep = t.to(latents.device).expand(latents.shape[0], 1)
        velocity = self.model.forward_slots(latents, timestep, self._frame_conditions(frames), cache=self.cache,
                                            frames=frames)[:, 0]
        if self.guided:
            uncond, cond = velocity.chunk(2)
            velocity = uncond + self.guidance_scale * (cond - uncond)
        return x + dt * velocity.float()

    # ----- the plan: which frame lives in which slot -----

    def _short_slots(self, position: int) -> torch.Tensor:
        start = self.short_offset + position * self.tokens
        return torch.arange(start, start + self.tokens)

    def _long_slots(self, frame: int) -> torch.Tensor:
        return torch.arange(frame * self.long_tokens, (frame + 1) * self.long_tokens)

    def _run(self, name: str, frames: List[int], slots: torch.Tensor, *args) -> Optional[torch.Tensor]:
        """Fill the pass's buffers and the cache's frame map from the plan, then run the pass."""
        step = self.passes[name]
        step.frames.copy_(torch.tensor(frames), non_blocking=True)
        step.slots.copy_(slots, non_blocking=True)
        self.cache.slot_frames.copy_(self.plan, non_blocking=True)
        self.cache.write_slots = step.slots
        return step.run(step.frames, *args)

    def _place(self, position: int, frame: int) -> torch.Tensor:
        slots = self._short_slots(position)
        self.plan[slots] = frame
        return slots

    def _commit(self, position: int, frame: int):
        self._run('commit', [frame], self._place(position, frame))

    def _slide(self, num_long: int, first_new_long: int, frame: int, multi_level_cache: bool):
        """The window slid: encode frames ``first_new_long..num_long-1`` as long-term frames (all of them anew
        with a single-level cache) and re-encode the window ``num_long..frame-1`` behind them.

        Each long-term pass also encodes the frame after its long-term frame into the first window slot: the
        last one is the window's first frame; the others are overwritten (and seen by no long-term frame).
        """
        self.plan[self.short_offset:] = -1  # the old window must not be seen by the frames re-encoded now
        for long_frame in range(first_new_long if multi_level_cache else 0, num_long):
            long_slots = self._long_slots(long_frame)
            self.plan[long_slots] = long_frame
            self._run('long_term', [long_frame, long_frame + 1],
                      torch.cat([long_slots, self._place(0, long_frame + 1)]))
        window = list(range(num_long + 1, frame))
        if window:
            slots = torch.cat([self._place(position, f) for position, f in enumerate(window, start=1)])
            self._run('window', window, slots)

    def _prepare(self, frame: int, num_long: int, multi_level_cache: bool) -> int:
        """Cache the clean frames before ``frame`` as the model sees them at ``frame + 1`` frames; returns the
        number of long-term frames."""
        needed = self.model.num_long_term_frames(frame + 1)
        if needed > num_long:
            self._slide(needed, num_long, frame, multi_level_cache)
        return needed

    # ----- sampling -----

    @torch.no_grad()
    def sample(self, context: Optional[torch.Tensor], noise: torch.Tensor, conditions: Conditions,
               timesteps: torch.Tensor, sigmas: torch.Tensor, multi_level_cache: bool = True) -> torch.Tensor:
        """``[B, Tc + Tg, C, H, W]``: ``context`` (or None) followed by ``Tg`` frames denoised from ``noise``.

        ``conditions`` cover every frame and the guided batch (``[uncond, cond]``); ``timesteps``/``sigmas`` are
        the scheduler's after ``set_timesteps``; ``multi_level_cache=False`` re-encodes every long-term frame
        after a slide (the same passes, more of them).
        """
        batch, num_new = noise.shape[:2]
        num_context = 0 if context is None else context.shape[1]
        self._reset(context, conditions)
        num_long = self._prefill(num_context, multi_level_cache)
        steps = [(t, sigmas[i + 1] - sigmas[i]) for i, t in enumerate(timesteps)]
        for frame in range(num_context, num_context + num_new):
            num_long = self._prepare(frame, num_long, multi_level_cache)
            x = torch.zeros_like(self.video[:, 0])
            x[:batch] = noise[:, frame - num_context]
            slots = self._place(frame - num_long, frame)
            for t, dt in steps:
                # a captured graph writes its output in place at its next replay: keep a copy
                x = self._run('denoise', [frame], slots, x, t, dt).clone()
            self.video[:, frame] = x
            if frame + 1 < num_context + num_new and self.model.num_long_term_frames(frame + 2) == num_long:
                self._commit(frame - num_long, frame)  # the next frame sees it where it is (no slide)
        return self.video[:batch, :num_context + num_new].clone()

    def _reset(self, context: Optional[torch.Tensor], conditions: Conditions):
        self.plan.fill_(-1)
        self.video.zero_()
        if context is not None:
            self.video[:context.shape[0], :context.shape[1]] = context
        self.conditions = None if conditions is None else {k: self._pad(v) for k, v in conditions.items()}

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

    def _prefill(self, num_context: int, multi_level_cache: bool) -> int:
        """Cache the context as the first new frame sees it; returns the number of long-term frames."""
        if num_context == 0:
            return 0
        num_long = self.model.num_long_term_frames(num_context + 1)
        if num_long:
            self._slide(num_long, 0, num_context, multi_level_cache)
            return num_long
        for frame in range(num_context):
            self._commit(frame, frame)
        return 0
