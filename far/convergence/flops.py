"""Training compute of an experiment: the FLOPs of its trainer's step on one clip, counted by PyTorch's
``FlopCounterMode`` (matrix products, convolutions and attention; forward and backward; a frozen autoencoder's
encoding included), not estimated from formulas, so every model family is measured the same way."""
import tempfile
from dataclasses import dataclass

import torch
from torch.utils.data import default_collate
from torch.utils.flop_counter import FlopCounterMode

from far.experiment import ExperimentOptions
from far.run import build_trainer
from far.utils.distributed import make_accelerator


@dataclass(frozen=True)
class StepCost:
    parameters: int       # trained parameters
    flops_per_clip: int   # one training clip through the trainer's step, forward and backward


def measure_step(options: ExperimentOptions, file: str) -> StepCost:
    """Build the experiment's trainer as train.py does and count one step on the first training clip."""
    accelerator = make_accelerator(options.mixed_precision)
    with tempfile.TemporaryDirectory() as folder:
        trainer = build_trainer(options=options, file=file, accelerator=accelerator, folder=folder, config={})
        model = trainer.model.to(accelerator.device).train()
        batch = {key: value.to(accelerator.device) if torch.is_tensor(value) else value
                 for key, value in default_collate([trainer.datasets['train'][0]]).items()}
        with FlopCounterMode(display=False) as counter:
            trainer.train_step(batch, 0)['loss'].backward()
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return StepCost(trained, counter.get_total_flops())
