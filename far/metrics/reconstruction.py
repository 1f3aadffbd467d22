"""Scoring an autoencoder's reconstructions (``ReconstructionProtocol``, alias ``reconstruction``): test.py on an
autoencoder or tokenizer experiment, no model sampled.

Every video of the list (or the first ``num_videos``) is encoded and decoded whole; PSNR, SSIM and LPIPS compare
each reconstructed frame with the original, FVD the two sets (the rFVD of a tokenizer). ``reference_quirks: true`` is
the protocol of NBP's ``tokenizer_eval.py``: the videos are truncated to uint8 frames (``(x * 255).byte()``) before
they are scored; the float scores are reported beside them as ``<name>_quirk_free``.
"""
from typing import Optional, Sequence, Tuple

import torch

from ..registry import AUTOENCODERS, PROTOCOLS
from .protocols import MetricEntry, Protocol


def uint8_frames(video: torch.Tensor) -> torch.Tensor:
    """``video`` in [0, 1] truncated to 256 levels, as NBP's tokenizer evaluation stores frames (still in [0, 1])."""
    return (video.clamp(0, 1) * 255).to(torch.uint8).float() / 255


@PROTOCOLS.register(aliases=('reconstruction',))
class ReconstructionProtocol(Protocol):
    """Reconstructions of ``num_videos`` clips (null: the whole list) of ``num_frames`` frames: every frame scored by
    the per-frame metrics (mean over frames, then over videos), FVD between the reconstructed and the original set.
    """

    name = 'reconstruction'
    reconstructs = True
    metric_quirks = False  # FAR's metric quirks are not NBP's
    fixed_kwargs = {'context_length': 0, 'unroll_length': None, 'num_trajectories': 1, 'seeds': (0, ),
                    'annotate_context': False}

    def __init__(self, *, num_frames: int = 17, num_videos: Optional[int] = None,
                 metrics: Sequence[MetricEntry] = ('psnr', 'ssim', 'lpips', 'fvd'), **options):
        super().__init__(context_length=0, unroll_length=num_frames, num_videos=num_videos, metrics=metrics,
                         **options)

    def published_videos(self, samples: torch.Tensor, gt: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return uint8_frames(samples), uint8_frames(gt)

    def quirks(self) -> dict:
        return {'uint8_frames': '(x * 255).byte() / 255 before scoring' if self.reference_quirks else None}

    @staticmethod
    def check_experiment(experiment, path: str):
        """No sampler; clips of the autoencoder's frame counts (1 + r m) and at least ``num_frames`` long."""
        test = experiment.options.test
        frames = test.protocol.settings['num_frames']
        if test.sampler is not None:
            experiment.fail('test.sampler', f"{path}.type {test.protocol['type']} scores the autoencoder's "
                                            'reconstructions and samples no model: remove test.sampler')
        autoencoder = experiment.options.autoencoder['type']
        rate = getattr(AUTOENCODERS.entry_class(autoencoder), 'temporal_compression', 1)
        if (frames - 1) % rate:
            experiment.fail(f'{path}.num_frames', f'is {frames}, but autoencoder {autoencoder} compresses time by '
                                                  f'{rate} and encodes 1 + {rate} m frames; change it')
        key_path, length = experiment.dataset_option(test.dataset, 'clip_length')
        if isinstance(length, int) and length < frames:
            experiment.fail(key_path, f'is {length}, but {path}.num_frames is {frames}; lengthen the clips')
