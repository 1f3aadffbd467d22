"""What the per-frame metrics share: chunked scoring of video pairs and full-precision math."""
import contextlib
import math
from abc import ABC, abstractmethod
from typing import Iterator, Optional, Union

import torch


@contextlib.contextmanager
def exact_math() -> Iterator[None]:
    """float32 without TF32 and with deterministic cuDNN kernels, restored on exit.

    Evaluation must not depend on the GPU generation or on run-to-run kernel choice; TF32 also
    moves I3D features away from the TensorFlow numbers FVD is defined by.
    """
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
             torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
         torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark) = saved


class FrameMetric(ABC):
    """Scores every frame pair of two videos: ``[..., T, C, H, W]`` in [0,1] -> ``[..., T]``.

    ``gt`` may broadcast against ``sample`` (one ground truth for n trajectories) without being
    copied. Frames are scored ``batch_size`` at a time on ``device`` (default: the input's), and
    the scores come back as float32 on the CPU.
    """

    higher_is_better: bool

    def __init__(self, batch_size: int = 256):
        if batch_size < 1:
            raise ValueError(f'{type(self).__name__}: batch_size must be >= 1, got {batch_size}')
        self.batch_size = batch_size

    @abstractmethod
    def score(self, sample: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        """``[M,C,H,W]`` float32 pairs on one device -> ``[M]``."""

    @torch.no_grad()
    def __call__(self, sample: torch.Tensor, gt: torch.Tensor,
                 device: Optional[Union[str, torch.device]] = None) -> torch.Tensor:
        if sample.dim() < 4:
            raise ValueError(f'{type(self).__name__}: expected videos [..., T, C, H, W], got {tuple(sample.shape)}')
        try:
            gt = gt.expand_as(sample)
        except RuntimeError as error:
            raise ValueError(f'{type(self).__name__}: gt {tuple(gt.shape)} does not broadcast to sample '
                             f'{tuple(sample.shape)}') from error
        device = torch.device(device) if device is not None else sample.device
        lead, frame = sample.shape[:-3], sample.shape[-3:]
        # Chunk along the first dimension only: slicing there keeps the broadcast gt a view.
        rows = max(1, self.batch_size // math.prod(lead[1:]))
        scores = []
        with exact_math():
            for start in range(0, lead[0], rows):
                s = sample[start:start + rows].reshape(-1, *frame).to(device, torch.float32)
                g = gt[start:start + rows].reshape(-1, *frame).to(device, torch.float32)
                scores.append(self.score(s, g).float().cpu())
        return torch.cat(scores).reshape(lead)
