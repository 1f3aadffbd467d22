"""Latent autoencoders behind one interface: video in [0, 1] <-> scaled latents.

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
import abc
import json
from pathlib import Path
from typing import Callable, Dict, Literal, Optional, Tuple, Union

import diffusers
import torch
import torch.nn as nn
import torch.nn.functional as F
from accelerate import init_empty_weights

from ..registry import AUTOENCODERS
from ..utils.checkpoints import read_state_dict, resolve_weights
from ..utils.files import find_file

DTYPES = {'float32': torch.float32, 'bfloat16': torch.bfloat16, 'float16': torch.float16}
DType = Literal['float32', 'bfloat16', 'float16']

DOWNLOAD_HINT = "python scripts/download.py --what models --include 'dcae/*'"
# Checkpoints of far.trainers.autoencoder_trainer hold the autoencoder under this prefix, next to its
# discriminator.
TRAINING_PREFIX = 'autoencoder.'


def read_dcae_config(config: Union[str, dict]) -> dict:
    """A DC-AE config: a dict, or the path of its JSON file."""
    if isinstance(config, dict):
        return dict(config)
    file = find_file(config)
    if file is None or not file.is_file():
        raise FileNotFoundError(f"DC-AE config '{config}' (autoencoder key `config`) does not exist; the shipped "
                                f"ones are in options/model_cfg/dcae/")
    return json.loads(file.read_text())


def read_dcae_checkpoint(checkpoint: str) -> Tuple[Path, Dict[str, torch.Tensor]]:
    """The weight file behind ``checkpoint`` (see ``far.utils.checkpoints.resolve_weights``) and its state dict,
    unprefixed when it is a training checkpoint."""
    found = find_file(checkpoint)
    if found is None:
        raise FileNotFoundError(f"DC-AE checkpoint '{checkpoint}' (autoencoder key `checkpoint`) does not exist: "
                                f"download the published ones with `{DOWNLOAD_HINT}`, or point `checkpoint` at "
                                f"your own autoencoder-training checkpoint")
    file = resolve_weights(found)
    state = read_state_dict(file)
    if any(k.startswith(TRAINING_PREFIX) for k in state):
        state = {k[len(TRAINING_PREFIX):]: v for k, v in state.items() if k.startswith(TRAINING_PREFIX)}
    return file, state


def cast(model: diffusers.ModelMixin, dtype: str):
    if model.dtype != DTYPES[dtype]:  # diffusers' .to(dtype) logs a warning even when there is nothing to do
        model.to(DTYPES[dtype])


LATENT_FAMILIES = ('DC-AE', 'KL', 'identity')  # the ``family`` of each LatentAutoencoder below


class LatentAutoencoder(nn.Module, abc.ABC):
    """Shared behaviour: ``[B, T, ...]`` videos handled frame by frame, value ranges, scaling, slicing.

    The autoencoder is a frozen feature map: built without gradients and in eval mode, and ``train()``
    leaves it in eval mode, so BatchNorm statistics never move under a trainer's ``model.train()``. The
    autoencoder trainer trains the wrapped diffusers model (``.model``) directly.

    ``slicing`` (frames per autoencoder call, ``None`` = all at once) bounds the memory of long videos.
    Inputs are cast to the autoencoder's dtype; outputs are float32.

    Subclasses set ``in_channels``, ``latent_channels``, ``spatial_compression``, ``scaling_factor`` (and
    ``shift_factor``) and implement ``_encode``/``_decode`` on frames ``[N, C, H, W]`` in [-1, 1].
    """
    in_channels: int
    latent_channels: int
    spatial_compression: int
    scaling_factor: float
    shift_factor: float = 0.0

    def __init__(self, slicing: Optional[int]):
        super().__init__()
        if slicing is not None and slicing < 1:
            raise ValueError(f'autoencoder key `slicing` is a number of frames per call (>= 1) or null, got {slicing}')
        self.slicing = slicing

    @abc.abstractmethod
    def _encode(self, frames: torch.Tensor) -> torch.Tensor:
        """Frames ``[N, C, H, W]`` in [-1, 1] -> raw latents ``[N, c, h, w]``."""

    @abc.abstractmethod
    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Raw latents ``[N, c, h, w]`` -> frames ``[N, C, H, W]`` in about [-1, 1]."""

    def _freeze(self):
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True):
        return super().train(False)  # frozen: always in eval mode

    @property
    def dtype(self) -> torch.dtype:
        param = next(self.parameters(), None)
        return torch.float32 if param is None else param.dtype

    def _per_frame(self, fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """``fn`` over the frames of ``x [B, T, ...]``, ``slicing`` frames at a time."""
        frames = x.flatten(0, 1).to(self.dtype)
        chunks = frames.split(self.slicing) if self.slicing else (frames,)
        return torch.cat([fn(chunk) for chunk in chunks]).float().unflatten(0, x.shape[:2])

    @torch.no_grad()
    def encode_raw(self, video: torch.Tensor) -> torch.Tensor:
        """``video [B, T, C, H, W]`` in [0, 1] -> raw (unscaled) latents ``[B, T, c, h, w]``."""
        if video.ndim != 5 or video.shape[2] != self.in_channels:
            raise ValueError(f'{type(self).__name__}.encode expects video [B, T, {self.in_channels}, H, W], '
                             f'got {tuple(video.shape)}')
        r = self.spatial_compression
        if video.shape[-2] % r or video.shape[-1] % r:
            raise ValueError(f'{type(self).__name__}: frame size {tuple(video.shape[-2:])} is not a multiple of the '
                             f'spatial compression {r}')
        return self._per_frame(self._encode, video * 2 - 1)

    def scale_latents(self, raw: torch.Tensor) -> torch.Tensor:
        """Raw latents (``encode_raw``, latent shards) -> the scaled latents the FAR model sees."""
        return (raw - self.shift_factor) * self.scaling_factor

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """``video [B, T, C, H, W]`` in [0, 1] -> scaled latents ``[B, T, c, h, w]``."""
        return self.scale_latents(self.encode_raw(video))

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents ``[B, T, c, h, w]`` -> video ``[B, T, C, H, W]`` in [0, 1] (clamped)."""
        if latents.ndim != 5 or latents.shape[2] != self.latent_channels:
            raise ValueError(f'{type(self).__name__}.decode expects latents [B, T, {self.latent_channels}, h, w], '
                             f'got {tuple(latents.shape)}')
        raw = latents.float() / self.scaling_factor + self.shift_factor
        return ((self._per_frame(self._decode, raw) + 1) / 2).clamp(0, 1)

    def extra_repr(self) -> str:
        return (f'latent_channels={self.latent_channels}, spatial_compression={self.spatial_compression}, '
                f'scaling_factor={self.scaling_factor}, slicing={self.slicing}')


@AUTOENCODERS.register(aliases=('AutoencoderDC',))
class DCAutoencoder(LatentAutoencoder):
    """FAR's DC-AE (diffusers ``AutoencoderDC``).

    Args:
        config: a JSON config path (e.g. ``options/model_cfg/dcae/model_8x_c32_config.json``) or a dict.
        checkpoint: weights, loaded strictly: a ``.pth``/``.safetensors`` state dict (the published
            ``DCAE_*.pth``), a checkpoint folder of the autoencoder trainer (its EMA weights) or a
            ``save_pretrained`` folder. ``None`` leaves the weights random (training from scratch).
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
            file, state = read_dcae_checkpoint(checkpoint)
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
