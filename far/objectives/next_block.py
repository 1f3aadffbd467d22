"""Next-block prediction, the objective NBP is trained with (``far.models.NBPTransformer``).

The model reads the whole token layout of a video without its last block and predicts, at every position, the token
at the same position of the next block (``model.input_ids``, ``model.targets``); the loss is the mean cross-entropy
of every prediction over the whole vocabulary. With the model's ``condition_dropout``, each training sample's
condition is replaced by the null condition with that probability, which classifier-free guidance needs.
"""
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models.nbp import NBPTransformer


@dataclass(frozen=True)
class NextBlockObjective:
    """NBP's training objective (no settings: the sequence layout and ``condition_dropout`` are the model's).

    ``network`` runs the forward pass: the model itself or a wrapper of it, such as DistributedDataParallel's,
    whose forward must run for gradients to be synchronised; ``model`` is the unwrapped model, which knows the layout.
    """

    @staticmethod
    def logits(network: nn.Module, model: NBPTransformer, tokens: torch.Tensor,
               cond_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Logits of every training prediction, ``[B, N, V]`` (hybrid) or ``[B, N - k, V]``, aligned with
        ``model.targets``; ``tokens``: video codes ``[B, T, h, w]`` or ``[B, N]``."""
        input_ids = model.input_ids(tokens, cond_ids)                              # [B, L]
        null = None
        if model.training and model.config.condition_dropout > 0:
            null = torch.rand(input_ids.shape[0], device=input_ids.device) < model.config.condition_dropout
        return network(input_ids, null_condition=null)[:, model.condition_length:]  # [B, L - P, V]

    def __call__(self, network: nn.Module, model: NBPTransformer, tokens: torch.Tensor,
                 cond_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Mean cross-entropy of the next-block predictions over the whole vocabulary."""
        logits = self.logits(network, model, tokens, cond_ids)
        return F.cross_entropy(logits.flatten(0, 1).float(), model.targets(tokens).flatten())
