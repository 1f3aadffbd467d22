"""Training FAR: frame-wise flow matching on autoencoder latents, validated by prediction."""
import random
from typing import Dict, List, Optional

import torch

from far.models.autoencoders import LATENT_FAMILIES
from far.objectives import FlowMatchingObjective
from far.registry import TRAINERS
from far.trainers.generative import GenerativeTrainer
from far.trainers.parallel import allow_unused_parameters
from far.utils.distributed import seed_for


@TRAINERS.register()
class FARTrainer(GenerativeTrainer):
    """Trains a FAR model with :class:`FlowMatchingObjective` on the latents of ``autoencoder``.

    Items carry pixels (``'video'``, encoded on the fly) or raw latents (``'latent'``, scaled here), and
    ``'label'``/``'action'`` for conditional models. The loss covers the model's short-term window
    (``short_term_ctx_winsize``), the last frames of each clip. With ``objective.training_type:
    long_context`` every step trains on a clip of random length between that window and the whole video
    (the same length on every rank) at a random start.

    ``clip_length_buckets``: how many lengths ``long_context`` clips take, evenly spaced from the window to the
    whole video (both included), each drawn as often; null: every length. Each length is a new shape, which a
    compiled model (``compile: true``) compiles once, so buckets bound the compilations; drawing uniformly among
    evenly spaced lengths keeps the mean length (and the mean cost of a step) of drawing among all of them.
    Other options: see ``GenerativeTrainer`` and ``Trainer``.
    """

    model_families = ('FAR',)
    autoencoder_families = LATENT_FAMILIES

    def __init__(self, *, objective: FlowMatchingObjective = FlowMatchingObjective(),
                 clip_length_buckets: Optional[int] = 4, **options):
        accelerator, model = options['accelerator'], options['model']
        if accelerator.num_processes > 1 and objective.long_context and model.has_long_term_stream:
            # A clip no longer than the short-term window has no long-term frames: its step leaves the long-term
            # stream without gradient.
            allow_unused_parameters(accelerator)
        super().__init__(**options)
        if clip_length_buckets is not None and clip_length_buckets < 1:
            raise ValueError(f'clip_length_buckets must be >= 1 or null, got {clip_length_buckets}')
        self.objective, self.clip_length_buckets = objective, clip_length_buckets
        self.window = self.model.config.short_term_ctx_winsize
        objective.schedule_tables(self.accelerator.device)  # built before the first step, which then never waits

    def clip_lengths(self, frames: int) -> List[int]:
        """The lengths ``long_context`` training draws from, for videos of ``frames`` frames."""
        if self.clip_length_buckets is None:
            return list(range(self.window, frames + 1))
        steps = max(self.clip_length_buckets - 1, 1)
        return sorted({frames - round(k * (frames - self.window) / steps) for k in range(self.clip_length_buckets)})

    def _random_clip(self, batch: dict, step: int) -> dict:
        """A clip of one of ``clip_lengths`` at a random start, cut from every per-frame field (video or latent,
        action, ...). Both are drawn on the host: the length from (seed, step), the same on every rank without a
        collective, the start from the step's seeded ``random``."""
        frames = batch['video' if 'video' in batch else 'latent'].shape[1]
        if frames < self.window:
            raise ValueError(f'long_context training needs clips of at least short_term_ctx_winsize={self.window} '
                             f'frames, the dataset gives {frames}')
        length = random.Random(seed_for(self.seed, step)).choice(self.clip_lengths(frames))
        start = random.randint(0, frames - length)
        return {k: v[:, start:start + length] if torch.is_tensor(v) and v.dim() > 1 else v for k, v in batch.items()}

    def train_step(self, batch: dict, step: int) -> Dict[str, torch.Tensor]:
        if self.objective.long_context:
            batch = self._random_clip(batch, step)
        with torch.no_grad(), self.accelerator.autocast():
            if 'video' in batch:
                latents = self.autoencoder.encode(batch['video'])
            else:
                latents = self.autoencoder.scale_latents(batch['latent'])
        condition = self.accelerator.unwrap_model(self.model).condition
        conditions = None if condition is None else condition.from_batch(batch)
        return {'loss': self.objective(self.model, latents, self.window, conditions)}
