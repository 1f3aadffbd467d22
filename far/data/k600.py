"""Kinetics-600: YouTube clips of 600 human actions, NBP's frame-prediction benchmark (5 given frames, 12 predicted).

No archive of it is published with the project: lay the videos out in one of the two sources of
``far.data.layouts``, a JSON list (``k600_train.json`` / ``k600_val.json`` of records ``{"video_path": ...}``) or
tar shards (``{key}.mp4`` + ``{key}.json``; token shards of ``scripts/extract_latents.py`` with
``source: {type: shards, use_tokens: true}``). Items carry ``'video'`` only: NBP predicts K600 unconditionally.
A video shorter than ``read.num_frames`` is unreadable (no padding).

NBP's settings: clips of 17 frames at 128x128. Its loader resizes whole frames to 128x128 (aspect ratio not
kept) and reads the training videos at 16 fps; here ``resolution`` resizes the shorter side and crops a
square, and every ``frame_interval``-th stored frame is read: store the videos at the frame rate to train on.
"""
from far.data.dataset import VideoDataset
from far.registry import DATASETS

K600 = DATASETS.register(VideoDataset(name='K600', fields=(), pad_short=False,
                                      conditions={}), name='K600')
