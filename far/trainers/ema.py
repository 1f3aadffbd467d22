"""The exponential moving average of the trained weights, updated without waiting on the host."""
import copy

import torch

from far.utils.distributed import local_tensor


class EMA(torch.nn.Module):
    """``module``: an average of the model's parameters; its first update copies them, each later one moves
    ``1 - decay`` of the way towards them. With ``warmup`` the decay after n averaged updates is
    ``min(decay, (1 + n) / (10 + n))``, as in diffusers' ``EMAModel``, so that a short run's average follows the
    weights instead of staying near their first values. Buffers keep the values of the model the average was
    built from.

    What torch's ``AveragedModel`` computes with ``get_ema_multi_avg_fn``, with the same state (``module`` and
    the ``n_averaged`` buffer), so checkpoints load either way; unlike it, the update reads no counter on the
    host and takes whether the step was applied as a tensor: a skipped step leaves the average exactly as it was.
    """

    def __init__(self, model: torch.nn.Module, *, decay: float, warmup: bool):
        super().__init__()
        self.module = copy.deepcopy(model).requires_grad_(False).eval()
        self.decay, self.warmup = decay, warmup
        device = next(model.parameters()).device
        self.register_buffer('n_averaged', torch.tensor(0, dtype=torch.long, device=device))

    @torch.no_grad()
    def update_parameters(self, model: torch.nn.Module, applied: torch.Tensor):
        """Average ``model``'s parameters in when ``applied`` (a bool tensor on the device) is true."""
        # Under FSDP both are sharded alike: each process averages its own shares.
        averaged = [local_tensor(p) for p in self.module.parameters()]
        current = [local_tensor(p.detach()) for p in model.parameters()]
        # 1 copies (the first update), 0 keeps (a skipped step): torch.lerp is exact at both ends.
        weight = torch.where(self.n_averaged == 0, 1.0, 1.0 - self.current_decay()) * applied
        weights = {dtype: weight.to(dtype) for dtype in {p.dtype for p in averaged}}
        torch._foreach_lerp_(averaged, current, [weights[p.dtype] for p in averaged])
        self.n_averaged += applied

    def current_decay(self):
        """The decay of the next update: ``decay``, or with warm-up a tensor computed on the device (no host sync)."""
        if not self.warmup:
            return self.decay
        n = self.n_averaged
        return ((1 + n) / (10 + n)).clamp(max=self.decay)
