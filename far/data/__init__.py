"""Datasets: importing this package registers every dataset in ``far.registry.DATASETS`` (and the data sources
in ``far.registry.SOURCES``)."""
from far.data import bair, dmlab, k600, maze_memory, minecraft, moving_shapes, ucf101  # noqa: F401  (registration)
from far.data.clips import Clip, ClipDataset, ClipSampler, CorruptSampleError
from far.data.dataset import VideoDataset
from far.data.layouts import DataList, Shards, read_dataset
from far.data.reading import ClipOptions, ReadOptions
from far.data.shard_stream import ShardStream
from far.data.shards import list_shards, write_shards

__all__ = ['Clip', 'ClipDataset', 'ClipOptions', 'ClipSampler', 'CorruptSampleError', 'DataList', 'ReadOptions',
           'ShardStream', 'Shards', 'VideoDataset', 'list_shards', 'read_dataset', 'write_shards']
