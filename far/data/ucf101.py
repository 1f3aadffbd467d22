"""UCF-101: 13,320 videos of 101 human actions, class-labelled (Hugging Face dataset ``guyuchao/UCF101``).

JSON layout, once the archive is extracted: ``trainval.json`` (every video; class-conditional and
unconditional generation), ``train03.json`` / ``test03.json`` (split 3; short-video prediction); records
``{"video_path": ..., "label": 0..100}``. NBP's lists of split 1 ship as ``options/data_lists/ucf101_split1_*.json``
(``datasets/ucf101/UCF-101/<Class>/<file>.avi``, labels in sorted folder order). Items carry ``'video'`` and
``'label'``. A video shorter than ``num_frames`` is padded with black frames, as FAR and NBP do.

FAR's configs read 16 frames at ``frame_interval: 3``, ``resolution: 128`` or ``256`` and ``flip`` in
training for generation, and 16 frames at interval 1, ``resolution: 64`` for prediction; NBP's read 17 frames of the
videos resampled to ``fps: 8``, squashed to 128x128. The evaluation subsets (MCVD: every tenth video of
``test03.json``; Latte: a class-balanced draw from ``trainval.json``; NBP's cycled draw from split 1's training
list) are chosen by the evaluation protocols from this dataset's fixed order and ``labels``.
"""
from far.data.dataset import VideoDataset
from far.registry import DATASETS

NUM_CLASSES = 101

UCF101 = DATASETS.register(VideoDataset(name='UCF101', fields=('label',), pad_short=True,
                                        conditions={'label': NUM_CLASSES}), name='UCF101')
