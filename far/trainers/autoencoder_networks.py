"""What the autoencoder trainer optimises: an autoencoder's network and its PatchGAN, behind one forward (as DDP
needs), for each kind of autoencoder it trains.

Both work on videos ``[B, T, 3, H, W]`` in [-1, 1]; the losses see their frames as images. The state dict holds the
autoencoder under ``autoencoder.`` (``TRAINING_PREFIX``, which the autoencoders strip when they load a training
checkpoint) next to ``discriminator.``.
"""
import abc
from typing import Optional, Tuple

import torch
import torch.nn as nn

from far.losses.autoencoder_loss import DiscriminatorLogits
from far.models.autoencoders import DCAutoencoder
from far.models.discriminator import PatchDiscriminator
from far.models.nbp_tokenizer import NBPTokenizer


class AutoencoderWithDiscriminator(nn.Module, abc.ABC):

    def __init__(self, autoencoder: nn.Module, discriminator: Optional[PatchDiscriminator]):
        super().__init__()
        self.autoencoder = autoencoder
        self.discriminator = discriminator

    @abc.abstractmethod
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """Videos in [-1, 1] -> the latents the decoder reads (quantized, with straight-through gradients, for a
        tokenizer)."""

    @abc.abstractmethod
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> videos ``[B, T, 3, H, W]`` in about [-1, 1]."""

    @abc.abstractmethod
    def last_layer(self) -> torch.Tensor:
        """The decoder's last weight, where the adaptive weight balances the losses."""

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


class DCAEWithDiscriminator(AutoencoderWithDiscriminator):
    """diffusers' ``AutoencoderDC``, frame by frame."""

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        return self.autoencoder.encode(video.flatten(0, 1)).latent.unflatten(0, video.shape[:2])

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.autoencoder.decode(latents.flatten(0, 1)).sample.unflatten(0, latents.shape[:2])

    def last_layer(self) -> torch.Tensor:
        conv_out = self.autoencoder.decoder.conv_out
        return getattr(conv_out, 'conv', conv_out).weight  # a pixel-shuffle block around a conv in FAR's configs


class TokenizerWithDiscriminator(AutoencoderWithDiscriminator):
    """The NBP tokenizer on whole clips (1 + 4 m frames in [0, 1], channels first). FSQ has no codebook to learn:
    rounding passes gradients straight through, so no codebook or commitment loss is needed."""

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        return self.autoencoder.encode((video.transpose(1, 2) + 1) / 2)[0]

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.autoencoder.decode(latents).transpose(1, 2) * 2 - 1

    def last_layer(self) -> torch.Tensor:
        return self.autoencoder.decoder_layers[-1].conv.weight


def trainable(autoencoder: nn.Module, discriminator: Optional[PatchDiscriminator]) -> AutoencoderWithDiscriminator:
    """The network the trainer optimises for the ``autoencoder`` block's autoencoder, its gradients switched on."""
    if isinstance(autoencoder, DCAutoencoder):
        return DCAEWithDiscriminator(autoencoder.model.requires_grad_(True), discriminator)
    if isinstance(autoencoder, NBPTokenizer):
        return TokenizerWithDiscriminator(autoencoder.requires_grad_(True), discriminator)
    raise ValueError(f'AutoencoderTrainer trains a DCAutoencoder or an NBPTokenizer; the autoencoder block builds '
                     f'{type(autoencoder).__name__}')
