"""The JSON list layout of FAR's reference implementation: a list of records naming extracted files."""
import json
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import torch

from far.data.clips import Clip
from far.video import decode_video_and_rate


class JsonListSource:
    """Clips named by a JSON list, one record per video (a ``ClipSource``).

    Record keys, as FAR's loaders read them:

    - ``video_path``: a video file (mp4, avi, ...), or an ``.npz`` holding ``video`` (uint8 ``[T, H, W, 3]``)
      and ``actions`` (``[T]``);
    - ``latent_path`` (with ``use_latent``): a ``torch.save``'d tensor, or an ``.npy``, of raw latents
      ``[T, c, h, w]``;
    - ``action_path``: an ``.npz`` holding ``actions`` ``[T]`` (used before actions stored with the video);
    - ``label``: the class index.

    Relative paths are taken from the working directory (FAR's lists say ``datasets/<name>/...``), or
    else from the list's folder; the first record decides which.
    """

    def __init__(self, data_list: str, use_latent: bool, fields: Tuple[str, ...]):
        path = Path(data_list)
        if not path.is_file():
            raise FileNotFoundError(f"data_list '{data_list}' does not exist: download the dataset "
                                    f"(python scripts/download.py --list) or fix the path")
        records = json.loads(path.read_text())
        self.file_key = 'latent_path' if use_latent else 'video_path'
        required = [self.file_key] + (['label'] if 'label' in fields else [])
        if use_latent and 'action' in fields:
            required.append('action_path')
        if not isinstance(records, list) or not records:
            raise ValueError(f'{data_list}: expected a non-empty JSON list of records')
        for i, record in enumerate(records):
            missing = [k for k in required if not isinstance(record, dict) or k not in record]
            if missing:
                raise ValueError(f'{data_list}: record {i} ({record!r}) lacks {missing}; records need {required}')

        first = Path(records[0][self.file_key])
        self.root = Path() if first.exists() else path.parent
        if not (self.root / first).exists():
            raise FileNotFoundError(f"{data_list}: the first record's file '{first}' is neither under the working "
                                    f"directory nor under '{path.parent}'; run from the folder its paths are "
                                    f"relative to")
        self.data_list, self.records, self.use_latent, self.fields = data_list, records, use_latent, fields
        self.labels: Optional[List[int]] = [int(r['label']) for r in records] if 'label' in fields else None

    def __len__(self) -> int:
        return len(self.records)

    def name(self, index: int) -> str:
        return str(self.root / self.records[index][self.file_key])

    def load(self, index: int) -> Clip:
        record = self.records[index]
        file = self.root / record[self.file_key]
        actions, fps = None, None
        if self.use_latent and file.suffix == '.npy':
            frames = np.load(file)
        elif self.use_latent:
            frames = torch.load(file, map_location='cpu', weights_only=True).float().numpy()
        elif file.suffix == '.npz':
            with np.load(file) as data:
                frames = data['video']
                actions = data['actions'] if 'actions' in data.files else None
        else:
            frames, fps = decode_video_and_rate(file)
        per_frame = {}
        if 'action' in self.fields:
            if 'action_path' in record:
                with np.load(self.root / record['action_path']) as data:
                    actions = data['actions']
            if actions is None:
                raise KeyError('no actions: the record has no action_path and its video file holds none')
            per_frame['action'] = np.asarray(actions, np.int64).reshape(-1)
        return Clip(frames, latent=self.use_latent, label=record.get('label'), per_frame=per_frame, fps=fps)
