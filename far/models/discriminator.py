"""PatchGAN discriminator (pix2pix, Isola et al. 2017), the adversary of FAR's DC-AE training.

It scores overlapping patches of an image as real or reconstructed: ``[N, C, H, W] -> [N, 1, H', W']`` logits.
Each of the ``num_layers`` strided convolutions doubles the width (at most 8x ``base_channels``); with
three layers a logit sees a 70x70 patch, so inputs need at least 32x32 pixels. Parameter names follow
pix2pix and taming-transformers (``main.<i>.*``).
"""
import torch
import torch.nn as nn


class PatchDiscriminator(nn.Module):

    def __init__(self, in_channels: int = 3, base_channels: int = 64, num_layers: int = 3):
        super().__init__()
        layers = [nn.Conv2d(in_channels, base_channels, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        channels = base_channels
        for i in range(1, num_layers + 1):
            out = base_channels * min(2 ** i, 8)
            stride = 2 if i < num_layers else 1  # the last layer widens without downsampling
            # No conv bias before BatchNorm: its shift makes one redundant.
            layers += [nn.Conv2d(channels, out, 4, stride=stride, padding=1, bias=False), nn.BatchNorm2d(out),
                       nn.LeakyReLU(0.2, True)]
            channels = out
        layers.append(nn.Conv2d(channels, 1, 4, stride=1, padding=1))
        self.main = nn.Sequential(*layers)

        # DCGAN initialisation, as pix2pix.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.02)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.normal_(module.weight, 1.0, 0.02)
                nn.init.zeros_(module.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.main(images)
