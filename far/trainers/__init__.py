"""Trainers (registry TRAINERS): the shared training loop, the FAR trainer and the autoencoder trainer."""
from far.trainers.autoencoder_trainer import AutoencoderTrainer
from far.trainers.base import CheckpointOptions, LogOptions, LRScheduleOptions, OptimizerOptions, Trainer
from far.trainers.far_trainer import FARTrainer, ValidationOptions

__all__ = ['AutoencoderTrainer', 'CheckpointOptions', 'FARTrainer', 'LogOptions', 'LRScheduleOptions',
           'OptimizerOptions', 'Trainer', 'ValidationOptions']
