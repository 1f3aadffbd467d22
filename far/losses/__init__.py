"""Training losses other than FAR's objective (see ``far.objectives``)."""
from far.losses.autoencoder_loss import AutoencoderLoss, DiscriminatorLogits, adaptive_weight, hinge_d_loss

__all__ = ['AutoencoderLoss', 'DiscriminatorLogits', 'adaptive_weight', 'hinge_d_loss']
