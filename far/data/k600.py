"""Kinetics-600: YouTube clips of 600 human actions, NBP's frame-prediction benchmark (5 given frames, 12 predicted).

No archive of it is published with the project: lay the videos out in one of the two sources of
``far.data.layouts``, a JSON list (records ``{"video_path": ...}``; NBP's validation list ships as
``options/data_lists/k600_val.json``, naming ``datasets/k600/val/<id>.mp4``) or tar shards (``{key}.mp4`` +
``{key}.json``; token shards of ``scripts/extract_latents.py`` with ``source: {type: shards, use_tokens: true}``).
Items carry ``'video'`` only: NBP predicts K600 unconditionally. A video shorter than ``read.num_frames`` (at
``read.fps``) is unreadable (no padding).

NBP's settings: clips of 17 frames, whole frames squashed to 128x128 (``resize: squash``), the videos resampled to
16 fps in training (``fps: 16``) and to 25 fps with random clips in its gFVD evaluation.
"""
from far.data.dataset import VideoDataset
from far.registry import DATASETS

K600 = DATASETS.register(VideoDataset(name='K600', fields=(), pad_short=False,
                                      conditions={}), name='K600')
