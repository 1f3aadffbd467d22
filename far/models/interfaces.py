"""The two roles an ``autoencoder`` block fills, each with its tensor layout stated here and nowhere else.

- :class:`LatentAutoencoder` (FAR, Video DiT): videos ``[B, T, C, H, W]`` in [0, 1] <-> continuous latents
  ``[B, T, c, h, w]``, frame by frame (``c`` channels, ``h = H / spatial_compression``).
- :class:`VideoTokenizer` (NBP): videos ``[B, T, 3, H, W]`` in [0, 1] of ``T = 1 + r m`` frames <-> token ids
  ``[B, T', h, w]`` (int64, ``T' = m + 1``, ``r = temporal_compression``), whole clips at once.

Both are :class:`Autoencoder`: what the latent extractor stores of a video and what the autoencoder trainer
optimises are asked of the autoencoder itself, never told apart by its class.
"""
import abc
from typing import Callable, ClassVar, Dict, Literal, Optional

import torch
import torch.nn as nn


class Autoencoder(nn.Module, abc.ABC):
    """What every autoencoder block offers besides its role.

    Training (``far.trainers.autoencoder_trainer``) sees videos ``[B, T, 3, H, W]`` in [-1, 1]:
    ``training_decode(training_encode(video))`` reconstructs them with gradients, through the weights of
    ``trainable_weights()``, which a training checkpoint holds under ``far.utils.checkpoints.AUTOENCODER_PREFIX``
    exactly as the block's ``checkpoint`` key reads them back.
    """

    content: ClassVar[Literal['latent', 'tokens']]  # what a shard of its encodings holds (far.data.shards)
    latent_channels: int
    spatial_compression: int
    temporal_compression: int = 1

    def trainable_weights(self) -> nn.Module:
        """The module the autoencoder trainer optimises and saves."""
        raise self._untrainable()

    def last_layer(self) -> torch.Tensor:
        """The decoder's last weight, where the adaptive weight balances the training losses."""
        raise self._untrainable()

    def _untrainable(self) -> ValueError:
        return ValueError(f'{type(self).__name__} has no weights to train: the autoencoder trainer trains a '
                          f'DCAutoencoder or an NBPTokenizer; change the autoencoder block')

    @abc.abstractmethod
    def training_encode(self, video: torch.Tensor) -> torch.Tensor:
        """Videos ``[B, T, 3, H, W]`` in [-1, 1] -> what the decoder reads, with gradients (quantized codes with
        straight-through gradients for a tokenizer)."""

    @abc.abstractmethod
    def training_decode(self, latents: torch.Tensor) -> torch.Tensor:
        """``training_encode``'s output -> videos ``[B, T, 3, H, W]`` in about [-1, 1], with gradients."""

    @abc.abstractmethod
    def encode_stored(self, video: torch.Tensor, float_dtype: torch.dtype) -> torch.Tensor:
        """``[B, T, 3, H, W]`` in [0, 1] -> what a shard stores of each video (``content``): raw latents in
        ``float_dtype``, or token ids in the smallest integer type that holds the codebook."""

    @abc.abstractmethod
    def describe(self) -> Dict[str, Optional[float]]:
        """Its sizes, for the index of a latent or token extraction."""

    @abc.abstractmethod
    def reconstruct(self, video: torch.Tensor) -> torch.Tensor:
        """``[B, T, 3, H, W]`` in [0, 1] -> its reconstruction, the same shape in [0, 1] (what test.py scores)."""


class LatentAutoencoder(Autoencoder):
    """Videos ``[B, T, C, H, W]`` in [0, 1] <-> scaled latents ``[B, T, c, h, w]``, frame by frame.

    The autoencoder is a frozen feature map: built without gradients and in eval mode, and ``train()``
    leaves it in eval mode, so BatchNorm statistics never move under a trainer's ``model.train()``. The
    autoencoder trainer trains ``trainable_weights()`` directly.

    ``slicing`` (frames per autoencoder call, ``None`` = all at once) bounds the memory of long videos.
    Inputs are cast to the autoencoder's dtype; outputs are float32.

    Subclasses set ``in_channels``, ``latent_channels``, ``spatial_compression``, ``scaling_factor`` (and
    ``shift_factor``) and implement ``_encode``/``_decode`` on frames ``[N, C, H, W]`` in [-1, 1].
    """
    content = 'latent'
    in_channels: int
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

    def training_encode(self, video: torch.Tensor) -> torch.Tensor:
        return self._encode(video.flatten(0, 1)).unflatten(0, video.shape[:2])

    def training_decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self._decode(latents.flatten(0, 1)).unflatten(0, latents.shape[:2])

    def encode_stored(self, video: torch.Tensor, float_dtype: torch.dtype) -> torch.Tensor:
        return self.encode_raw(video).to(float_dtype)

    def reconstruct(self, video: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(video))

    def describe(self) -> Dict[str, Optional[float]]:
        return {'latent_channels': self.latent_channels, 'spatial_compression': self.spatial_compression,
                'scaling_factor': self.scaling_factor, 'codebook_size': None}

    def extra_repr(self) -> str:
        return (f'latent_channels={self.latent_channels}, spatial_compression={self.spatial_compression}, '
                f'scaling_factor={self.scaling_factor}, slicing={self.slicing}')


class VideoTokenizer(Autoencoder):
    """Videos ``[B, T, 3, H, W]`` in [0, 1] of ``1 + r m`` frames <-> token ids ``[B, T', h, w]``, whole clips.

    Subclasses set ``image_size``, ``latent_channels``, ``spatial_compression``, ``temporal_compression`` and
    ``codebook_size`` and implement :meth:`encode_tokens` and :meth:`decode_tokens`.
    """
    content = 'tokens'
    in_channels = 3
    image_size: int
    codebook_size: int

    @abc.abstractmethod
    def encode_tokens(self, video: torch.Tensor) -> torch.Tensor:
        """``[B, T, 3, H, W]`` in [0, 1] -> token ids ``[B, T', h, w]`` (int64, no gradient)."""

    @abc.abstractmethod
    def decode_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids ``[B, T', h, w]``, or flattened ``[B, T' h w]`` in (frame, row, column) order -> videos
        ``[B, r (T' - 1) + 1, 3, H, W]`` in [0, 1] (float32, clamped)."""

    @property
    def latent_size(self) -> int:
        """Tokens per row and per column of a latent frame."""
        return self.image_size // self.spatial_compression

    def latent_frames(self, num_frames: int) -> int:
        """Latent frames of a ``num_frames`` clip: ``(T - 1) / r + 1``."""
        r = self.temporal_compression
        if num_frames < 1 or (num_frames - 1) % r:
            raise ValueError(f'{type(self).__name__} encodes 1 + {r} k frames (1, {1 + r}, {1 + 2 * r}, ...), got '
                             f'{num_frames}')
        return (num_frames - 1) // r + 1

    def num_frames(self, latent_frames: int) -> int:
        """Frames decoded from ``latent_frames`` latent frames."""
        return (latent_frames - 1) * self.temporal_compression + 1

    def reconstruct(self, video: torch.Tensor) -> torch.Tensor:
        return self.decode_tokens(self.encode_tokens(video))

    def encode_stored(self, video: torch.Tensor, float_dtype: torch.dtype) -> torch.Tensor:
        return self.encode_tokens(video).to(torch.uint16 if self.codebook_size <= 2 ** 16 else torch.int32)

    def describe(self) -> Dict[str, Optional[float]]:
        return {'latent_channels': self.latent_channels, 'spatial_compression': self.spatial_compression,
                'scaling_factor': None, 'codebook_size': self.codebook_size}
