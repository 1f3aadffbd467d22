"""Minecraft (TECO's Minecraft navigation): 128x128 videos of 300 frames with one of 4 actions per frame
(Hugging Face datasets ``guyuchao/Minecraft`` and, pre-extracted DC-AE latents, ``guyuchao/Minecraft_Latent``).

JSON layout, once the archives are extracted: ``minecraft_train.json`` / ``minecraft_val.json``. Pixel
records ``{"video_path": <mp4>, "action_path": <npz with actions [300]>}``; latent records
``{"latent_path": <torch.save'd [300, 32, 8, 8] tensor>, "action_path": ...}``. Items carry ``'video'`` (or
``'latent'`` with ``use_latent``) and ``'action'``, ``action[t]`` being the action at frame ``t``.

Frame rules as DMLab: a clip shorter than ``num_frames`` is unreadable; evaluation reads the first 300
frames of the first 256 videos of ``minecraft_val.json``.
"""
from far.data.layouts import video_dataset
from far.registry import DATASETS, variant

NUM_ACTIONS = 4

Minecraft = DATASETS.register(variant(
    video_dataset, 'Minecraft', dataset='Minecraft', fields=('action',), pad_short=False,
    doc='Minecraft videos or latents with per-frame actions; keys as far.data.layouts.video_dataset.'))
Minecraft.conditions = {'action': NUM_ACTIONS}  # what items carry (checked against the model's)
Minecraft.clip_length_option, Minecraft.resolution_option = 'num_frames', 'resolution'

