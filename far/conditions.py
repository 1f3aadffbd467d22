"""What a video model is conditioned on: one class label per video, one action per frame, or text ids per video.

A model's ``condition_cfg`` (YAML, and the released checkpoints' configs) is ``None``,
``{type: label, num_classes: N}``, ``{type: action, num_action_classes: N}`` or
``{type: text, vocab_size: V, num_tokens: P}`` (P token ids of a V-id vocabulary per video, e.g. the LLaMA ids of
a UCF-101 class name). It is parsed once, into a :class:`Condition` that the model, the samplers, the trainers
and evaluation share. Conditions travel as dicts of id tensors, ``{'label': [B]}``, ``{'action': [B, T]}`` or
``{'text': [B, P]}``; for labels and actions, id ``N`` is the null id that classifier-free guidance (and
condition dropout in training) uses.

Datasets carry labels, not text: a text condition with ``class_text_ids: FILE`` (a JSON file whose
``input_ids`` row ``i`` holds the text ids of class ``i``, e.g. ``options/model_cfg/nbp/ucf101_class_text_ids.json``)
reads each item's ``label`` and looks its text ids up, so that no text tokenizer is needed.
"""
import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Dict, Literal, Optional, Sequence

import torch

from far.utils.files import find_file

Conditions = Optional[Dict[str, torch.Tensor]]

KINDS = ('label', 'action', 'text')
COUNT_KEYS = {'label': 'num_classes', 'action': 'num_action_classes', 'text': 'vocab_size'}  # key of the id count
FORMS = ('null, {type: label, num_classes: N}, {type: action, num_action_classes: N} or {type: text, vocab_size: '
         'V, num_tokens: P[, class_text_ids: FILE]}')


@lru_cache(maxsize=None)
def read_class_text_ids(path: str) -> torch.Tensor:
    """The ``input_ids`` ``[classes, P]`` of a class-text JSON file (read once per process)."""
    file = find_file(path)
    if file is None or not file.is_file():
        raise FileNotFoundError(f"condition_cfg.class_text_ids '{path}' does not exist; the shipped table is "
                                f'options/model_cfg/nbp/ucf101_class_text_ids.json')
    # on the CPU even under a meta-device context (models built without memory still check their table)
    ids = torch.tensor(json.loads(file.read_text())['input_ids'], dtype=torch.long, device='cpu')
    if ids.ndim != 2 or not len(ids):
        raise ValueError(f'{path}: input_ids must be a non-empty list of equally long id lists')
    return ids


@dataclass(frozen=True)
class Condition:
    kind: Literal['label', 'action', 'text']
    num_classes: int                       # label/action classes, or the text vocabulary
    num_tokens: int = 1                    # text: ids per video
    class_text_ids: Optional[str] = None   # text: the JSON table from dataset labels to text ids

    @classmethod
    def parse(cls, cfg: Optional[dict], kinds: Sequence[str] = KINDS) -> Optional['Condition']:
        """``condition_cfg`` -> Condition (``None`` for an unconditional model); ValueError when malformed or of a
        kind outside ``kinds`` (what the model supports)."""
        if cfg is None:
            return None
        kind = cfg.get('type') if isinstance(cfg, dict) else None
        count = COUNT_KEYS.get(kind)
        required = {'type', count} | ({'num_tokens'} if kind == 'text' else set())
        allowed = required | ({'class_text_ids'} if kind == 'text' else set())
        numbers = [cfg[key] for key in required - {'type'}] if count and required <= set(cfg) else []
        if (kind not in kinds or not numbers or not set(cfg) <= allowed
                or not all(isinstance(n, int) and n >= 1 for n in numbers)):
            raise ValueError(f"condition_cfg must be {FORMS} with counts >= 1 (this model takes "
                             f"{', '.join(['null', *kinds])}), got {cfg}")
        condition = cls(kind, cfg[count], **{key: cfg[key] for key in ('num_tokens', 'class_text_ids') if key in cfg})
        if condition.class_text_ids is not None:
            condition._check_table()
        return condition

    def _check_table(self):
        ids = read_class_text_ids(self.class_text_ids)
        if ids.shape[1] != self.num_tokens or ids.min() < 0 or ids.max() >= self.num_classes:
            raise ValueError(f'condition_cfg.class_text_ids {self.class_text_ids} holds ids [{ids.shape[0]}, '
                             f'{ids.shape[1]}] in [{ids.min()}, {ids.max()}]; the condition takes {self.num_tokens} '
                             f'ids in [0, {self.num_classes}) per video')

    def to_config(self) -> dict:
        config = {'type': self.kind, COUNT_KEYS[self.kind]: self.num_classes}
        if self.kind == 'text':
            config['num_tokens'] = self.num_tokens
        if self.class_text_ids is not None:
            config['class_text_ids'] = self.class_text_ids
        return config

    @property
    def pad_id(self) -> Optional[int]:
        """The id that pads a text shorter than ``num_tokens``: the class table's ``pad_id`` (``None``: not known)."""
        if self.class_text_ids is None:
            return None
        return json.loads(find_file(self.class_text_ids).read_text()).get('pad_id')

    @property
    def null_id(self) -> int:
        """The id of 'no condition' (classifier-free guidance, condition dropout)."""
        return self.num_classes

    @property
    def per_frame(self) -> bool:
        return self.kind == 'action'

    @property
    def field(self) -> str:
        """The dataset item field the condition is read from (a text condition with a class table reads labels)."""
        return 'label' if self.class_text_ids is not None else self.kind

    @property
    def field_classes(self) -> Optional[int]:
        """How many classes that field must have (``None``: free text ids)."""
        if self.class_text_ids is not None:
            return read_class_text_ids(self.class_text_ids).shape[0]
        return None if self.kind == 'text' else self.num_classes

    def shape(self, batch: int, frames: int) -> tuple:
        if self.kind == 'text':
            return batch, self.num_tokens
        return (batch, frames) if self.per_frame else (batch,)

    def check(self, conditions: Conditions, batch: int, frames: int, where: str) -> torch.Tensor:
        """The ids of ``conditions`` after checking that they cover ``batch`` videos of ``frames`` frames."""
        shape = self.shape(batch, frames)
        ids = None if conditions is None else conditions.get(self.kind)
        if ids is None or tuple(ids.shape) != shape:
            got = None if ids is None else tuple(ids.shape)
            null = '' if self.kind == 'text' else f' (id {self.null_id} is the null id)'
            raise ValueError(f"{where} is {self.kind}-conditioned ({self.to_config()}): pass conditions="
                             f"{{'{self.kind}': LongTensor{list(shape)}}}{null}, got {got}")
        return ids

    def from_batch(self, batch: dict, num_frames: Optional[int] = None) -> Dict[str, torch.Tensor]:
        """The condition of a collated dataset batch (per-frame ids cut to ``num_frames``; labels looked up in the
        class-text table)."""
        if self.field not in batch:
            raise ValueError(f"the model is {self.kind}-conditioned ({self.to_config()}) but the dataset items carry "
                             f"no '{self.field}'; use a dataset that provides it or an unconditional model")
        ids = batch[self.field]
        if self.class_text_ids is not None:
            table = read_class_text_ids(self.class_text_ids)
            return {self.kind: table.to(ids.device)[ids.long()]}
        return {self.kind: ids[:, :num_frames] if self.per_frame else ids}

    def frames(self, conditions: Conditions, start: int, end: Optional[int] = None) -> Conditions:
        """The conditions of frames ``start:end``: actions are sliced, a clip's label or text is kept."""
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
