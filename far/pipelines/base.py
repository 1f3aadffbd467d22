"""What a sampler is to the rest of the framework: the model and autoencoder of an experiment in, videos out.

Evaluation (``test.py``, ``far.evaluation``) and validation during training know samplers only through
:class:`VideoSampler`, and build them from a YAML block (``test.sampler``, ``trainer.validation.sampler``)
with :func:`build_sampler`. A new model family adds its model and a registered sampler class; nothing else
changes. A sampler class holds its sampling settings in one frozen dataclass, ``options_class``, whose fields
are the keys of its YAML block and whose defaults are the only ones.

One meaning per argument name, in every sampler:

- ``context`` / ``context_video``: the clean frames a prediction starts from (``None``: from nothing);
- ``num_frames``: how many NEW frames to make after the context (the result holds context + new frames);
- ``conditions``: the condition ids of every frame of the result, context included (a label per video, or an
  action per frame);
- ``guidance_scale``: classifier-free guidance ``uncond + s * (cond - uncond)`` (:func:`guide`), the batch doubled
  as ``[unconditional, conditional]``; 1 turns it off;
- ``num_inference_steps``: the flow-matching samplers' Euler steps of each new frame (FAR) or window (Video DiT).
"""
import abc
import dataclasses
from typing import ClassVar, Optional, Sequence, Tuple

import torch

from ..conditions import Condition, Conditions
from ..registry import PIPELINES


class VideoSampler(abc.ABC):
    """A sampler: ``predict`` continues (or starts) videos; ``replace`` gives the same sampler with other settings.

    ``runtime_args`` names the constructor arguments that receive the experiment's model and autoencoder, in
    that order (``('transformer', 'vae')`` for FAR); ``model_families`` and ``autoencoder_families`` name the
    ``family`` of the models and autoencoders it samples (checked when an experiment file loads). ``options`` is an
    instance of ``options_class``.
    """

    runtime_args: ClassVar[Tuple[str, str]] = ('transformer', 'vae')
    model_families: ClassVar[Tuple[str, ...]]
    autoencoder_families: ClassVar[Tuple[str, ...]]
    options_class: ClassVar[type]
    options: object

    def set_progress_bar_config(self, **kwargs):
        """Samplers without a progress bar ignore this (diffusers pipelines have one)."""
    @property
    @abc.abstractmethod
    def condition(self) -> Optional[Condition]:
        """What the sampled model is conditioned on (``None``: nothing)."""

    @abc.abstractmethod
    def predict(self, *, context: Optional[torch.Tensor], num_frames: int, conditions: Conditions,
                generators: Sequence[torch.Generator], height: int, width: int) -> torch.Tensor:
        """Videos ``[B, Tc + num_frames, 3, H, W]`` in [0, 1]: the context (``[B, Tc, 3, H, W]`` in [0, 1], or
        ``None`` to start from nothing) followed by ``num_frames`` new frames. ``conditions`` cover all the
        frames; video ``i`` draws its randomness from ``generators[i]`` only, so a video's sample does not depend
        on the batch it is in (B = ``len(generators)``)."""

    @abc.abstractmethod
    def replace(self, **options) -> 'VideoSampler':
        """The same model and autoencoder with some settings changed (e.g. a baseline's sliding window)."""

    def open_stream(self, **start):
        """A video made frame by frame for as long as the caller wants (``far.pipelines.streaming``)."""
        raise NotImplementedError(f'{type(self).__name__} does not stream frame by frame; FARPipeline does (FAR and '
                                  'FAR-Long models)')

    def options_with(self, **changes):
        """``self.options`` with ``changes`` (one clear error for a setting the sampler does not have)."""
        known = {f.name for f in dataclasses.fields(self.options_class)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise TypeError(f'{type(self).__name__} has no setting {unknown}; its settings: {sorted(known)}')
        return dataclasses.replace(self.options, **changes)

    def describe(self) -> dict:
        """The sampler and its settings, for results files."""
        from ..options import to_dict
        return {'type': type(self).__name__, **to_dict(self.options)}


def guide(output: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance of an output computed on a doubled batch ``[unconditional, conditional]`` (dim 0):
    ``uncond + scale * (cond - uncond)``. Every sampler orders its guided batch this way."""
    uncond, cond = output.chunk(2)
    return uncond + scale * (cond - uncond)


def build_sampler(cfg: dict, *, model: torch.nn.Module, autoencoder: Optional[torch.nn.Module]) -> VideoSampler:
    """The sampler of a validated ``{type: ..., **settings}`` block, sampling ``model`` through ``autoencoder``."""
    target = PIPELINES.get(cfg['type'])
    return PIPELINES.build(cfg, **dict(zip(target.runtime_args, (model, autoencoder))))
