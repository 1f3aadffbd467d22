"""The two on-disk layouts a dataset is read from, and the builder every dataset entry shares.

- ``data_list``: the layout of FAR's reference implementation, a JSON list naming extracted files (what the
  published archives hold once extracted, see ``scripts/download.py``);
- ``shards``: tar shards in the format of ``far.data.shards``, read by index or streamed.
"""
import json
from pathlib import Path
from typing import List, Literal, Optional, Tuple, Union

import numpy as np
import torch

from far.data.clips import Clip, ClipDataset, ClipSampler, CorruptSamples
from far.data.shards import ShardIndex, ShardStream, list_shards
from far.video import decode_video


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
        actions = None
        if self.use_latent and file.suffix == '.npy':
            frames = np.load(file)
        elif self.use_latent:
            frames = torch.load(file, map_location='cpu', weights_only=True).float().numpy()
        elif file.suffix == '.npz':
            with np.load(file) as data:
                frames = data['video']
                actions = data['actions'] if 'actions' in data.files else None
        else:
            frames = decode_video(file)
        per_frame = {}
        if 'action' in self.fields:
            if 'action_path' in record:
                with np.load(self.root / record['action_path']) as data:
                    actions = data['actions']
            if actions is None:
                raise KeyError('no actions: the record has no action_path and its video file holds none')
            per_frame['action'] = np.asarray(actions, np.int64).reshape(-1)
        return Clip(frames, latent=self.use_latent, label=record.get('label'), per_frame=per_frame)


def video_dataset(
    split: Literal['train', 'val', 'test'],
    num_frames: int,
    data_list: Optional[str] = None,
    shards: Optional[str] = None,
    use_latent: bool = False,
    use_tokens: bool = False,
    frame_interval: int = 1,
    resolution: Optional[int] = None,
    flip: bool = False,
    num_samples: Optional[int] = None,
    streaming: bool = False,
    shuffle_buffer: int = 256,
    samples_per_epoch: Optional[int] = None,
    strict: bool = False,
    rank: Optional[int] = None,
    world_size: Optional[int] = None,
    *,
    dataset: str,
    fields: Tuple[str, ...],
    pad_short: bool,
) -> Union[ClipDataset, ShardStream]:
    """A video dataset read from ``data_list`` (JSON list layout) or ``shards`` (tar shards): give one.

    ``split: train`` samples clips at random starts (``num_frames`` frames, every ``frame_interval``-th)
    with random crops and, with ``flip``, flips; other splits start at frame 0 and crop the centre.
    ``resolution`` resizes the shorter side and crops a square. ``use_latent`` reads raw latents instead
    of pixels (items carry ``'latent'``); ``use_tokens`` reads the token shards of ``scripts/extract_latents.py``
    (items carry ``'tokens'``, the whole clip of ``num_frames`` frames as extracted). ``num_samples`` keeps the
    first N samples.

    ``streaming: true`` (training on shards) reads the shards sequentially with webdataset instead of by
    index: ``shuffle_buffer`` samples are shuffled, every rank gets ``ceil(samples_per_epoch / world_size)``
    samples per epoch, rank and world size come from torch.distributed or RANK/WORLD_SIZE unless
    ``rank``/``world_size`` are set. Do not hand such a stream to ``accelerator.prepare``: it is already
    split over ranks.

    Unreadable samples are skipped with a counted warning (``dataset.num_skipped``), or stop the run when
    ``strict``. ``dataset``, ``fields`` and ``pad_short`` are fixed by each registered dataset.
    """
    if (data_list is None) == (shards is None):
        raise ValueError(f'{dataset}: set exactly one of data_list (a JSON list of files) or shards (tar shards)')
    if use_tokens and (shards is None or use_latent):
        raise ValueError(f'{dataset}: use_tokens reads token shards: set shards (not data_list) and use_latent: false')
    sampler = ClipSampler(num_frames, frame_interval, split == 'train', pad_short, resolution, flip, fields)
    corrupt = CorruptSamples(dataset, strict)
    if streaming:
        if shards is None or split != 'train':
            raise ValueError(f'{dataset}: streaming reads tar shards for training; it needs shards and split: train '
                             f'(evaluation reads shards by index, in a fixed order)')
        if num_samples is not None:
            raise ValueError(f'{dataset}: num_samples applies to indexed data; a stream takes samples_per_epoch')
        return ShardStream(list_shards(shards), sampler, corrupt, use_latent, shuffle_buffer, samples_per_epoch,
                           rank, world_size, use_tokens)
    if samples_per_epoch is not None or rank is not None or world_size is not None:
        raise ValueError(f'{dataset}: samples_per_epoch, rank and world_size apply to streaming: true only')
    if data_list is not None:
        source = JsonListSource(data_list, use_latent, fields)
    else:
        source = ShardIndex(list_shards(shards), use_latent, read_labels='label' in fields, corrupt=corrupt,
                            use_tokens=use_tokens)
    return ClipDataset(source, sampler, corrupt, num_samples)
