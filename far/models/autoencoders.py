"""The latent autoencoders (``far.models.interfaces.LatentAutoencoder``): video in [0, 1] <-> scaled latents.

Registry entries (``far.registry.AUTOENCODERS``; the names in parentheses are accepted too):

- ``DCAutoencoder`` (``AutoencoderDC``): FAR's deep-compression autoencoder (DC-AE), i.e. diffusers'
  ``AutoencoderDC``. It has the module tree, parameter names and outputs of the DC-AE class that trained the
  published FAR checkpoints (which only added a ``get_last_layer`` helper), so their ``.pth`` state dicts load
  strictly.
  Its configurations live in ``options/model_cfg/dcae/`` (8x, 16x and 32x spatial compression, 32 channels).
- ``KLAutoencoder`` (``AutoencoderKL``): any diffusers KL VAE, from a local folder or the Hugging Face hub.
- ``IdentityAutoencoder``: pixel space, optionally folded into channels by a lossless space-to-depth
  (``pixel_unshuffle: 4`` turns 32x32x3 frames into 8x8x48 latents: 64 tokens per frame).

The scaling factor (and a KL VAE's shift factor) is applied here and nowhere else: ``encode`` returns
scaled latents, ``decode`` takes them, ``encode_raw`` returns raw ones (what latent shards store) and
``scale_latents`` scales raw latents read back from disk.
"""
import json
from typing import Literal, Optional, Union

import diffusers
import torch
import torch.nn as nn
import torch.nn.functional as F
from accelerate import init_empty_weights

from ..registry import AUTOENCODERS
from ..utils.checkpoints import read_autoencoder_weights
from ..utils.files import find_file
from .interfaces import LatentAutoencoder

DTYPES = {'float32': torch.float32, 'bfloat16': torch.bfloat16, 'float16': torch.float16}
DType = Literal['float32', 'bfloat16', 'float16']

DOWNLOAD_HINT = ("download the published ones with `python scripts/download.py --what models --include 'dcae/*'`, "
                 'or point `checkpoint` at your own autoencoder-training checkpoint')


def read_dcae_config(config: Union[str, dict]) -> dict:
    """A DC-AE config: a dict, or the path of its JSON file."""
    if isinstance(config, dict):
        return dict(config)
    file = find_file(config)
    if file is None or not file.is_file():
        raise FileNotFoundError(f"DC-AE config '{config}' (autoencoder key `config`) does not exist; the shipped "
                                f"ones are in options/model_cfg/dcae/")
    return json.loads(file.read_text())


def cast(model: diffusers.ModelMixin, dtype: str):
    if model.dtype != DTYPES[dtype]:  # diffusers' .to(dtype) logs a warning even when there is nothing to do
        model.to(DTYPES[dtype])


LATENT_FAMILIES = ('DC-AE', 'KL', 'identity')  # the ``family`` of each latent autoencoder below


@AUTOENCODERS.register(aliases=('AutoencoderDC',))
class DCAutoencoder(LatentAutoencoder):
    """FAR's DC-AE (diffusers ``AutoencoderDC``).

    Args:
        config: a JSON config path (e.g. ``options/model_cfg/dcae/model_8x_c32_config.json``) or a dict.
        checkpoint: weights, loaded strictly: a ``.pth``/``.safetensors`` state dict (the published
            ``DCAE_*.pth``), a checkpoint of the autoencoder trainer (its EMA weights) or its ``checkpoints``
            folder (the newest), or a ``save_pretrained`` folder (see
            ``far.utils.checkpoints.read_autoencoder_weights``). ``None`` leaves the weights random.
        scaling_factor: overrides the config's.
        dtype: weights' dtype.
        slicing: frames per autoencoder call (``None``: all at once).
    """

    family = 'DC-AE'

    def __init__(self, config: Union[str, dict], checkpoint: Optional[str] = None,
                 scaling_factor: Optional[float] = None, dtype: DType = 'float32', slicing: Optional[int] = None):
        super().__init__(slicing)
        cfg = read_dcae_config(config)
        if scaling_factor is not None:
            cfg['scaling_factor'] = scaling_factor
        if checkpoint is None:
            self.model = diffusers.AutoencoderDC.from_config(cfg)
        else:
            file, state = read_autoencoder_weights(checkpoint, DOWNLOAD_HINT)
            with init_empty_weights():  # the weights are replaced next: skip the random init (seconds at 32x)
                self.model = diffusers.AutoencoderDC.from_config(cfg)
            try:
                self.model.load_state_dict(state, strict=True, assign=True)
            except RuntimeError as error:
                source = config if isinstance(config, str) else '<dict>'
                raise ValueError(f'{file} does not fit the DC-AE config {source} (autoencoder keys `checkpoint`, '
                                 f'`config`): {error}') from None
        cast(self.model, dtype)
        self.in_channels = self.model.config.in_channels
        self.latent_channels = self.model.config.latent_channels
        self.spatial_compression = self.model.spatial_compression_ratio
        self.scaling_factor = float(self.model.config.scaling_factor)
        self._freeze()

    def _encode(self, frames):
        return self.model.encode(frames).latent

    def _decode(self, latents):
        return self.model.decode(latents).sample

    def trainable_weights(self) -> nn.Module:
        return self.model

    def last_layer(self) -> torch.Tensor:
        conv_out = self.model.decoder.conv_out
        return getattr(conv_out, 'conv', conv_out).weight  # a pixel-shuffle block around a conv in FAR's configs


@AUTOENCODERS.register(aliases=('AutoencoderKL',))
class KLAutoencoder(LatentAutoencoder):
    """A diffusers KL VAE (``AutoencoderKL.from_pretrained``), e.g. ``stabilityai/sd-vae-ft-ema``.

    Args:
        pretrained: a local folder or a Hugging Face hub id.
        subfolder: the VAE's subfolder inside ``pretrained`` (``vae`` for a whole pipeline).
        scaling_factor: overrides the config's (its ``shift_factor``, if any, is used as well).
        sample_posterior: encode to a sample of the posterior instead of its mean.
        dtype: weights' dtype.
        slicing: frames per autoencoder call (``None``: all at once).
    """

    family = 'KL'

    def __init__(self, pretrained: str, subfolder: Optional[str] = None, scaling_factor: Optional[float] = None,
                 sample_posterior: bool = False, dtype: DType = 'float32', slicing: Optional[int] = None):
        super().__init__(slicing)
        overrides = {} if scaling_factor is None else {'scaling_factor': scaling_factor}
        try:
            self.model = diffusers.AutoencoderKL.from_pretrained(pretrained, subfolder=subfolder, **overrides)
        except OSError as error:
            raise OSError(f"AutoencoderKL '{pretrained}' (autoencoder key `pretrained`) could not be loaded: give a "
                          f"local save_pretrained folder, or a hub id with network access (HF_HUB_OFFLINE unset). "
                          f"{error}") from None
        cast(self.model, dtype)
        self.sample_posterior = sample_posterior
        config = self.model.config
        self.in_channels = config.in_channels
        self.latent_channels = config.latent_channels
        self.spatial_compression = 2 ** (len(config.block_out_channels) - 1)
        self.scaling_factor = float(config.scaling_factor)
        self.shift_factor = float(config.shift_factor or 0.0)
        self._freeze()

    def _encode(self, frames):
        posterior = self.model.encode(frames).latent_dist
        return posterior.sample() if self.sample_posterior else posterior.mode()

    def _decode(self, latents):
        return self.model.decode(latents).sample


@AUTOENCODERS.register()
class IdentityAutoencoder(LatentAutoencoder):
    """Pixel space: frames mapped to [-1, 1] and, with ``pixel_unshuffle: r``, folded losslessly into
    ``in_channels * r * r`` channels at ``1/r`` the resolution. Scaling factor 1.

    ``downsample: k`` first averages ``k`` x ``k`` pixel blocks (decoding repeats each value over its block):
    lossless for frames made of constant ``k`` x ``k`` blocks, such as MazeMemory's cells, where it keeps one
    value per colour channel instead of ``k * k`` copies of it."""

    scaling_factor = 1.0
    family = 'identity'

    def __init__(self, in_channels: int = 3, pixel_unshuffle: int = 1, downsample: int = 1):
        super().__init__(slicing=None)
        if in_channels < 1 or pixel_unshuffle < 1 or downsample < 1:
            raise ValueError(f'IdentityAutoencoder: in_channels, pixel_unshuffle and downsample must be >= 1, '
                             f'got {in_channels}, {pixel_unshuffle} and {downsample}')
        self.in_channels = in_channels
        self.downsample, self.unshuffle = downsample, pixel_unshuffle
        self.spatial_compression = downsample * pixel_unshuffle
        self.latent_channels = in_channels * pixel_unshuffle ** 2
        self._freeze()

    def _encode(self, frames):
        if self.downsample > 1:
            frames = F.avg_pool2d(frames, self.downsample)
        return F.pixel_unshuffle(frames, self.unshuffle)

    def _decode(self, latents):
        frames = F.pixel_shuffle(latents, self.unshuffle)
        if self.downsample > 1:
            frames = F.interpolate(frames, scale_factor=self.downsample, mode='nearest')
        return frames
