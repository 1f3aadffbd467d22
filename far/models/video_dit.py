"""Video DiT: FAR's transformer attending over the whole clip, the video diffusion baseline FAR is measured
against ("Video DiT" in the FAR paper: FAR with full attention and one noise level per clip).

The modules, parameters and inputs are FAR's (the same ``FARBlock``, embeddings, 3-axis RoPE, adaLN output),
so a VideoDiT has exactly the parameter count of the FAR built from the same arguments. Only attention
differs: every token attends to every token of the clip, later frames included. It is trained with one
noise level for all noised frames of a clip (``far.objectives.ClipFlowMatchingObjective``) and sampled a
window of frames at a time, the context frames kept clean at timestep -1 (``far.pipelines.VideoDiTPipeline``).
"""
from typing import Sequence

import torch

from ..registry import MODELS
from .attention import FullAttention, Segment
from .frame_transformer import FrameTransformer

_FULL_ATTENTION = FullAttention()  # stateless: one instance serves every layout


@MODELS.register()
class VideoDiT(FrameTransformer):
    """FAR's transformer with bidirectional attention over the clip. Arguments as :class:`FAR`; ``slope_scale`` must
    stay 0 (a causal bias). No KV cache: every frame attends to frames still being denoised."""

    attention = 'full'
    family = 'VideoDiT'

    def attention_for(self, q_segments: Sequence[Segment], k_segments: Sequence[Segment], device: torch.device,
                      slope: float) -> FullAttention:
        if slope:
            raise ValueError(f'VideoDiT: slope_scale is {slope}, a bias towards earlier frames; a '
                             f'VideoDiT attends to all frames alike: set it to 0')
        return _FULL_ATTENTION
