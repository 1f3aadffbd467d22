"""The autoencoder's training loss: reconstruction, LPIPS-VGG perceptual loss and a PatchGAN hinge loss.

FAR's DC-AE recipe, after taming-transformers' ``LPIPSWithDiscriminator``: until ``disc_start`` the
autoencoder learns ``L1 (or L2) + perceptual_weight * LPIPS``. From then on a PatchGAN discriminator joins
with a hinge loss; its generator term is weighted by ``disc_weight`` times the adaptive weight, which
gives it the gradient scale of the reconstruction terms at the decoder's last layer. Images are in [-1, 1].
"""
from dataclasses import dataclass
from typing import Dict, Literal, NamedTuple, Optional

import torch
import torch.nn.functional as F

from far.metrics.lpips import LPIPS
from far.models.discriminator import PatchDiscriminator


class DiscriminatorLogits(NamedTuple):
    autoencoder: torch.Tensor  # on the reconstructions, discriminator frozen: the autoencoder's term
    fake: torch.Tensor       # on the detached reconstructions: the discriminator's term
    real: torch.Tensor       # on the inputs


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def adaptive_weight(nll_loss: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor) -> torch.Tensor:
    """``|d nll / dW| / |d g / dW|`` at the decoder's last weight ``W``, clamped to [0, 1e4], a constant."""
    nll_grad, = torch.autograd.grad(nll_loss, last_layer, retain_graph=True)
    g_grad, = torch.autograd.grad(g_loss, last_layer, retain_graph=True)
    return (nll_grad.norm() / (g_grad.norm() + 1e-4)).clamp(0.0, 1e4).detach()


@dataclass(frozen=True)
class AutoencoderLoss:
    """Hyper-parameters of the autoencoder's training loss; ``trainer.loss`` in the YAML file.

    ``disc_weight: 0`` trains without discriminator. ``disc_layers``/``disc_channels`` size the PatchGAN.
    ``vgg_weights``/``lpips_weights`` are the LPIPS-VGG backbone and head files (default: found as
    ``far.metrics.weights`` describes, e.g. ``FAR_VGG16_WEIGHTS`` / ``FAR_LPIPS_VGG_WEIGHTS``).
    """
    reconstruction: Literal['l1', 'l2'] = 'l1'
    perceptual_weight: float = 1.0
    disc_weight: float = 0.5
    disc_start: int = 100_000
    disc_layers: int = 3
    disc_channels: int = 64
    vgg_weights: Optional[str] = None
    lpips_weights: Optional[str] = None

    def __post_init__(self):
        if self.perceptual_weight < 0 or self.disc_weight < 0 or self.disc_start < 0:
            raise ValueError(f'perceptual_weight, disc_weight and disc_start must be >= 0, got '
                             f'{self.perceptual_weight}, {self.disc_weight} and {self.disc_start}')

    def adversarial(self, step: int) -> bool:
        """Whether the discriminator takes part at (0-based) ``step``."""
        return self.disc_weight > 0 and step >= self.disc_start

    def perceptual_network(self) -> Optional[LPIPS]:
        return LPIPS('vgg', self.vgg_weights, self.lpips_weights) if self.perceptual_weight > 0 else None

    def discriminator(self) -> Optional[PatchDiscriminator]:
        return PatchDiscriminator(3, self.disc_channels, self.disc_layers) if self.disc_weight > 0 else None

    def __call__(self, inputs: torch.Tensor, recon: torch.Tensor, perceptual: Optional[LPIPS],
                 last_layer: torch.Tensor, logits: Optional[DiscriminatorLogits] = None) -> Dict[str, torch.Tensor]:
        """Losses of images ``[N, 3, H, W]``; ``'loss'`` is the total to minimise (generator and, with
        ``logits``, discriminator terms: their gradients reach disjoint parameters)."""
        distance = F.l1_loss if self.reconstruction == 'l1' else F.mse_loss
        logs = {'rec_loss': distance(recon, inputs)}
        nll = logs['rec_loss']
        if self.perceptual_weight > 0:
            logs['perceptual_loss'] = self.perceptual_weight * perceptual(inputs, recon).mean()
            nll = nll + logs['perceptual_loss']
        if logits is None:
            logs['loss'] = nll
            return logs
        g_loss = -logits.autoencoder.mean()
        logs['d_weight'] = self.disc_weight * adaptive_weight(nll, g_loss, last_layer)
        logs['g_loss'] = logs['d_weight'] * g_loss
        logs['d_loss'] = hinge_d_loss(logits.real, logits.fake)
        logs['loss'] = nll + logs['g_loss'] + logs['d_loss']
        return logs
