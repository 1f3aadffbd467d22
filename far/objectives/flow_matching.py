"""Frame-wise flow matching, the objective FAR is trained with.

Every frame gets its own timestep, drawn from a density over the scheduler's training timesteps, and is
noised as ``x_t = (1 - sigma) * x0 + sigma * noise``; the model predicts the velocity ``noise - x0`` for
every frame at once under a frame-causal mask. A random share of the frames is kept clean instead and
tagged with timestep -1: they act as clean context for the later frames, which is how the model learns
to condition on clean history at no extra cost, and they are left out of the loss.
"""
import abc
import functools
from dataclasses import dataclass
from typing import Literal, NamedTuple, Optional

import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.training_utils import compute_density_for_timestep_sampling

from ..conditions import Conditions

CLEAN_TIMESTEP = -1.0  # the timestep that marks a clean context frame, in training and in sampling


@dataclass(frozen=True)
class FlowMatchSchedule:
    """The noise schedule of diffusers' ``FlowMatchEulerDiscreteScheduler``: timestep ``t = 1000 * s`` has noise
    level ``sigma = shift * s / (1 + (shift - 1) * s)``. Training draws from it, samplers step along it."""
    num_train_timesteps: int = 1000
    shift: float = 1.0

    def build(self) -> FlowMatchEulerDiscreteScheduler:
        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=self.num_train_timesteps, shift=self.shift)


class NoisedFrames(NamedTuple):
    inputs: torch.Tensor     # [B, T, C, H, W] noised latents, clean where `clean`
    timesteps: torch.Tensor  # [B, T] float; CLEAN_TIMESTEP where `clean`
    target: torch.Tensor     # [B, T, C, H, W] velocity noise - x0
    clean: torch.Tensor      # [B, T] bool


@dataclass(frozen=True)
class FlowMatching(abc.ABC):
    """What frame-wise and clip-wise flow matching share: the schedule, the timestep density, the noising, the
    velocity target and the masked loss. A subclass says which frames stay clean (``clean_frames``)."""
    clean_context_ratio: float = 0.1
    weighting_scheme: Literal['logit_normal', 'mode', 'uniform'] = 'logit_normal'
    logit_mean: float = 0.0
    logit_std: float = 1.0
    mode_scale: float = 1.29
    scheduler: FlowMatchSchedule = FlowMatchSchedule()

    def __post_init__(self):
        if not 0.0 <= self.clean_context_ratio < 1.0:
            raise ValueError(f'clean_context_ratio must be in [0, 1), got {self.clean_context_ratio}')

    @property
    def long_context(self) -> bool:
        """Whether clips are cut to random lengths with every frame before the last window clean (FAR-Long)."""
        return False

    @abc.abstractmethod
    def clean_frames(self, batch: int, frames: int, window: int, device,
                     generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """``[batch, frames]`` bool: the frames kept clean (timestep -1, outside the loss)."""

    @functools.cached_property
    def noise_schedule(self) -> FlowMatchEulerDiscreteScheduler:
        """The training schedule (built once; training only reads it)."""
        return self.scheduler.build()

    @functools.cached_property
    def _tables(self) -> dict:
        return {}

    def schedule_tables(self, device) -> torch.Tensor:
        """``[2, num_train_timesteps]``: the training schedule's timesteps and sigmas on ``device``, copied there once,
        so that drawing timesteps never waits on the host."""
        device = torch.device(device)
        if device not in self._tables:
            scheduler = self.noise_schedule
            self._tables[device] = torch.stack([scheduler.timesteps, scheduler.sigmas]).to(device)
        return self._tables[device]

    def sample_timesteps(self, batch: int, frames: int, device, generator: Optional[torch.Generator] = None):
        """Per-frame ``(timesteps, sigmas)``, each [batch, frames], drawn as indices into the training schedule."""
        u = compute_density_for_timestep_sampling(
            weighting_scheme=self.weighting_scheme, batch_size=batch * frames, logit_mean=self.logit_mean,
            logit_std=self.logit_std, mode_scale=self.mode_scale, device=device, generator=generator)
        indices = (u * self.noise_schedule.config.num_train_timesteps).long()
        # `sigmas[i]` is the noise level of `timesteps[i]`: looking both up by index is what
        # `scheduler.scale_noise` does element by element, done here once per batch.
        timesteps, sigmas = self.schedule_tables(device)[:, indices].reshape(2, batch, frames)
        return timesteps, sigmas

    def noise(self, latents: torch.Tensor, window: int, generator: Optional[torch.Generator] = None) -> NoisedFrames:
        """Noise ``latents`` [B, T, C, H, W] at timesteps drawn by ``sample_timesteps``; keep the ``clean_frames``."""
        batch, frames = latents.shape[:2]
        device = latents.device
        noise = torch.randn(latents.shape, generator=generator, device=device, dtype=latents.dtype)
        timesteps, sigmas = self.sample_timesteps(batch, frames, device, generator)
        sigmas = sigmas.to(latents.dtype)[..., None, None, None]
        inputs = (1.0 - sigmas) * latents + sigmas * noise

        clean = self.clean_frames(batch, frames, window, device, generator)
        inputs = torch.where(clean[..., None, None, None], latents, inputs)
        timesteps = timesteps.masked_fill(clean, CLEAN_TIMESTEP)
        return NoisedFrames(inputs, timesteps, noise - latents, clean)

    @staticmethod
    def loss(prediction: torch.Tensor, target: torch.Tensor, clean: torch.Tensor, window: int) -> torch.Tensor:
        """Mean squared error over the noised frames of the last ``window`` frames, per video, then averaged."""
        prediction, target, clean = prediction[:, -window:], target[:, -window:], clean[:, -window:]
        per_frame = (prediction.float() - target.float()).pow(2).flatten(2).mean(-1)
        weight = (~clean).float()
        return ((per_frame * weight).sum(-1) / (weight.sum(-1) + 1e-9)).mean()

    def __call__(self, model, latents: torch.Tensor, window: int, conditions: Conditions = None,
                 generator: Optional[torch.Generator] = None) -> torch.Tensor:
        noised = self.noise(latents, window, generator)
        prediction = model(noised.inputs, timestep=noised.timesteps, conditions=conditions).sample
        return self.loss(prediction, noised.target, noised.clean, window)


@dataclass(frozen=True)
class FlowMatchingObjective(FlowMatching):
    """FAR's frame-wise objective; `trainer.objective` in the YAML file. A random ``clean_context_ratio`` of the
    frames stay clean.

    ``training_type: long_context`` trains the long-context models: every frame before the last
    short-term window is clean context (and outside the loss), as FAR-Long is used at test time.
    """
    training_type: Literal['base', 'long_context'] = 'base'

    @property
    def long_context(self) -> bool:
        return self.training_type == 'long_context'

    def clean_frames(self, batch: int, frames: int, window: int, device,
                     generator: Optional[torch.Generator] = None) -> torch.Tensor:
        clean = torch.rand((batch, frames), generator=generator, device=device) < self.clean_context_ratio
        if self.long_context:
            clean[:, :max(frames - window, 0)] = True
        return clean
