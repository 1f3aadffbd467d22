"""Clip-wise flow matching, the objective of a video diffusion transformer (``far.models.VideoDiT``).

As FAR's frame-wise objective (``FlowMatching``'s parts: the same schedule, timestep density, noising, velocity
target and masked loss), except that all noised frames of a clip share one timestep, and that the clean frames,
when a clip has any, are its first frames: the context a prediction starts from, as the sampler gives it
(inpainting-style conditioning). They are tagged with timestep -1 and left out of the loss.
"""
from dataclasses import dataclass
from typing import Optional

import torch

from .flow_matching import FlowMatching


@dataclass(frozen=True)
class ClipFlowMatchingObjective(FlowMatching):
    """``trainer.objective`` of ``VideoDiTTrainer``: the keys of ``FlowMatching``, where ``clean_context_ratio`` is
    the share of clips trained as predictions: their first k frames (k uniform in 1..T-1) are clean context; the
    other clips are generated whole."""

    def sample_timesteps(self, batch: int, frames: int, device, generator: Optional[torch.Generator] = None):
        """One ``(timestep, sigma)`` per clip, repeated over its ``frames``: each ``[batch, frames]``."""
        timesteps, sigmas = super().sample_timesteps(batch, 1, device, generator)
        return timesteps.expand(batch, frames), sigmas.expand(batch, frames)

    def clean_frames(self, batch: int, frames: int, window: int, device,
                     generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """``[batch, frames]`` bool: the first k frames of a ``clean_context_ratio`` share of the clips."""
        predicted = torch.rand(batch, generator=generator, device=device) < self.clean_context_ratio
        context = torch.randint(1, max(frames, 2), (batch,), generator=generator, device=device)
        context = torch.where(predicted & (frames > 1), context, 0)
        return torch.arange(frames, device=device)[None] < context[:, None]
