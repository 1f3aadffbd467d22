"""BAIR robot pushing: 64x64 videos of 30 frames (Hugging Face dataset ``guyuchao/BAIR``).

JSON layout, once the archive is extracted: ``bair_train.json`` / ``bair_val.json``; records
``{"video_path": ..., "action_path": ...}``. Items carry ``'video'`` only: BAIR's actions are continuous
robot commands and FAR predicts BAIR unconditionally, so (as in FAR's reference implementation)
``action_path`` is not read. A video shorter than ``num_frames`` is padded with black frames, as FAR does.

FAR evaluates on the first 256 videos of ``bair_val.json`` with 30 frames (2 context, 28
predicted) or 16 (2 -> 14). Its evaluation always reads consecutive frames whatever ``frame_interval`` says;
here ``frame_interval`` holds in both modes (every published BAIR config uses 1, where the two agree).
"""
from far.data.dataset import VideoDataset
from far.registry import DATASETS

BAIR = DATASETS.register(VideoDataset(name='BAIR', fields=(), pad_short=True,
                                      conditions={}), name='BAIR')
