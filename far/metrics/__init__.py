"""Video metrics (registry ``METRICS``) and the evaluation protocols of FAR's tables (``PROTOCOLS``).

Metrics take videos ``[N,T,3,H,W]`` in [0,1] and declare what they need (``base.Metric``): ``mse``, ``psnr``,
``ssim`` and ``lpips`` return per-frame scores ``[N,T]``, ``mean_intensity`` and ``mean_intensity_gt`` the per-frame
mean pixel value of the prediction and of the ground truth; ``fvd`` compares two sets of videos and returns a float.
Weight files for LPIPS and I3D are found as described in ``far.metrics.weights``.
"""
from .base import FrameMetric, Metric, exact_math
from .environment import environment_info
from .fvd import FVD, frechet_distance
from .i3d import InceptionI3d, load_i3d
from .lpips import LPIPS, LPIPSMetric
from .memory import MemoryProtocol
from .nbp_reference import NBPReferenceProtocol
from .pixel import MSE, PSNR, SSIM
from .protocols import LatteProtocol, MCVDProtocol, Protocol, TECOProtocol
from .reconstruction import ReconstructionProtocol
from .rollout import RolloutProtocol
from .round_trip import mp4_round_trip, paired_mp4_round_trip
from .weights import MissingWeightsError, resolve_weights

__all__ = [
    'FrameMetric', 'Metric', 'exact_math', 'environment_info', 'FVD', 'frechet_distance', 'InceptionI3d', 'load_i3d',
    'LPIPS', 'LPIPSMetric', 'MemoryProtocol', 'NBPReferenceProtocol', 'MSE', 'PSNR', 'SSIM', 'LatteProtocol',
    'MCVDProtocol', 'Protocol',
    'TECOProtocol', 'ReconstructionProtocol',
    'RolloutProtocol', 'mp4_round_trip', 'paired_mp4_round_trip', 'MissingWeightsError', 'resolve_weights',
]
