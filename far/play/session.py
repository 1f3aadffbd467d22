"""One player's stream: free play (the player's actions, or none for a model that plays by itself) or replay (the
held-out episode's own actions, its ground truth beside every frame)."""
import time
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from far.play.world import World


def to_uint8(frame: torch.Tensor) -> np.ndarray:
    """``[3, H, W]`` in [0, 1] -> ``[H, W, 3]`` uint8."""
    return (frame.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


@dataclass(frozen=True)
class Step:
    """A frame to show: ``index`` in the video (context included), the model's ``frame``, the episode's ``truth``
    (replay only), the model's time for it (``latency`` seconds, 0 for a context frame), ``done`` when a replay
    has fed the episode's last action."""
    index: int
    frame: np.ndarray
    truth: Optional[np.ndarray] = None
    latency: float = 0.0
    done: bool = False


class Session:
    """A stream over held-out ``episode`` of ``world`` drawn from ``seed``; ``replay`` feeds the episode's actions."""

    def __init__(self, world: World, *, episode: int, seed: int, replay: bool):
        self.world, self.replay, self.seed = world, replay, seed
        self.episode = world.episode(episode)
        self.stream = world.open_stream(self.episode, seed)
        self.index = world.context_length - 1

    def first(self) -> Step:
        """The last context frame, the one the model continues."""
        video = self.episode['video'][0]
        return Step(index=self.index, frame=to_uint8(video[self.index]),
                    truth=to_uint8(video[self.index]) if self.replay else None)

    def reset(self, seed: int) -> Step:
        """Back to the episode's context, with new noise."""
        self.stream.reset(seed=seed)
        self.seed, self.index = seed, self.world.context_length - 1
        return self.first()

    @property
    def frames_left(self) -> Optional[int]:
        """Replay: the episode's frames still to make (``None``: free play never ends)."""
        return self.episode['video'].shape[1] - 1 - self.index if self.replay else None

    def action(self, requested: Optional[int]) -> Optional[int]:
        """The action of the next frame: the episode's in replay, else the player's (checked)."""
        if self.replay and self.world.num_actions:
            return int(self.episode['action'][0, self.index + 1])
        if not self.world.num_actions:
            return None
        if not isinstance(requested, int) or isinstance(requested, bool) or not 0 <= requested < self.world.num_actions:
            raise ValueError(f'action must be an integer in [0, {self.world.num_actions}), got {requested!r}')
        return requested

    def step(self, requested: Optional[int] = None) -> Step:
        """The next frame, made with the player's ``requested`` action (ignored in replay or without actions)."""
        if self.frames_left == 0:
            raise ValueError("the replay reached the episode's end: reset or start another episode")
        action = self.action(requested)
        start = time.perf_counter()
        with torch.no_grad():
            made = self.stream.step(action=action)
        latency = time.perf_counter() - start
        self.index += 1
        truth = to_uint8(self.episode['video'][0, self.index]) if self.replay else None
        return Step(index=self.index, frame=to_uint8(made.pixels[0]), truth=truth, latency=latency,
                    done=self.frames_left == 0)
