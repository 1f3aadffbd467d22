"""Datasets: importing this package registers every dataset in ``far.registry.DATASETS``."""
from far.data import bair, dmlab, k600, maze_memory, minecraft, moving_shapes, ucf101  # noqa: F401  (registration)
from far.data.clips import Clip, ClipDataset, ClipSampler, CorruptSampleError
from far.data.layouts import video_dataset
from far.data.shards import ShardStream, distributed_rank, list_shards, write_shards

__all__ = ['Clip', 'ClipDataset', 'ClipSampler', 'CorruptSampleError', 'ShardStream', 'distributed_rank',
           'list_shards', 'video_dataset', 'write_shards']
