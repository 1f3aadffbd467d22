"""What a metric declares to the protocols, what the per-frame metrics share (chunked scoring of video pairs and the
choice of a trajectory per video), and full-precision math."""
import contextlib
import math
from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar, Dict, Iterator, Literal, Optional, Union

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


class Metric(ABC):
    """What a protocol asks of a metric (registry ``METRICS``); a new metric declares these and nothing else changes.

    ``name``: its key in the results. ``needs``: ``'frames'`` (pairs of predicted frames, scored one by one, see
    :class:`FrameMetric`) or ``'videos'`` (whole videos, context included, compared as two sets, see
    ``far.metrics.fvd.FVD``). ``aggregation``: how a protocol reduces its scores, as results.json records it.
    ``weight_files``: the network weights it loaded, ``{name: path}``. ``quirk``: how FAR's published numbers
    computed the metric differently (``reference_quirks``), if they did.
    """

    name: ClassVar[str]
    needs: ClassVar[Literal['frames', 'videos']]
    weight_files: Dict[str, Path] = {}
    quirk: ClassVar[Optional[str]] = None

    @property
    @abstractmethod
    def aggregation(self) -> str:
        """How a protocol reduces the metric's scores, in words."""

    def problem(self, *, frames: int, videos: Optional[int]) -> Optional[str]:
        """Why the metric cannot score ``videos`` videos (None: unknown yet) of ``frames`` frames; None if it can."""
        return None


class FrameMetric(Metric):
    """Scores every frame pair of two videos: ``[..., T, C, H, W]`` in [0,1] -> ``[..., T]``.

    ``gt`` may broadcast against ``sample`` (one ground truth for n trajectories) without being
    copied. Frames are scored ``batch_size`` at a time on ``device`` (default: the input's), and
    the scores come back as float32 on the CPU. A protocol keeps, per video, the ``trajectory``
    (``'best'`` or ``'worst'``) ranked by its mean over frames.
    """

    needs = 'frames'
    higher_is_better: ClassVar[bool]
    trajectory: Literal['best', 'worst'] = 'best'

    def __init__(self, batch_size: int = 256):
        if batch_size < 1:
            raise ValueError(f'{type(self).__name__}: batch_size must be >= 1, got {batch_size}')
        self.batch_size = batch_size

    @property
    def aggregation(self) -> str:
        return f'predicted frames; mean over frames; {self.trajectory} trajectory per video; mean over videos'

    def published(self) -> Dict[str, 'FrameMetric']:
        """Result key -> the metric as FAR's published numbers computed it (``reference_quirks``), with any
        correctly computed value reported beside it."""
        return {self.name: self}

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

    def chosen_trajectories(self, samples: torch.Tensor, gt: torch.Tensor,
                            device: Optional[Union[str, torch.device]] = None) -> torch.Tensor:
        """``samples [B,n,F,C,H,W]``, ``gt [B,F,C,H,W]`` or ``[B,n,F,C,H,W]`` -> the per-frame scores ``[B, F]``
        (float64) of each video's chosen trajectory."""
        gt = gt if gt.dim() == samples.dim() else gt.unsqueeze(1)  # one ground truth for all trajectories
        scores = self(samples, gt, device).double()  # [B, n, F]
        per_trajectory = scores.mean(dim=-1)
        take_max = self.higher_is_better == (self.trajectory == 'best')
        chosen = per_trajectory.argmax(dim=1) if take_max else per_trajectory.argmin(dim=1)
        return scores[torch.arange(len(scores)), chosen]
