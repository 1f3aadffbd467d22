"""NBP's video tokenizer: a MAGVIT-v2-style causal 3D CNN with an FSQ bottleneck (Ren et al. 2025,
"Next Block Prediction").

A clip ``[B, 3, T, H, W]`` in [0, 1] (no normalisation) becomes ``T' = (T - 1) / 4 + 1`` latent frames of
``H/8 x W/8`` tokens (``H/4 x W/4`` with ``spatial_compression=4``, which leaves out the space-only down- and
upsampling: small frames keep enough tokens), each one of ``prod(fsq_levels)`` = 64000 codes: 17 frames at
128x128 give 5x16x16 = 1280 tokens. The first frame is encoded on its own, every later latent frame summarises 4 frames.

Layout, as in the released ``magvit2_*.pt`` (parameter names are theirs, so they load strictly):
- every 3D convolution is causal in time: the input is padded by ``2 * (k // 2)`` frames at the front
  only and by ``k // 2`` pixels on each side in space, all with replicate padding;
- GroupNorm normalises each frame on its own; Swish has a learned per-channel slope ``x * sigmoid(beta x)``;
- a residual unit is ``[GN, Swish, conv, GN, Swish, conv]`` plus a 1x1x1 convolution on the skip path when
  the width changes;
- the encoder (27 layers) downsamples with strided convolutions (space, then space and time twice) and
  ends in a plain 1x1x1 ``nn.Conv3d`` to the FSQ channels;
- the decoder (30 layers) upsamples with a convolution to ``block volume x width`` channels followed by
  depth-to-space, whose block offsets are the slow part of the channel axis; a temporal block of 2 drops
  its first output frame, so ``T'`` latent frames decode to ``4 (T' - 1) + 1`` frames.

Tokens are flattened in (frame, row, column) order. ``decode_clip`` does not clamp, ``decode_tokens`` does.
"""
import math
from contextlib import nullcontext
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from accelerate import init_empty_weights
from einops import rearrange

from ..registry import AUTOENCODERS
from ..utils.checkpoints import read_autoencoder_weights
from .fsq import FSQ
from .interfaces import VideoTokenizer

DOWNLOAD_HINT = ('download magvit2_ucf.pt or magvit2_k600.pt with `python scripts/download.py --what '
                 'nbp_tokenizer_ucf` (or nbp_tokenizer_k600) and pass its path, or train one '
                 '(options/demo/nbp_tokenizer_moving_shapes.yml)')


# ----- building blocks -----

class CausalConv3d(nn.Module):
    """3D convolution that sees only the current and earlier frames (replicate padding)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3,
                 stride: Union[int, Tuple[int, int, int]] = 1):
        super().__init__()
        half = kernel_size // 2
        self.padding = (half, half, half, half, 2 * half, 0)  # (W, H, T) as F.pad reads it: time at the front
        self.conv = nn.Conv3d(in_channels, out_channels, kernel_size, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, self.padding, mode='replicate'))


class GroupNorm3D(nn.GroupNorm):
    """GroupNorm over each frame separately (statistics never mix frames, which keeps the encoder causal)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        frames = x.transpose(1, 2)  # [B, T, C, H, W]
        return super().forward(frames.flatten(0, 1)).unflatten(0, frames.shape[:2]).transpose(1, 2)


class Swish(nn.Module):
    """``x * sigmoid(beta * x)`` with a learned slope per channel."""

    def __init__(self, channels: int):
        super().__init__()
        self.beta = nn.Parameter(torch.ones(1, channels, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.beta * x)


class ResidualUnit(nn.Module):
    """``fn(x) + residual_fn(x)``; the skip path is a 1x1x1 causal convolution when the width changes."""

    def __init__(self, in_channels: int, out_channels: int, num_groups: int):
        super().__init__()
        self.fn = nn.Sequential(
            GroupNorm3D(num_groups, in_channels), Swish(in_channels), CausalConv3d(in_channels, out_channels),
            GroupNorm3D(num_groups, out_channels), Swish(out_channels), CausalConv3d(out_channels, out_channels),
        )
        same = in_channels == out_channels
        self.residual_fn = nn.Identity() if same else nn.Sequential(CausalConv3d(in_channels, out_channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x) + self.residual_fn(x)


class Depth2Space3D(nn.Module):
    """``[B, (t h w C), T, H, W] -> [B, C, T t, H h, W w]``; a temporal block > 1 drops its first t - 1 frames
    (the first frame is never upsampled in time)."""

    def __init__(self, block: Tuple[int, int, int]):
        super().__init__()
        self.block = tuple(block)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t, h, w = self.block
        x = rearrange(x, 'b (t h w c) T H W -> b c (T t) (H h) (W w)', t=t, h=h, w=w)
        return x[:, :, t - 1:]


def residual_units(in_channels: int, out_channels: int, count: int, num_groups: int) -> List[nn.Module]:
    """``count`` residual units, the first one changing the width."""
    return [ResidualUnit(in_channels if i == 0 else out_channels, out_channels, num_groups) for i in range(count)]


def upsample(channels: int, block: Tuple[int, int, int]) -> List[nn.Module]:
    """Convolution to ``block volume x channels``, then depth-to-space."""
    volume = block[0] * block[1] * block[2]
    return [CausalConv3d(channels, volume * channels), Depth2Space3D(block)]


# ----- tokenizer -----

@AUTOENCODERS.register()
class NBPTokenizer(VideoTokenizer):
    """NBP's causal 3D CNN video tokenizer with FSQ (see the module docstring), a ``VideoTokenizer``. Its own
    methods ``encode_latents``, ``encode_clip`` and ``decode_clip`` take clips channels first, ``[B, 3, T, H, W]``,
    as the reference tokenizer does.

    Args (keyword-only; defaults are the released 128x128 tokenizer):
        image_size: frame height = width; fixes the token grid of flattened indices (``image_size / 8``).
        channels: widths of the three resolutions, finest first (128, 256, 512 released). The decoder's
            depth-to-space convolutions output ``8 * channels[2]``, ``8 * channels[1]`` and ``4 * channels[1]``.
        num_groups: GroupNorm groups.
        residual_units: residual units of the encoder's four stages, finest first (the decoder mirrors them); the
            released tokenizers have (4, 4, 4, 8), smaller counts make a shallow tokenizer that trains fast.
        fsq_levels: FSQ levels; their number is the latent width (no projections).
        checkpoint: a released ``magvit2_*.pt`` (or a plain state dict), or a checkpoint of the autoencoder
            trainer (or its ``checkpoints`` folder: the newest), loaded strictly (see
            ``far.utils.checkpoints.read_autoencoder_weights``). ``None`` leaves the weights random.
        spatial_compression: 8 (released), or 4 without the encoder's space-only downsampling and the decoder's
            last upsampling (every later stage then sees frames twice as wide and high).
    """

    temporal_compression = 4
    spatial_compressions = (8, 4)
    family = 'NBP-tokenizer'  # what samplers and trainers accept (autoencoder_families)

    @staticmethod
    def check_experiment(experiment, path: str):
        """A token model's video vocabulary is the codebook (the product of the FSQ levels), and the datasets'
        frames are the size the tokenizer was built for (see ``far.checks``)."""
        levels, size = experiment.settings(path)['fsq_levels'], experiment.settings(path)['image_size']
        vocabulary = (experiment.settings('model') or {}).get('video_vocab_size')
        codes = math.prod(levels)
        if vocabulary is not None and codes != vocabulary:
            experiment.fail('model.video_vocab_size', f'is {vocabulary}, but the codebook of {path}.fsq_levels '
                                                      f'{list(levels)} has {codes} codes; set model.video_vocab_size: '
                                                      f'{codes}')
        for key in experiment.options.datasets:
            where, resolution = experiment.dataset_option(key, 'resolution')
            if resolution is not None and resolution != size:
                experiment.fail(where, f'is {resolution}, but {path}.image_size is {size}: the tokenizer reads '
                                       f'{size}x{size} frames; set both to the same size')

    def __init__(self, *, image_size: int = 128, channels: Sequence[int] = (128, 256, 512), num_groups: int = 32,
                 residual_units: Sequence[int] = (4, 4, 4, 8), fsq_levels: Sequence[int] = (8, 8, 8, 5, 5, 5),
                 checkpoint: Optional[str] = None, spatial_compression: int = 8):
        super().__init__()
        if spatial_compression not in self.spatial_compressions:
            raise ValueError(f'NBPTokenizer: spatial_compression must be one of {list(self.spatial_compressions)}, '
                             f'got {spatial_compression}')
        self.spatial_compression = spatial_compression
        if len(channels) != 3 or image_size % spatial_compression:
            raise ValueError(f'NBPTokenizer: channels must list 3 widths and image_size be a multiple of '
                             f'{spatial_compression}, got channels={list(channels)}, image_size={image_size}')
        if len(residual_units) != 4 or min(residual_units) < 1:
            raise ValueError(f'NBPTokenizer: residual_units must list 4 counts >= 1, got {list(residual_units)}')
        c1, c2, c3 = channels
        self.image_size, self.channels, self.residual_units = image_size, (c1, c2, c3), tuple(residual_units)
        self.quantizer = FSQ(fsq_levels)
        # read before the layers are built, so that a missing file fails at once
        state = None if checkpoint is None else read_autoencoder_weights(checkpoint, DOWNLOAD_HINT)[1]
        with init_empty_weights() if state is not None else nullcontext():  # skip the random init of loaded weights
            self._build_layers(c1, c2, c3, num_groups, self.quantizer.dim)
        if state is not None:
            self._load(state, checkpoint)

    def _build_layers(self, c1: int, c2: int, c3: int, g: int, latent: int):
        n1, n2, n3, n4 = self.residual_units
        space_only = self.spatial_compression == 8  # the released layout halves space once more, alone
        self.encoder_layers = nn.ModuleList([
            CausalConv3d(self.in_channels, c1),
            *residual_units(c1, c1, n1, g),
            *([CausalConv3d(c1, c1, stride=(1, 2, 2))] if space_only else []),  # space / 2
            *residual_units(c1, c2, n2, g),
            CausalConv3d(c2, c2, stride=2),  # space and time / 2
            *residual_units(c2, c2, n3, g),
            CausalConv3d(c2, c2, stride=2),  # space and time / 2
            *residual_units(c2, c3, n4, g),
            GroupNorm3D(g, c3), Swish(c3),
            nn.Conv3d(c3, latent, 1),
        ])
        self.decoder_layers = nn.ModuleList([
            CausalConv3d(latent, c3),
            *residual_units(c3, c3, n4, g),
            *upsample(c3, (2, 2, 2)),
            *residual_units(c3, c2, n3, g),
            *upsample(c2, (2, 2, 2)),
            *residual_units(c2, c2, n2, g),
            *(upsample(c2, (1, 2, 2)) if space_only else []),
            *residual_units(c2, c1, n1, g),
            GroupNorm3D(g, c1), Swish(c1),
            CausalConv3d(c1, self.in_channels),
        ])

    def _load(self, state: Dict[str, torch.Tensor], checkpoint: str):
        try:
            self.load_state_dict(state, strict=True, assign=True)
        except RuntimeError as error:
            summary = ' '.join(str(error).split())
            raise ValueError(f'{checkpoint} does not fit NBPTokenizer(channels={self.channels}, residual_units='
                             f'{self.residual_units}, fsq_levels={self.quantizer.levels}, '
                             f'spatial_compression={self.spatial_compression}) (autoencoder keys `checkpoint`, '
                             f'`channels`, `fsq_levels`, `spatial_compression`): '
                             f'{summary[:500]}') from None

    @property
    def latent_channels(self) -> int:
        return self.quantizer.dim

    @property
    def codebook_size(self) -> int:
        return self.quantizer.codebook_size

    # ----- the reference's layout: clips [B, 3, T, H, W] -----

    def encode_latents(self, clip: torch.Tensor) -> torch.Tensor:
        """``[B, 3, T, H, W]`` in [0, 1] -> continuous latents ``[B, D, T', H/8, W/8]`` (before FSQ)."""
        if clip.ndim != 5 or clip.shape[1] != self.in_channels:
            raise ValueError(f'NBPTokenizer expects clips [B, 3, T, H, W] in [0, 1], got {tuple(clip.shape)}')
        r = self.spatial_compression
        if clip.shape[-2] % r or clip.shape[-1] % r:
            raise ValueError(f'NBPTokenizer: frame size {tuple(clip.shape[-2:])} is not a multiple of {r}')
        self.latent_frames(clip.shape[2])
        x = clip.to(self.encoder_layers[0].conv.weight.dtype)
        for layer in self.encoder_layers:
            x = layer(x)
        return x

    def encode_clip(self, clip: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``[B, 3, T, H, W]`` in [0, 1] -> (codes ``[B, D, T', h, w]``, indices int32 ``[B, T', h, w]``)."""
        return self.quantizer(self.encode_latents(clip))

    def decode_clip(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes ``[B, D, T', h, w]`` -> clip ``[B, 3, 4 (T' - 1) + 1, 8 h, 8 w]`` (not clamped)."""
        if codes.ndim != 5 or codes.shape[1] != self.latent_channels:
            raise ValueError(f'NBPTokenizer.decode_clip expects codes [B, {self.latent_channels}, T, h, w], '
                             f'got {tuple(codes.shape)}')
        x = codes.to(self.decoder_layers[0].conv.weight.dtype)
        for layer in self.decoder_layers:
            x = layer(x)
        return x

    def codes(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids ``[B, T', h, w]``, or flattened ``[B, T' h w]`` -> codes ``[B, D, T', h, w]``."""
        if ids.dtype not in (torch.int32, torch.int64):
            raise ValueError(f'NBPTokenizer expects int32/int64 token ids, got {ids.dtype}')
        if ids.ndim == 2:
            side = self.latent_size
            if ids.shape[1] % (side * side):
                raise ValueError(f'NBPTokenizer: {ids.shape[1]} flattened ids are not whole latent frames of '
                                 f'{side}x{side} tokens (image_size {self.image_size}); pass [B, T, h, w]')
            ids = ids.unflatten(1, (-1, side, side))
        if ids.ndim != 4:
            raise ValueError(f'NBPTokenizer expects token ids [B, T, h, w] or [B, N], got {tuple(ids.shape)}')
        return self.quantizer.indices_to_codes(ids)

    # ----- VideoTokenizer: videos [B, T, 3, H, W] -----

    @torch.no_grad()
    def encode_tokens(self, video: torch.Tensor) -> torch.Tensor:
        return self.encode_clip(video.transpose(1, 2))[1].long()

    @torch.no_grad()
    def decode_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        return self.decode_clip(self.codes(ids)).float().clamp(0, 1).transpose(1, 2)

    def trainable_weights(self) -> nn.Module:
        return self

    def training_encode(self, video: torch.Tensor) -> torch.Tensor:
        # FSQ has no codebook to learn: rounding passes gradients straight through
        return self.encode_clip((video.transpose(1, 2) + 1) / 2)[0]

    def training_decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.decode_clip(latents).transpose(1, 2) * 2 - 1

    def last_layer(self) -> torch.Tensor:
        return self.decoder_layers[-1].conv.weight

    def extra_repr(self) -> str:
        return (f'image_size={self.image_size}, latent_channels={self.latent_channels}, '
                f'codebook_size={self.codebook_size}, compression={self.temporal_compression}x'
                f'{self.spatial_compression}x{self.spatial_compression}')
