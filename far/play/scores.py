"""How close a stream's frames are to others': the mean squared error of 8-bit frames and its PSNR."""
import numpy as np


def squared_error(frame: np.ndarray, truth: np.ndarray) -> float:
    """The mean squared error of two uint8 frames, on [0, 1]."""
    return float(np.mean((frame.astype(np.float64) / 255 - truth.astype(np.float64) / 255) ** 2))


def psnr(errors: list):
    """The PSNR of the mean squared error of frames (``'exact'`` when every frame is the truth's)."""
    error = float(np.mean(errors)) if errors else None
    return None if error is None else 'exact' if error == 0 else round(10 * float(np.log10(1 / error)), 2)
