"""Training FAR: frame-wise flow matching on autoencoder latents, validated by prediction."""
from typing import Dict

import torch
from accelerate.utils import broadcast

from far.models.autoencoders import LATENT_FAMILIES
from far.objectives import FlowMatchingObjective
from far.registry import TRAINERS
from far.trainers.generative import GenerativeTrainer


@TRAINERS.register()
class FARTrainer(GenerativeTrainer):
    """Trains a FAR model with :class:`FlowMatchingObjective` on the latents of ``autoencoder``.

    Items carry pixels (``'video'``, encoded on the fly) or raw latents (``'latent'``, scaled here), and
    ``'label'``/``'action'`` for conditional models. The loss covers the model's short-term window
    (``short_term_ctx_winsize``), the last frames of each clip. With ``objective.training_type:
    long_context`` every step trains on a clip of random length between that window and the whole video
    (the same length on every rank) at a random start. Other options: see ``GenerativeTrainer`` and ``Trainer``.
    """

    model_families = ('FAR',)
    autoencoder_families = LATENT_FAMILIES

    def __init__(self, *, objective: FlowMatchingObjective = FlowMatchingObjective(), **options):
        super().__init__(**options)
        self.objective = objective
        self.window = self.model.config.short_term_ctx_winsize

    def _random_clip(self, batch: dict) -> dict:
        """A clip of ``window..T`` frames at a random start, cut from every per-frame field (video or latent,
        action, ...); its length is broadcast so that all ranks agree."""
        frames = batch['video' if 'video' in batch else 'latent'].shape[1]
        if frames < self.window:
            raise ValueError(f'long_context training needs clips of at least short_term_ctx_winsize={self.window} '
                             f'frames, the dataset gives {frames}')
        length = torch.randint(self.window, frames + 1, (1,), device=self.accelerator.device)
        length = int(broadcast(length).item())
        start = int(torch.randint(0, frames - length + 1, (1,)).item())
        return {k: v[:, start:start + length] if torch.is_tensor(v) and v.dim() > 1 else v for k, v in batch.items()}

    def train_step(self, batch: dict, step: int) -> Dict[str, torch.Tensor]:
        if self.objective.training_type == 'long_context':
            batch = self._random_clip(batch)
        with torch.no_grad(), self.accelerator.autocast():
            if 'video' in batch:
                latents = self.autoencoder.encode(batch['video'])
            else:
                latents = self.autoencoder.scale_latents(batch['latent'])
        condition = self.accelerator.unwrap_model(self.model).condition
        conditions = None if condition is None else condition.from_batch(batch)
        return {'loss': self.objective(self.model, latents, self.window, conditions)}
