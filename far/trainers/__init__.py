"""Trainers (registry TRAINERS): the shared training loop, generative trainers validated through their sampler
(FAR, Video DiT, NBP), and the autoencoder trainer (DC-AE, NBP tokenizer)."""
from far.trainers.autoencoder_trainer import AutoencoderTrainer, ReconstructionValidation
from far.trainers.base import CheckpointOptions, LogOptions, LRScheduleOptions, OptimizerOptions, Trainer
from far.trainers.far_trainer import FARTrainer
from far.trainers.generative import GenerativeTrainer, ValidationOptions
from far.trainers.guards import FaultOptions
from far.trainers.nbp_trainer import NBPTrainer
from far.trainers.video_dit_trainer import VideoDiTTrainer

__all__ = ['AutoencoderTrainer', 'CheckpointOptions', 'FARTrainer', 'FaultOptions', 'GenerativeTrainer', 'LogOptions',
           'LRScheduleOptions', 'NBPTrainer', 'OptimizerOptions', 'ReconstructionValidation', 'Trainer',
           'ValidationOptions', 'VideoDiTTrainer']
