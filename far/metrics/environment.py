"""Versions that change evaluation numbers, recorded next to them in results.json."""
import platform
from importlib import metadata
from typing import Dict

import imageio_ffmpeg
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
    info['ffmpeg'] = imageio_ffmpeg.get_ffmpeg_version()
    info['device'] = torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or 'cpu'
    return info
