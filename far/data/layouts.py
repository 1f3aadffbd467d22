"""Where a dataset's clips come from (the ``source:`` group of a dataset block), and reading them.

- ``data_list``: the layout of FAR's reference implementation, a JSON list naming extracted files (what the
  published archives hold once extracted, see ``scripts/download.py``);
- ``shards``: tar shards in the format of ``far.data.shards``, read by index or streamed.
"""
from dataclasses import dataclass
from typing import Tuple, Union

from far.data.clips import ClipDataset, ClipSampler, ClipSource, CorruptSamples
from far.data.json_list import JsonListSource
from far.data.reading import ReadOptions
from far.data.shard_index import ShardIndex
from far.data.shard_stream import ShardStream
from far.data.shards import list_shards
from far.registry import SOURCES


@SOURCES.register(name='data_list')
@dataclass(frozen=True, kw_only=True)
class DataList:
    """A JSON list of records naming extracted files (see ``far.data.json_list``); ``use_latent`` reads raw
    latents (items carry ``'latent'``) instead of pixels."""
    path: str
    use_latent: bool = False

    def open(self, fields: Tuple[str, ...], corrupt: CorruptSamples) -> ClipSource:
        return JsonListSource(self.path, self.use_latent, fields)


@SOURCES.register(name='shards')
@dataclass(frozen=True, kw_only=True)
class Shards:
    """Tar shards: a folder of ``shard-*.tar``, a glob or a brace pattern. ``use_latent`` reads raw latents,
    ``use_tokens`` the token shards of ``scripts/extract_latents.py`` (items carry ``'tokens'``, the whole clip
    as extracted)."""
    path: str
    use_latent: bool = False
    use_tokens: bool = False

    def __post_init__(self):
        if self.use_latent and self.use_tokens:
            raise ValueError('shards hold latents or tokens: set use_latent or use_tokens, not both')

    def open(self, fields: Tuple[str, ...], corrupt: CorruptSamples) -> ClipSource:
        return ShardIndex(list_shards(self.path), self.use_latent, read_labels='label' in fields, corrupt=corrupt,
                          use_tokens=self.use_tokens)


def read_dataset(name: str, source: Union[DataList, Shards], read: ReadOptions,
                 sampler: ClipSampler) -> Union[ClipDataset, ShardStream]:
    """The items ``sampler`` makes of the clips of ``source``: by index in a fixed order, or streamed (``read``)."""
    corrupt = CorruptSamples(name, read.strict)
    if read.streaming:
        if not isinstance(source, Shards) or not sampler.train:
            raise ValueError(f'{name}: streaming reads tar shards for training; it needs source: {{type: shards}} and '
                             f'split: train (evaluation reads shards by index, in a fixed order)')
        if read.num_samples is not None:
            raise ValueError(f'{name}: num_samples applies to indexed data; a stream takes samples_per_epoch')
        return ShardStream(list_shards(source.path), sampler, corrupt, read, use_latent=source.use_latent,
                           use_tokens=source.use_tokens)
    if read.samples_per_epoch is not None or read.rank is not None or read.world_size is not None:
        raise ValueError(f'{name}: samples_per_epoch, rank and world_size apply to streaming: true only')
    return ClipDataset(source.open(sampler.fields, corrupt), sampler, corrupt, read.num_samples)
