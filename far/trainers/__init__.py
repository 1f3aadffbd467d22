"""Trainers (registry TRAINERS): the shared training loop, the FAR trainer and the autoencoder trainer."""
from far.trainers.autoencoder_trainer import AutoencoderTrainer
from far.trainers.base import CheckpointOptions, LogOptions, LRScheduleOptions, OptimizerOptions, Trainer
from far.trainers.far_trainer import FARTrainer, ValidationOptions
from far.trainers.guards import FaultOptions

__all__ = ['AutoencoderTrainer', 'CheckpointOptions', 'FARTrainer', 'FaultOptions', 'LogOptions', 'LRScheduleOptions',
           'OptimizerOptions', 'Trainer', 'ValidationOptions']
