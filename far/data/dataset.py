"""What a registered dataset declares, and its YAML block: ``split``, ``source`` (where the clips come from) and
``read`` (how items are read from them).

A dataset entry is an instance of :class:`VideoDataset` (recorded videos) or of a :class:`GeneratedDataset`
subclass (rendered on first use); calling it with its options builds the torch dataset. It declares what
its items carry (``fields``, ``conditions``, checked against the model's condition when an experiment loads)
and where its block sets the frames of a clip and their size (``clip_length_option``, ``resolution_option``;
see ``far.checks``).
"""
import abc
from dataclasses import asdict, dataclass, field, make_dataclass
from pathlib import Path
from typing import ClassVar, Dict, Iterable, Literal, Tuple, Union

from far.data.clips import ClipDataset, ClipSampler
from far.data.generated import write_generated_split
from far.data.layouts import Shards, read_dataset
from far.data.reading import ClipOptions, ReadOptions
from far.data.shard_stream import ShardStream
from far.options import Block
from far.registry import SOURCES

Split = Literal['train', 'val', 'test']


@dataclass(frozen=True, kw_only=True)
class VideoDatasetOptions:
    """``split: train`` samples clips at random starts with augmentation, other splits from frame 0 (unless
    ``read.clip_start`` says otherwise)."""
    split: Split
    source: Block(SOURCES)
    read: ClipOptions


@dataclass(frozen=True)
class VideoDataset:
    """A dataset of recorded videos read from a JSON list or tar shards.

    ``fields``: the annotations its items carry beside the frames ('label', 'action'); ``pad_short``: a video
    shorter than the clip is padded with black frames (else it is unreadable); ``conditions``: the classes of
    each condition its items carry, e.g. ``{'label': 101}``.
    """
    name: str
    fields: Tuple[str, ...]
    pad_short: bool
    conditions: Dict[str, int]

    options_class: ClassVar[type] = VideoDatasetOptions
    clip_length_option: ClassVar[str] = 'read.num_frames'
    resolution_option: ClassVar[str] = 'read.resolution'

    def __call__(self, *, options: VideoDatasetOptions) -> Union[ClipDataset, ShardStream]:
        read = options.read
        sampler = ClipSampler(num_frames=read.num_frames, frame_interval=read.frame_interval,
                              train=options.split == 'train', pad_short=self.pad_short, resolution=read.resolution,
                              flip=read.flip, fields=self.fields, resize=read.resize, fps=read.fps,
                              clip_start=read.clip_start)
        return read_dataset(self.name, SOURCES.build(options.source), read, sampler)


@dataclass(frozen=True, kw_only=True)
class GeneratedOptions:
    """The block of a generated dataset; its ``source_class`` adds ``source``."""
    split: Split = 'train'
    read: ReadOptions = field(default_factory=ReadOptions)


class GeneratedDataset(abc.ABC):
    """A dataset rendered once into ``source.root/<split>`` shards (lossless frames), then read like recorded ones;
    items are whole generated videos.

    A subclass declares ``name``, ``fields``, ``conditions``, its ``source_class`` (a dataclass of what is rendered,
    with ``root``), and which source options hold the number of videos (``count_key``, ``None`` for the split's
    ``default_counts``), the frames of every video (``length_key``) and the videos per shard (``shard_key``).
    """
    name: ClassVar[str]
    fields: ClassVar[Tuple[str, ...]]
    conditions: ClassVar[Dict[str, int]]
    source_class: ClassVar[type]
    count_key: ClassVar[str]
    default_counts: ClassVar[Dict[str, int]]
    length_key: ClassVar[str]
    shard_key: ClassVar[str]
    options_class: ClassVar[type]
    resolution_option: ClassVar[str] = 'source.resolution'

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.options_class = make_dataclass(f'{cls.name}Options', [
            ('source', cls.source_class, field(default_factory=cls.source_class))], bases=(GeneratedOptions,),
            frozen=True, kw_only=True)

    @property
    def clip_length_option(self) -> str:
        return f'source.{self.length_key}'

    def generation(self, split: str, source) -> dict:
        """What the rendered split depends on (recorded beside it): the source options but ``root``, the number of
        videos resolved."""
        generation = {key: value for key, value in asdict(source).items() if key != 'root'}
        if generation[self.count_key] is None:
            generation[self.count_key] = self.default_counts[split]
        return generation

    @abc.abstractmethod
    def samples(self, split: str, generation: dict) -> Iterable[dict]:
        """The shard samples of ``split`` (see ``far.data.shards.write_shards``)."""

    def __call__(self, *, options) -> Union[ClipDataset, ShardStream]:
        generation = self.generation(options.split, options.source)
        out_dir = Path(options.source.root) / options.split
        write_generated_split(out_dir, {'dataset': self.name, **generation},
                              lambda: self.samples(options.split, generation), generation[self.shard_key])
        sampler = ClipSampler(generation[self.length_key], 1, options.split == 'train', False, None, False,
                              self.fields)
        return read_dataset(self.name, Shards(path=str(out_dir)), options.read, sampler)
