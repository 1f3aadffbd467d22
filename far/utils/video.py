"""Writing sampled videos: mp4 per video, a PNG grid and an animated GIF, context frames marked in red."""
from pathlib import Path
from typing import List, Sequence

import imageio
import numpy as np
import torch
from PIL import Image

RED = (1.0, 0.0, 0.0)


def mark_context(video: torch.Tensor, context_length: int) -> torch.Tensor:
    """A copy of ``video`` [..., F, 3, H, W] with a 1-pixel red border on its first ``context_length`` frames."""
    video = video.clone()
    context = video[..., :context_length, :, :, :]
    for channel, value in enumerate(RED):
        context[..., channel, [0, -1], :] = value
        context[..., channel, :, [0, -1]] = value
    return video


def to_uint8(video: torch.Tensor) -> np.ndarray:
    """[..., 3, H, W] in [0, 1] -> [..., H, W, 3] uint8 (truncated, as the published evaluation does)."""
    return (video.detach().float().clamp(0, 1) * 255).to(torch.uint8).movedim(-3, -1).cpu().numpy()


def write_mp4(frames: np.ndarray, path, fps: int = 8):
    """``frames`` [T, H, W, 3] uint8 -> H.264 mp4 (imageio's default quality, CRF 25, yuv420p)."""
    with imageio.get_writer(str(path), fps=fps) as writer:
        for frame in frames:
            writer.append_data(frame)


def write_gif(frames: np.ndarray, path, fps: int = 8):
    images = [Image.fromarray(frame) for frame in frames]
    images[0].save(str(path), save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)


def save_videos(samples: torch.Tensor, gt: torch.Tensor, names: Sequence[str], folder, context_length: int,
                fps: int = 8) -> List[Path]:
    """Save sampled videos next to their ground truth, context frames marked.

    ``samples`` [B, n, F, 3, H, W] (n trajectories), ``gt`` [B, F, 3, H, W], in [0, 1]. Writes
    ``<name>.mp4`` per video (sample | ground truth side by side, the n trajectories one after the
    other), ``grid.png`` (frames left to right; per video its first trajectory above the ground truth)
    and ``grid.gif`` (all videos at once). Returns the mp4 paths.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    samples, gt = mark_context(samples, context_length), mark_context(gt, context_length)
    paired = to_uint8(torch.cat([samples, gt[:, None].expand_as(samples)], dim=-1))  # [B, n, F, H, 2W, 3]
    paths = []
    for name, video in zip(names, paired):
        paths.append(folder / f'{name}.mp4')
        write_mp4(video.reshape(-1, *video.shape[-3:]), paths[-1], fps)

    rows = to_uint8(torch.stack([samples[:, 0], gt], dim=1).flatten(0, 1))  # [2B, F, H, W, 3]
    r, f, h, w, _ = rows.shape
    Image.fromarray(rows.transpose(0, 2, 1, 3, 4).reshape(r * h, f * w, 3)).save(folder / 'grid.png')
    write_gif(np.concatenate(paired[:, 0], axis=1), folder / 'grid.gif', fps)
    return paths
