"""UCF-101: 13,320 videos of 101 human actions, class-labelled (Hugging Face dataset ``guyuchao/UCF101``).

JSON layout, once the archive is extracted: ``trainval.json`` (every video; class-conditional and
unconditional generation), ``train03.json`` / ``test03.json`` (split 3; short-video prediction); records
``{"video_path": ..., "label": 0..100}``. Items carry ``'video'`` and ``'label'``. A video shorter than
``num_frames`` is padded with black frames, as FAR does.

FAR's configs read 16 frames at ``frame_interval: 3``, ``resolution: 128`` or ``256`` and ``flip`` in
training for generation, and 16 frames at interval 1, ``resolution: 64`` for prediction. The evaluation
subsets (MCVD: every tenth video of ``test03.json``; Latte: a class-balanced draw from ``trainval.json``) are
chosen by the evaluation protocols from this dataset's fixed order and ``labels``.
"""
from far.data.layouts import video_dataset
from far.registry import DATASETS, variant

NUM_CLASSES = 101

UCF101 = DATASETS.register(variant(
    video_dataset, 'UCF101', dataset='UCF101', fields=('label',), pad_short=True,
    doc='UCF-101 clips with class labels; keys as far.data.layouts.video_dataset.'))
UCF101.conditions = {'label': NUM_CLASSES}  # what items carry (checked against the model's)
UCF101.clip_length_option, UCF101.resolution_option = 'num_frames', 'resolution'

