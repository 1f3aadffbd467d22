"""Versions that change evaluation numbers, recorded next to them in results.json."""
import platform
from importlib import metadata
from typing import Dict

import torch

_PACKAGES = ('torch', 'torchmetrics', 'diffusers', 'av', 'imageio-ffmpeg', 'numpy', 'scipy')


def environment_info() -> Dict[str, str]:
    """Python and package versions, the ffmpeg used for the mp4 round trip, and the compute device."""
    info = {'python': platform.python_version()}
    for package in _PACKAGES:
        try:
            info[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            info[package] = 'not installed'
    try:
        import imageio_ffmpeg
        info['ffmpeg'] = imageio_ffmpeg.get_ffmpeg_version()
    except ImportError:
        info['ffmpeg'] = 'not installed'
    info['device'] = torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or 'cpu'
    return info
