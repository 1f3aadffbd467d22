"""DMLab (TECO's 3D maze navigation): 64x64 videos of 300 frames with one of 4 actions per frame
(Hugging Face datasets ``guyuchao/DMLab`` and, pre-extracted DC-AE latents, ``guyuchao/DMLab_Latent``).

JSON layout, once the archives are extracted: ``dmlab_train.json`` / ``dmlab_val.json``. Pixel records
``{"video_path": "<...>.npz"}`` where the npz holds ``video`` (uint8 ``[300, 64, 64, 3]``) and ``actions``
(``[300]``); latent records ``{"latent_path": <torch.save'd [300, 32, 8, 8] tensor>, "action_path": <npz
with actions>}``. Items carry ``'video'`` (or ``'latent'`` with ``use_latent``) and ``'action'``, where
``action[t]`` is the action at frame ``t`` (the same frame indices select frames and actions).

A clip shorter than ``num_frames`` is unreadable (no padding). FAR's reference implementation raises in
training when ``frame_interval`` does not fit the clip; here such a clip falls back to consecutive frames,
as its UCF-101 loader does (the published configs use interval 1, where the two agree). FAR evaluates on
the first 256 videos of ``dmlab_val.json``, 300 frames each.
"""
from far.data.dataset import VideoDataset
from far.registry import DATASETS

NUM_ACTIONS = 4

DMLab = DATASETS.register(VideoDataset(name='DMLab', fields=('action',), pad_short=False,
                                       conditions={'action': NUM_ACTIONS}), name='DMLab')
