"""What a video model is conditioned on: one class label per video, or one action per frame.

A model's ``condition_cfg`` (YAML, and the released checkpoints' configs) is ``None``,
``{type: label, num_classes: N}`` or ``{type: action, num_action_classes: N}``. It is parsed once, into a
:class:`Condition` that the model, the samplers, the trainers and evaluation share. Conditions travel as
dicts of id tensors, ``{'label': [B]}`` or ``{'action': [B, T]}``, the fields dataset items carry; id ``N``
is the null id that classifier-free guidance (and condition dropout in training) uses.
"""
from dataclasses import dataclass
from typing import Dict, Literal, Optional

import torch

Conditions = Optional[Dict[str, torch.Tensor]]

COUNT_KEYS = {'label': 'num_classes', 'action': 'num_action_classes'}  # condition_cfg key of the class count


@dataclass(frozen=True)
class Condition:
    kind: Literal['label', 'action']
    num_classes: int

    @classmethod
    def parse(cls, cfg: Optional[dict]) -> Optional['Condition']:
        """``condition_cfg`` -> Condition (``None`` for an unconditional model); ValueError when malformed."""
        if cfg is None:
            return None
        kind = cfg.get('type') if isinstance(cfg, dict) else None
        count = COUNT_KEYS.get(kind)
        if count is None or set(cfg) != {'type', count} or not isinstance(cfg[count], int) or cfg[count] < 1:
            raise ValueError(f"condition_cfg must be null, {{type: label, num_classes: N}} or {{type: action, "
                             f"num_action_classes: N}} with N >= 1, got {cfg}")
        return cls(kind, cfg[count])

    def to_config(self) -> dict:
        return {'type': self.kind, COUNT_KEYS[self.kind]: self.num_classes}

    @property
    def null_id(self) -> int:
        """The id of 'no condition' (classifier-free guidance, condition dropout)."""
        return self.num_classes

    @property
    def per_frame(self) -> bool:
        return self.kind == 'action'

    def shape(self, batch: int, frames: int) -> tuple:
        return (batch, frames) if self.per_frame else (batch,)

    def check(self, conditions: Conditions, batch: int, frames: int, where: str) -> torch.Tensor:
        """The ids of ``conditions`` after checking that they cover ``batch`` videos of ``frames`` frames."""
        shape = self.shape(batch, frames)
        ids = None if conditions is None else conditions.get(self.kind)
        if ids is None or tuple(ids.shape) != shape:
            got = None if ids is None else tuple(ids.shape)
            raise ValueError(f"{where} is {self.kind}-conditioned ({self.to_config()}): pass conditions="
                             f"{{'{self.kind}': LongTensor{list(shape)}}} (id {self.null_id} is the null id), "
                             f"got {got}")
        return ids

    def from_batch(self, batch: dict, num_frames: Optional[int] = None) -> Dict[str, torch.Tensor]:
        """The condition of a collated dataset batch (per-frame ids cut to ``num_frames``)."""
        if self.kind not in batch:
            raise ValueError(f"the model is {self.kind}-conditioned ({self.to_config()}) but the dataset items carry "
                             f"no '{self.kind}'; use a dataset that provides it or an unconditional model")
        ids = batch[self.kind]
        return {self.kind: ids[:, :num_frames] if self.per_frame else ids}

    def frames(self, conditions: Conditions, start: int, end: Optional[int] = None) -> Conditions:
        """The conditions of frames ``start:end``: actions are sliced, a clip's label is kept."""
        if conditions is None or not self.per_frame:
            return conditions
        return {self.kind: conditions[self.kind][:, start:end]}

    def repeat(self, conditions: Conditions, times: int) -> Conditions:
        """Every video's condition ``times`` times in a row (trajectories of one video)."""
        if conditions is None:
            return None
        return {self.kind: conditions[self.kind].repeat_interleave(times, 0)}

    def null(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.full_like(ids, self.null_id)
