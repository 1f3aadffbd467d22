"""What the autoencoder trainer optimises: an autoencoder's weights and its PatchGAN behind one forward (as DDP needs).

It works on videos ``[B, T, 3, H, W]`` in [-1, 1] through the autoencoder's training calls
(``far.models.interfaces.Autoencoder``); the losses see their frames as images. The state dict holds the
autoencoder's ``trainable_weights()`` under ``autoencoder.`` (``far.utils.checkpoints.AUTOENCODER_PREFIX``, which
the autoencoders strip when they load a training checkpoint) next to ``discriminator.``.
"""
from typing import Optional, Tuple

import torch
import torch.nn as nn

from far.losses.autoencoder_loss import DiscriminatorLogits
from far.models.discriminator import PatchDiscriminator
from far.models.interfaces import Autoencoder


class AutoencoderWithDiscriminator(nn.Module):

    def __init__(self, autoencoder: Autoencoder, discriminator: Optional[PatchDiscriminator]):
        super().__init__()
        self.autoencoder = autoencoder.trainable_weights().requires_grad_(True)
        self.discriminator = discriminator
        # Unregistered, so that its weights are saved once (under `autoencoder.`); a deep copy (the EMA model)
        # copies it together with them, and its training calls then run on the copied weights.
        self.__dict__['codec'] = autoencoder

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        return self.codec.training_encode(video)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.codec.training_decode(latents)

    def last_layer(self) -> torch.Tensor:
        return self.codec.last_layer()

    def reconstruct(self, video: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(video))

    def forward(self, video: torch.Tensor, adversarial: bool) -> Tuple[torch.Tensor, Optional[DiscriminatorLogits]]:
        """Videos ``[B, T, 3, H, W]`` in [-1, 1] -> reconstructions and, when ``adversarial``, the logits of their
        frames."""
        if not adversarial:
            return self.reconstruct(video), None
        with torch.no_grad():  # the adversarial phase trains the decoder only (FAR's DC-AE recipe)
            latents = self.encode(video)
        recon = self.decode(latents)
        frames, recon_frames = video.flatten(0, 1), recon.flatten(0, 1)
        self.discriminator.requires_grad_(False)  # the autoencoder's term must not train the discriminator
        judged = self.discriminator(recon_frames)
        self.discriminator.requires_grad_(True)
        logits = DiscriminatorLogits(judged, self.discriminator(recon_frames.detach()), self.discriminator(frames))
        return recon, logits
