"""Video files: uint8 conversion, context borders, H.264 encoding and decoding, GIF writing, and the mp4s of
the sample folders that training and evaluation write.

Two encoders, one setting: ``write_mp4`` writes files through imageio-ffmpeg's ffmpeg, the encoder FAR's
published evaluation used (``imageio.get_writer(path, fps=8)``, which leaves x264 at its default CRF 23, so
``reference_quirks`` round trips reproduce FAR's files byte for byte); ``encode_video`` encodes in memory with
PyAV (dataset shards, tests). Both use ``CRF`` unless told otherwise. PyAV decodes everything.

The codecs (``av``, ``imageio_ffmpeg``) are imported by the functions that use them: models, samplers and
metrics run without them.
"""
import io
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image

FPS = 8
CRF = 23  # x264's default, which FAR's writer leaves in place
MACRO_BLOCK = 16  # imageio-ffmpeg rescales frames whose sizes are not multiples of this
RED = (1.0, 0.0, 0.0)


# ----------------------------------------------------------------------------------------------------------
# Pixels
# ----------------------------------------------------------------------------------------------------------

def to_uint8(video: torch.Tensor) -> np.ndarray:
    """``[..., 3, H, W]`` in [0, 1] -> ``[..., H, W, 3]`` uint8, truncating (not rounding) as FAR does."""
    return (video.detach().float().clamp(0, 1) * 255).to(torch.uint8).movedim(-3, -1).cpu().numpy()


def draw_context_border(video: torch.Tensor, num_frames: int) -> torch.Tensor:
    """A copy of ``[..., F, 3, H, W]`` with a 1-pixel red frame around its first ``num_frames`` frames."""
    video = video.clone()
    red = torch.tensor(RED, dtype=video.dtype, device=video.device).view(3, 1, 1)
    context = video[..., :num_frames, :, :, :]  # a view: writing to it writes to the copy
    context[..., [0, -1], :] = red
    context[..., :, [0, -1]] = red
    return video


# ----------------------------------------------------------------------------------------------------------
# Encoding and decoding
# ----------------------------------------------------------------------------------------------------------

def _check_frames(frames: np.ndarray, where: str):
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f'{where} expects uint8 frames [T, H, W, 3], got {frames.dtype} {tuple(frames.shape)}')


def write_mp4(frames: np.ndarray, path: Union[str, Path], fps: int = FPS, crf: int = CRF) -> None:
    """``[T, H, W, 3]`` uint8 frames -> an H.264 (yuv420p) mp4 file, as FAR's evaluation wrote them.

    Sizes that are not multiples of 16 are rescaled by the encoder (as FAR's writer does).
    """
    import imageio_ffmpeg

    _check_frames(frames, 'write_mp4')
    height, width = frames.shape[1:3]
    writer = imageio_ffmpeg.write_frames(str(path), (width, height), fps=fps, codec='libx264',
                                         pix_fmt_out='yuv420p', quality=None, output_params=['-crf', str(crf)],
                                         macro_block_size=MACRO_BLOCK)
    writer.send(None)
    for frame in frames:
        writer.send(np.ascontiguousarray(frame))
    writer.close()


def encode_video(frames: np.ndarray, fps: int = FPS, crf: int = CRF) -> bytes:
    """``[T, H, W, 3]`` uint8 frames -> the bytes of an H.264 (yuv420p) mp4; H and W must be even."""
    import av

    _check_frames(frames, 'encode_video')
    height, width = frames.shape[1:3]
    if height % 2 or width % 2:
        raise ValueError(f'H.264 with yuv420p needs even sizes, got {height}x{width}')
    buffer = io.BytesIO()
    with av.open(buffer, 'w', format='mp4') as container:
        stream = container.add_stream('libx264', rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, 'yuv420p'
        stream.options = {'crf': str(crf)}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format='rgb24')))
        container.mux(stream.encode())
    return buffer.getvalue()


def decode_video(source: Union[str, Path, bytes]) -> np.ndarray:
    """All frames of a video file (a path, or the file's bytes) as uint8 ``[T, H, W, 3]`` RGB.

    A file that cannot be decoded raises ``ValueError`` (``OSError`` when it cannot be read at all).
    """
    return decode_video_and_rate(source)[0]


def decode_video_and_rate(source: Union[str, Path, bytes]) -> Tuple[np.ndarray, Optional[float]]:
    """``decode_video``'s frames and the stream's average frame rate (what decord's ``get_avg_fps`` reads), None
    when the file does not say."""
    import av

    try:
        with av.open(io.BytesIO(source) if isinstance(source, bytes) else str(source)) as container:
            stream = container.streams.video[0]
            stream.codec_context.thread_count = 1  # loader processes already run one per core
            rate = stream.average_rate or stream.guessed_rate
            frames = [frame.to_ndarray(format='rgb24') for frame in container.decode(stream)]
    except av.FFmpegError as error:
        if isinstance(error, OSError):
            raise
        raise ValueError(f'undecodable video: {error}') from error
    if not frames:
        raise ValueError('the video has no decodable frame')
    return np.stack(frames), (float(rate) if rate else None)


# ----------------------------------------------------------------------------------------------------------
# Sample folders
# ----------------------------------------------------------------------------------------------------------

def write_gif(frames: np.ndarray, path: Union[str, Path], fps: int = FPS):
    images = [Image.fromarray(frame) for frame in frames]
    images[0].save(str(path), save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)


def save_videos(samples: torch.Tensor, gt: torch.Tensor, names: Sequence[str], folder, context_length: int,
                fps: int = FPS) -> List[Path]:
    """Save sampled videos next to their ground truth, context frames framed in red.

    ``samples`` [B, n, F, 3, H, W] (n trajectories), ``gt`` [B, F, 3, H, W], in [0, 1]. Writes
    ``<name>.mp4`` per video (sample | ground truth side by side, the n trajectories one after the
    other); ``far.grids`` draws the pictures of several videos. Returns the mp4 paths.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    samples, gt = draw_context_border(samples, context_length), draw_context_border(gt, context_length)
    paired = to_uint8(torch.cat([samples, gt[:, None].expand_as(samples)], dim=-1))  # [B, n, F, H, 2W, 3]
    paths = []
    for name, video in zip(names, paired):
        paths.append(folder / f'{name}.mp4')
        write_mp4(video.reshape(-1, *video.shape[-3:]), paths[-1], fps)
    return paths
