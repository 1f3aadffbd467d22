"""Training NBP: next-block cross-entropy on the tokens of a frozen NBP tokenizer, validated by prediction."""
from typing import Dict

import torch

from far.objectives import NextBlockObjective
from far.registry import TRAINERS
from far.trainers.base import OptimizerOptions
from far.trainers.generative import GenerativeTrainer


@TRAINERS.register()
class NBPTrainer(GenerativeTrainer):
    """Trains an ``NBPTransformer`` with :class:`NextBlockObjective` (next-block cross-entropy on shifted targets) over
    the tokens of the frozen ``VideoTokenizer`` (``NBPTokenizer``) of the ``autoencoder`` block.

    Items carry pixels (``'video'``, clips of 1 + 4 m frames, tokenized on the fly) or the tokens of token shards
    (``'tokens'``, read with ``use_tokens: true``, see ``scripts/extract_latents.py``), and ``'label'`` for a
    conditional model (a text condition looks the label up in its ``class_text_ids`` table).

    The optimizer default is the reference recipe: AdamW with betas (0.9, 0.95) and weight decay 0.01 on Linear
    weights only; with ``lr_schedule: {name: cosine, warmup_steps: N}``, ``max_grad_norm: 1.0`` and
    ``mixed_precision: bf16`` it trains as the paper did (``options/train/nbp/``). Other options: see
    ``GenerativeTrainer`` and ``Trainer``.
    """

    model_families = ('NBP',)
    autoencoder_families = ('NBP-tokenizer',)

    def __init__(self, *, optimizer: OptimizerOptions = OptimizerOptions(
            betas=(0.9, 0.95), weight_decay=0.01, decayed_modules=('Linear',)), **options):
        super().__init__(optimizer=optimizer, **options)
        self.objective = NextBlockObjective()

    def train_step(self, batch: dict, step: int) -> Dict[str, torch.Tensor]:
        model = self.accelerator.unwrap_model(self.model)
        if 'tokens' in batch:
            tokens = batch['tokens']
        else:
            with torch.no_grad(), self.accelerator.autocast():
                tokens = self.autoencoder.encode_tokens(batch['video'])
        condition = model.condition
        cond_ids = None if condition is None else condition.from_batch(batch)[condition.kind]
        return {'loss': self.objective(self.model, model, tokens, cond_ids)}
