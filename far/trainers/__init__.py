"""Trainers (registry TRAINERS): the shared training loop, generative trainers validated through their sampler
(FAR), and the autoencoder trainer."""
from far.trainers.autoencoder_trainer import AutoencoderTrainer, ReconstructionValidation
from far.trainers.base import CheckpointOptions, LogOptions, LRScheduleOptions, OptimizerOptions, Trainer
from far.trainers.far_trainer import FARTrainer
from far.trainers.generative import GenerativeTrainer, ValidationOptions
from far.trainers.guards import FaultOptions

__all__ = ['AutoencoderTrainer', 'CheckpointOptions', 'FARTrainer', 'FaultOptions', 'GenerativeTrainer', 'LogOptions',
           'LRScheduleOptions', 'OptimizerOptions', 'ReconstructionValidation', 'Trainer', 'ValidationOptions']
