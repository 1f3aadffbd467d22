"""The H.264 round trip FAR's published numbers went through, for like-for-like comparisons.

FAR saves each evaluated video as one mp4 (sample | ground truth side by side, all trajectories
one after another, the context frames optionally framed in red), decodes the files again and
computes every metric on the decoded frames. ``paired_mp4_round_trip`` redoes exactly that:
``(clip(0,1)*255)`` truncated to uint8, encoded by imageio-ffmpeg's libx264 (yuv420p, 8 fps),
decoded with PyAV to RGB and divided by 255.

FAR writes with ``imageio.get_writer(path, fps=8)``. With the imageio it pins (2.37), that passes no
quality setting to ffmpeg, so x264 runs at its default CRF 23 (not the CRF 25 that imageio's
documented ``quality=5`` would give); ``write_mp4`` produces byte-identical files. The encoder's
output can still vary slightly across x264 builds and thread counts.
"""
import tempfile
from pathlib import Path
from typing import Tuple, Union

import av
import imageio_ffmpeg
import numpy as np
import torch

FPS = 8
CRF = 23  # x264's default, which FAR's imageio.get_writer call leaves in place
MACRO_BLOCK = 16  # imageio would rescale other sizes, which no longer splits back into two videos


def to_uint8(video: torch.Tensor) -> np.ndarray:
    """``[T,C,H,W]`` in [0,1] -> ``[T,H,W,C]`` uint8, truncating (not rounding) as FAR does."""
    return (video.detach().float().clamp(0, 1) * 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def write_mp4(frames: np.ndarray, path: Union[str, Path], fps: int = FPS, crf: int = CRF) -> None:
    """Encode ``[T,H,W,3]`` uint8 frames (H, W divisible by 16) with libx264, yuv420p."""
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f'write_mp4 expects [T,H,W,3] uint8 frames, got {frames.shape} {frames.dtype}')
    height, width = frames.shape[1:3]
    if height % MACRO_BLOCK or width % MACRO_BLOCK:
        raise ValueError(f'write_mp4: frame size {height}x{width} must be divisible by {MACRO_BLOCK}')
    writer = imageio_ffmpeg.write_frames(str(path), (width, height), fps=fps, codec='libx264',
                                         pix_fmt_out='yuv420p', quality=None, output_params=['-crf', str(crf)],
                                         macro_block_size=MACRO_BLOCK)
    writer.send(None)
    for frame in frames:
        writer.send(np.ascontiguousarray(frame))
    writer.close()


def read_mp4(path: Union[str, Path]) -> np.ndarray:
    """Decode every frame of an mp4 to ``[T,H,W,3]`` uint8 RGB."""
    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format='rgb24') for frame in container.decode(video=0)])


def mp4_round_trip(video: torch.Tensor, fps: int = FPS, crf: int = CRF) -> torch.Tensor:
    """``[T,C,H,W]`` in [0,1] -> the same video after uint8 truncation and H.264 (float32, CPU)."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / 'video.mp4'
        write_mp4(to_uint8(video), path, fps, crf)
        frames = read_mp4(path)
    if len(frames) != len(video):
        raise RuntimeError(f'mp4 round trip returned {len(frames)} frames for {len(video)}')
    return torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0


def draw_context_border(video: torch.Tensor, num_frames: int) -> torch.Tensor:
    """A copy of ``[..., F, 3, H, W]`` with a 1-px red frame around its first ``num_frames`` frames."""
    video = video.clone()
    red = torch.tensor([1.0, 0.0, 0.0], dtype=video.dtype, device=video.device).view(3, 1, 1)
    context = video[..., :num_frames, :, :, :]  # a view: writing to it writes to the copy
    context[..., [0, -1], :] = red
    context[..., :, [0, -1]] = red
    return video


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
