"""The H.264 round trip FAR's published numbers went through, for like-for-like comparisons.

FAR saves each evaluated video as one mp4 (sample | ground truth side by side, all trajectories
one after another, the context frames optionally framed in red), decodes the files again and
computes every metric on the decoded frames. ``paired_mp4_round_trip`` redoes exactly that with the
writer of ``far.video`` (truncation to uint8, FAR's encoder and settings, PyAV decoding, /255). The
encoder's output can still vary slightly across x264 builds and thread counts.
"""
import tempfile
from pathlib import Path
from typing import Tuple

import torch

from ..video import CRF, FPS, MACRO_BLOCK, decode_video, draw_context_border, to_uint8, write_mp4


def mp4_round_trip(video: torch.Tensor, fps: int = FPS, crf: int = CRF) -> torch.Tensor:
    """``[T,C,H,W]`` in [0,1] (H, W multiples of 16) -> the same video after uint8 truncation and H.264
    (float32, CPU)."""
    height, width = video.shape[-2:]
    if height % MACRO_BLOCK or width % MACRO_BLOCK:
        raise ValueError(f'mp4 round trip: frame size {height}x{width} must be divisible by {MACRO_BLOCK} (other '
                         'sizes are rescaled by the encoder and no longer split back into sample and ground truth)')
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / 'video.mp4'
        write_mp4(to_uint8(video), path, fps, crf)
        frames = decode_video(path)
    if len(frames) != len(video):
        raise RuntimeError(f'mp4 round trip returned {len(frames)} frames for {len(video)}')
    return torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0


def paired_mp4_round_trip(samples: torch.Tensor, gt: torch.Tensor,
                          border_frames: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """FAR's save-and-reload of ``samples [B,n,F,3,H,W]`` with their ``gt [B,F,3,H,W]``.

    Returns both as ``[B,n,F,3,H,W]`` float32 on the CPU; the ground truth now differs per
    trajectory because each copy was compressed in its own place in the file. ``border_frames``
    context frames of both get the red frame first (0: none).
    """
    batch, trajectories, frames = samples.shape[:3]
    if gt.shape != (batch, *samples.shape[2:]):
        raise ValueError(f'paired_mp4_round_trip: gt {tuple(gt.shape)} does not match samples {tuple(samples.shape)}')
    gt = gt.unsqueeze(1).expand_as(samples)
    if border_frames:
        samples, gt = draw_context_border(samples, border_frames), draw_context_border(gt, border_frames)
    decoded = torch.stack([mp4_round_trip(torch.cat([samples[b], gt[b]], dim=-1).flatten(0, 1))
                           for b in range(batch)])
    sample_half, gt_half = decoded.unflatten(1, (trajectories, frames)).chunk(2, dim=-1)
    return sample_half.contiguous(), gt_half.contiguous()
