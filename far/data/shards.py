"""The tar shard format: writing shards, checking and decoding their samples, finding and scanning them.

Format (shared with the latent extractor, which writes it with ``webdataset.TarWriter``): plain POSIX
tars named ``shard-%06d.tar``; the files of one sample share a key (webdataset convention):

- ``{key}.mp4``: H.264 video (pixel datasets), or
- ``{key}.frames.npy``: uint8 ``[T, H, W, 3]`` (generated datasets, where lossless frames matter), or
- ``{key}.latent.npy``: float16/float32 raw, unscaled latents ``[T, c, h, w]``, or
- ``{key}.tokens.npy``: integer token ids ``[T', h, w]`` of a video tokenizer (the whole clip of T frames);
- always ``{key}.json``: ``{"num_frames": T, "label": int?, "actions": [int]*T?, "source": str?, ...}``
  (per-frame ``"revisit"`` and ``"first_visit": [bool]*T`` for MazeMemory; other fields are ignored),
  and ``"crc32": {member: hex}``, the checksums of the sample's other members, in shards written here:
  both readers check them and treat a mismatch as an unreadable sample (shards without them read as before).

Two readers: ``far.data.shard_index.ShardIndex`` reads samples by position from the tar headers' offsets (fixed
order, for evaluation and map-style training) and ``far.data.shard_stream.ShardStream`` reads shards
sequentially (training at scale).
"""
import io
import json
import tarfile
import zlib
from pathlib import Path
from typing import Dict, Iterable, List, Tuple

import numpy as np
import webdataset as wds
from webdataset.tariterators import base_plus_ext
from webdataset.utils import glob_with_braces
from webdataset.writer import encode_based_on_extension1, make_handlers

from far.data.clips import Clip
from far.video import decode_video_and_rate

SHARD_NAME = 'shard-%06d.tar'
FRAME_MEMBERS = ('mp4', 'frames.npy', 'latent.npy', 'tokens.npy')
PER_FRAME_JSON = {'actions': ('action', np.int64), 'revisit': ('revisit', np.bool_),  # json key -> item field
                  'first_visit': ('first_visit', np.bool_)}
CHECKSUM_KEY = 'crc32'  # json key: {member: crc32 hex} of the sample's other members
_ENCODERS = make_handlers()


def write_shards(samples: Iterable[dict], out_dir, samples_per_shard: int) -> int:
    """Write ``{'__key__': str, 'json': dict, 'mp4' | 'frames.npy' | 'latent.npy': bytes | ndarray}``
    samples into ``out_dir/shard-%06d.tar``; returns how many were written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    count = 0
    # A fixed mtime makes the same samples give byte-identical shards.
    with wds.ShardWriter(str(out_dir / SHARD_NAME), maxcount=samples_per_shard, verbose=0, mtime=0) as sink:
        for sample in samples:
            sink.write(with_checksums(sample))
            count += 1
    return count


def crc32(data: bytes) -> str:
    return f'{zlib.crc32(data):08x}'


def with_checksums(sample: dict) -> dict:
    """``sample`` with its members encoded as webdataset writes them and their checksums in its json."""
    members = {name: encode_based_on_extension1(value, name, _ENCODERS) for name, value in sample.items()
               if name != 'json' and not name.startswith('__')}
    return {**sample, **members, 'json': {**sample['json'], CHECKSUM_KEY: {k: crc32(v) for k, v in members.items()}}}


def verify_checksums(sample: Dict[str, bytes], meta: dict):
    """Raise ValueError when a member of a shard sample differs from the checksum its json records."""
    for name, expected in meta.get(CHECKSUM_KEY, {}).items():
        if name not in sample:
            raise ValueError(f'its {name} is missing')
        found = crc32(sample[name])
        if found != expected:
            raise ValueError(f'its {name} fails its checksum (crc32 {found}, the json says {expected}): the shard is '
                             f'damaged')


def list_shards(spec: str) -> List[str]:
    """The tar shards named by ``spec``: a folder (its ``shard-*.tar``), a glob, or a brace pattern."""
    path = Path(spec)
    found = sorted(path.glob('shard-*.tar')) if path.is_dir() else sorted(set(glob_with_braces(spec)))
    if not found:
        raise FileNotFoundError(f"no tar shards at '{spec}': give a folder of shard-*.tar files, a glob or a brace "
                                f"pattern such as data/shard-{{000000..000009}}.tar")
    return [str(p) for p in found]


class DamagedShard(ValueError):
    """A shard whose tar structure breaks off (tarfile then stops without a word); ``samples`` are the
    samples before the damage."""

    def __init__(self, message: str, samples: list):
        super().__init__(message)
        self.samples = samples


def scan_shard(path: str) -> List[Tuple[str, Dict[str, Tuple[int, int]]]]:
    """``(key, {suffix: (data offset, size)})`` for every sample of a tar, in order, from its headers only;
    :class:`DamagedShard` when a header is damaged or the tar is cut short."""
    samples: Dict[str, Dict[str, Tuple[int, int]]] = {}
    with tarfile.open(path) as tar:
        for member in tar:
            key, suffix = base_plus_ext(member.name) if member.isreg() else (None, None)
            if key is not None:
                samples.setdefault(key, {})[suffix.lower()] = (member.offset_data, member.size)
        end = tar.offset
    with open(path, 'rb') as f:
        f.seek(end)
        block = f.read(tarfile.BLOCKSIZE)
    if block != bytes(tarfile.BLOCKSIZE):  # a complete tar ends with zero blocks
        problem = 'the tar header there is damaged' if block else 'the file ends there, cut short'
        raise DamagedShard(f'{path}: {problem}; the {len(samples)} samples before byte {end} are read, the rest '
                           f'is lost', list(samples.items()))
    return list(samples.items())


def decode_sample(sample: Dict[str, bytes], use_latent: bool, use_tokens: bool = False) -> Clip:
    """One shard sample (suffix -> bytes) as a Clip."""
    meta = json.loads(sample['json'])
    verify_checksums(sample, meta)
    if use_tokens:
        return Clip(np.load(io.BytesIO(sample['tokens.npy'])), tokens=True, label=meta.get('label'),
                    encoded_frames=meta.get('num_frames'))
    fps = None
    if use_latent:
        frames = np.load(io.BytesIO(sample['latent.npy']))
    elif 'frames.npy' in sample:
        frames = np.load(io.BytesIO(sample['frames.npy']))
    else:
        frames, fps = decode_video_and_rate(sample['mp4'])
    if meta.get('num_frames') != len(frames):
        raise ValueError(f"its json says num_frames={meta.get('num_frames')}, its frames hold {len(frames)}")
    per_frame = {name: np.asarray(meta[key], dtype) for key, (name, dtype) in PER_FRAME_JSON.items() if key in meta}
    return Clip(frames, latent=use_latent, label=meta.get('label'), per_frame=per_frame, fps=fps)
