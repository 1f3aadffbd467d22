"""Minecraft (TECO's Minecraft navigation): 128x128 videos of 300 frames with one of 4 actions per frame
(Hugging Face datasets ``guyuchao/Minecraft`` and, pre-extracted DC-AE latents, ``guyuchao/Minecraft_Latent``).

JSON layout, once the archives are extracted: ``minecraft_train.json`` / ``minecraft_val.json``. Pixel
records ``{"video_path": <mp4>, "action_path": <npz with actions [300]>}``; latent records
``{"latent_path": <torch.save'd [300, 32, 8, 8] tensor>, "action_path": ...}``. Items carry ``'video'`` (or
``'latent'`` with ``use_latent``) and ``'action'``, ``action[t]`` being the action at frame ``t``.

Frame rules as DMLab: a clip shorter than ``num_frames`` is unreadable; evaluation reads the first 300
frames of the first 256 videos of ``minecraft_val.json``.
"""
from far.data.dataset import VideoDataset
from far.registry import DATASETS

NUM_ACTIONS = 4

Minecraft = DATASETS.register(VideoDataset(name='Minecraft', fields=('action',), pad_short=False,
                                           conditions={'action': NUM_ACTIONS}), name='Minecraft')
