"""Random access to the samples of tar shards, from the offsets in their tar headers."""
import json
import tarfile
from typing import Dict, List, Optional, Tuple

from far.data.clips import UNREADABLE, Clip, CorruptSamples
from far.data.shards import FRAME_MEMBERS, DamagedShard, decode_sample, scan_shard


def index_shards(shards: List[str], use_latent: bool, corrupt: CorruptSamples,
                 use_tokens: bool = False) -> List[Tuple[str, str, Dict[str, Tuple[int, int]]]]:
    """``(shard, key, members)`` of every sample, in shard order then tar order; a damaged shard is reported
    to ``corrupt`` and keeps the samples before the damage. Fails before any work when the shards are empty
    or do not hold what ``use_latent`` / ``use_tokens`` ask for."""
    entries = []
    for path in shards:
        try:
            found = scan_shard(path)
        except DamagedShard as error:
            corrupt.report(f'{path} (the rest of it)', error)
            found = error.samples
        except tarfile.TarError as error:
            corrupt.report(f'{path} (all of it)', error)
            found = []
        entries += [(path, key, members) for key, members in found]
    if not entries:
        raise ValueError(f'the shards {shards[0]} ... hold no sample')
    shard, _, members = entries[0]
    held = [m for m in FRAME_MEMBERS if m in members]
    if 'json' not in members or not held:
        raise ValueError(f'{shard}: the first sample has members {sorted(members)}; a shard sample needs a .json '
                         f'and one of {", ".join(FRAME_MEMBERS)}')
    wanted = 'tokens.npy' if use_tokens else 'latent.npy' if use_latent else None
    if held[0] != wanted and (wanted is not None or held[0] in ('latent.npy', 'tokens.npy')):
        fix = {'latent.npy': 'use_latent: true', 'tokens.npy': 'use_tokens: true'}.get(held[0], 'neither')
        raise ValueError(f'{shard} holds {held[0]} samples but use_latent is {str(use_latent).lower()} and use_tokens '
                         f'is {str(use_tokens).lower()}; set {fix} or point shards at the other data')
    return entries


class ShardIndex:
    """Random access to the samples of tar shards (a ``ClipSource``), in shard order then tar order."""

    def __init__(self, shards: List[str], use_latent: bool, read_labels: bool, corrupt: CorruptSamples,
                 use_tokens: bool = False):
        self.use_latent, self.use_tokens = use_latent, use_tokens
        self.entries = index_shards(shards, use_latent, corrupt, use_tokens)
        self.labels = [self._label(i) for i in range(len(self))] if read_labels else None

    def _label(self, index: int) -> Optional[int]:
        """The label its json holds; None when that cannot be read (loading the sample reports it)."""
        try:
            return json.loads(self._read(index)['json']).get('label')
        except UNREADABLE:
            return None

    def __len__(self) -> int:
        return len(self.entries)

    def _read(self, index: int) -> Dict[str, bytes]:
        path, _, members = self.entries[index]
        sample = {}
        with open(path, 'rb') as f:
            for suffix, (offset, size) in members.items():
                f.seek(offset)
                sample[suffix] = f.read(size)
        return sample

    def load(self, index: int) -> Clip:
        return decode_sample(self._read(index), self.use_latent, self.use_tokens)

    def name(self, index: int) -> str:
        path, key, _ = self.entries[index]
        return f'{path}:{key}'
