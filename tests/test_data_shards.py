"""Tar shards: writing, finding, indexed reading, streaming over ranks and workers, unreadable and garbled
samples, and resuming a stream."""
import functools
import io
import json
import logging
import tarfile
import zlib
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import webdataset as wds
from torch.utils.data import DataLoader

from far.data import ClipOptions, CorruptSampleError, ShardStream, VideoDataset, list_shards, write_shards
from far.data.clips import ClipDataset
from far.data.dataset import VideoDatasetOptions
from far.data.generated import write_generated_split
from far.data.shards import scan_shard
from far.options import OptionError, validate_block
from far.registry import DATASETS
from far.utils.distributed import distributed_rank
from far.trainers import Trainer
from far.video import encode_video

T, H, W = 8, 16, 16


def shard_dataset(split: str, num_frames: int, path, fields=(), name='X', use_latent=False, **read):
    """The tar shards at ``path`` read as a dataset whose items carry ``fields``, with ``read`` options."""
    dataset = VideoDataset(name=name, fields=tuple(fields), pad_short=False, conditions={})
    source = {'type': 'shards', 'path': str(path), 'use_latent': use_latent}
    return dataset(options=VideoDatasetOptions(split=split, source=source,
                                               read=ClipOptions(num_frames=num_frames, **read)))


def frames_of(index: int, num_frames: int = T) -> np.ndarray:
    """Pixel (0, 0) of frame t holds the sample index, pixel (0, 1) the frame number."""
    frames = np.zeros((num_frames, H, W, 3), np.uint8)
    frames[:, 0, 0] = index
    frames[:, 0, 1] = np.arange(num_frames)[:, None]
    return frames


def sample(index: int, member: str = 'frames.npy', num_frames: int = T) -> dict:
    meta = {'num_frames': num_frames, 'label': index % 3, 'actions': [(index + t) % 4 for t in range(num_frames)]}
    if member == 'frames.npy':
        data = frames_of(index, num_frames)
    elif member == 'mp4':
        data = encode_video(np.full((num_frames, H, W, 3), 10 * index, np.uint8))
    else:
        data = np.full((num_frames, 4, 2, 2), index, np.float16)
    return {'__key__': f'{index:06d}', member: data, 'json': meta}


def make_shards(folder, sizes, member='frames.npy'):
    """Shards of the given sizes, samples numbered 0, 1, ... across them."""
    start = 0
    for s, size in enumerate(sizes):
        write_shards((sample(i, member) for i in range(start, start + size)), folder / f'part{s}', size)
        (folder / f'part{s}' / 'shard-000000.tar').rename(folder / f'shard-{s:06d}.tar')
        start += size
    return folder


def item_number(item) -> int:
    return int(round(item['video'][0, 0, 0, 0].item() * 255))


def test_write_shards_cuts_and_names_shards(tmp_path):
    assert write_shards((sample(i) for i in range(10)), tmp_path, samples_per_shard=4) == 10
    shards = list_shards(str(tmp_path))
    assert [s.rsplit('/', 1)[1] for s in shards] == ['shard-000000.tar', 'shard-000001.tar', 'shard-000002.tar']
    assert [len(scan_shard(s)) for s in shards] == [4, 4, 2]
    key, members = scan_shard(shards[0])[0]
    assert key == '000000' and set(members) == {'frames.npy', 'json'}
    with tarfile.open(shards[0]) as tar:  # plain POSIX tar, webdataset naming
        assert tar.getnames()[:2] == ['000000.frames.npy', '000000.json']


def test_list_shards_takes_folders_globs_and_braces(tmp_path):
    write_shards((sample(i) for i in range(6)), tmp_path, samples_per_shard=2)
    assert len(list_shards(str(tmp_path))) == 3
    assert len(list_shards(str(tmp_path / 'shard-*.tar'))) == 3
    assert len(list_shards(str(tmp_path / 'shard-{000000..000001}.tar'))) == 2
    with pytest.raises(FileNotFoundError, match='no tar shards'):
        list_shards(str(tmp_path / 'missing'))


def test_indexed_shards_give_items_in_a_fixed_order(tmp_path):
    make_shards(tmp_path, [3, 2, 4])
    ds = shard_dataset('val', T, str(tmp_path), fields=('label', 'action'))
    assert isinstance(ds, ClipDataset) and len(ds) == 9
    assert ds.labels == [i % 3 for i in range(9)]
    for i in range(9):
        item = ds[i]
        assert item['index'] == i and item_number(item) == i and item['label'] == i % 3
        assert item['video'].shape == (T, 3, H, W) and item['video'].dtype == torch.float32
        frame_numbers = (item['video'][:, 1, 0, 1] * 255).round().long()
        assert torch.equal(item['action'], (i + frame_numbers) % 4)  # action[t] belongs to frame t


def test_training_clips_keep_actions_aligned_with_frames(tmp_path):
    write_shards((sample(i, num_frames=30) for i in range(2)), tmp_path, 2)
    ds = shard_dataset('train', 8, str(tmp_path), fields=('action',), frame_interval=2)
    starts = set()
    for _ in range(30):
        item = ds[1]
        frame_numbers = (item['video'][:, 1, 0, 1] * 255).round().long()
        assert torch.equal(frame_numbers, frame_numbers[0] + 2 * torch.arange(8))
        assert torch.equal(item['action'], (1 + frame_numbers) % 4)
        starts.add(int(frame_numbers[0]))
    assert len(starts) > 3


def test_mp4_and_latent_shards(tmp_path):
    write_shards((sample(i, 'mp4') for i in range(3)), tmp_path / 'mp4', 2)
    ds = shard_dataset('val', T, str(tmp_path / 'mp4'))
    assert abs(ds[2]['video'].mean().item() * 255 - 20) < 2

    write_shards((sample(i, 'latent.npy') for i in range(3)), tmp_path / 'latent', 2)
    ds = shard_dataset('train', 4, str(tmp_path / 'latent'), fields=('action',), use_latent=True)
    item = ds[2]
    assert 'video' not in item and item['latent'].shape == (4, 4, 2, 2) and item['latent'].dtype == torch.float32
    assert (item['latent'] == 2).all()


def test_latent_option_must_match_the_shards(tmp_path):
    write_shards((sample(i) for i in range(2)), tmp_path, 2)
    with pytest.raises(ValueError, match='use_latent'):
        shard_dataset('val', T, str(tmp_path), use_latent=True)


def test_a_source_is_required_and_holds_latents_or_tokens(tmp_path):
    block = {'type': 'K600', 'split': 'val', 'read': {'num_frames': T}}
    with pytest.raises(OptionError, match=r'datasets\.val\.source: missing required key'):
        validate_block(block, DATASETS, 'exp.yml', 'datasets.val')
    shards = {'type': 'shards', 'path': str(tmp_path), 'use_latent': True, 'use_tokens': True}
    with pytest.raises(ValueError, match='use_latent or use_tokens, not both'):
        DATASETS.build(validate_block({**block, 'source': shards}, DATASETS, 'exp.yml', 'datasets.val'))


def test_streaming_needs_training_shards(tmp_path):
    make_shards(tmp_path, [2])
    with pytest.raises(ValueError, match='split: train'):
        shard_dataset('val', T, str(tmp_path), streaming=True)
    with pytest.raises(ValueError, match='streaming: true only'):
        shard_dataset('train', T, str(tmp_path), rank=0)


def stream(folder, **kwargs) -> ShardStream:
    return shard_dataset('train', T, str(folder), fields=('label',), streaming=True, **kwargs)


def test_three_shards_over_two_ranks_give_equal_counts(tmp_path):
    make_shards(tmp_path, [5, 4, 3])  # 12 samples; rank 0 reads shards 0 and 2 (8), rank 1 shard 1 (4)
    torch.manual_seed(0)
    seen = {}
    for rank in (0, 1):
        ds = stream(tmp_path, rank=rank, world_size=2, shuffle_buffer=4)
        assert len(ds) == 6
        epochs = [[item_number(item) for item in ds] for _ in range(3)]
        assert [len(e) for e in epochs] == [6, 6, 6]
        seen[rank] = set().union(*epochs)
    assert seen[0] <= {0, 1, 2, 3, 4, 9, 10, 11} and seen[1] <= {5, 6, 7, 8}
    assert seen[1] == {5, 6, 7, 8}  # the short rank repeats its shard to fill the epoch


def test_equal_counts_per_rank_with_dataloader_workers(tmp_path):
    make_shards(tmp_path, [5, 4, 3])
    counts, numbers = [], []
    for rank in (0, 1):
        ds = stream(tmp_path, rank=rank, world_size=2, shuffle_buffer=2)
        loader = DataLoader(ds, batch_size=2, num_workers=2, drop_last=True)
        batches = list(loader)
        counts.append(len(batches))
        numbers.append({int(n) for b in batches for n in (b['video'][:, 0, 0, 0, 0] * 255).round()})
    assert counts[0] == counts[1] == 2  # 6 per rank: each worker yields 3, one full batch of 2
    assert numbers[0].isdisjoint(numbers[1])


def test_rank_and_world_size_from_the_environment(tmp_path, monkeypatch):
    make_shards(tmp_path, [2, 2])
    monkeypatch.setenv('RANK', '1')
    monkeypatch.setenv('WORLD_SIZE', '2')
    assert distributed_rank() == (1, 2)
    assert distributed_rank(rank=0) == (0, 2)
    ds = stream(tmp_path)
    assert (ds.rank, ds.world_size) == (1, 2)
    assert {item_number(item) for item in ds} <= {2, 3}
    with pytest.raises(ValueError, match='not in'):
        distributed_rank(rank=2)


def test_samples_per_epoch_sets_the_epoch_length(tmp_path):
    make_shards(tmp_path, [3])
    ds = stream(tmp_path, samples_per_epoch=7, rank=0, world_size=1)
    assert len(ds) == 7 and len(list(ds)) == 7


def test_stream_is_reproducible_under_a_seed(tmp_path):
    make_shards(tmp_path, [4, 4])
    ds = stream(tmp_path, rank=0, world_size=1, shuffle_buffer=8)
    orders = []
    for _ in range(2):
        torch.manual_seed(3)
        orders.append([item_number(item) for item in ds])
    assert orders[0] == orders[1] and set(orders[0]) <= set(range(8))
    torch.manual_seed(4)
    assert [item_number(item) for item in ds] != orders[0]


def test_without_a_shuffle_buffer_an_epoch_is_one_pass(tmp_path):
    # The shuffle buffer draws from the endless stream, so it mixes neighbouring passes; without it an
    # epoch is exactly one pass over the shards, in a random shard order.
    make_shards(tmp_path, [4, 4])
    ds = stream(tmp_path, rank=0, world_size=1, shuffle_buffer=1)
    numbers = [item_number(item) for item in ds]
    assert numbers in (list(range(8)), [4, 5, 6, 7, 0, 1, 2, 3])


def corrupt_shards(folder):
    """Two shards; sample 1 has a broken mp4."""
    samples = [sample(i, 'mp4') for i in range(4)]
    samples[1]['mp4'] = b'\x00garbage' * 100
    write_shards(samples, folder, 2)
    return folder


def test_indexed_unreadable_sample_is_skipped_and_counted(tmp_path, caplog):
    corrupt_shards(tmp_path)
    ds = shard_dataset('val', T, str(tmp_path), name='Shards')
    with caplog.at_level(logging.WARNING, logger='far'):
        items = [ds[i] for i in range(4)]
    assert [item['index'] for item in items] == [0, 2, 2, 3]  # sample 1 replaced by the next readable one
    assert ds.num_skipped == 1
    assert 'shard-000000.tar:000001' in caplog.text and '1 skipped so far' in caplog.text


def test_strict_dataset_stops_at_the_unreadable_sample(tmp_path):
    corrupt_shards(tmp_path)
    ds = shard_dataset('val', T, str(tmp_path), name='Shards', strict=True)
    ds[0]
    with pytest.raises(CorruptSampleError, match=r'shard-000000\.tar:000001.*strict'):
        ds[1]


def test_stream_skips_unreadable_samples(tmp_path):
    corrupt_shards(tmp_path)
    ds = shard_dataset('train', T, str(tmp_path), name='Shards', streaming=True, rank=0, world_size=1)
    indices = [item['index'] for item in ds]
    assert len(indices) == 4 and 1 not in indices and ds.num_skipped >= 1
    strict = shard_dataset('train', T, str(tmp_path), name='Shards', streaming=True, rank=0, world_size=1,
                           strict=True)
    with pytest.raises(CorruptSampleError, match='000001'):
        list(strict)


def test_stream_counts_a_truncated_shard(tmp_path, caplog):
    make_shards(tmp_path, [3, 3])
    data = (tmp_path / 'shard-000001.tar').read_bytes()
    (tmp_path / 'shard-000001.tar').write_bytes(data[:len(data) // 2 + 100])
    ds = stream(tmp_path, rank=0, world_size=1, samples_per_epoch=5, shuffle_buffer=1)  # reaches the cut sample
    with caplog.at_level(logging.WARNING, logger='far'):
        numbers = [item_number(item) for item in ds]
    assert len(numbers) == 5 and ds.num_skipped >= 1


def test_skip_count_is_shared_with_dataloader_workers(tmp_path):
    corrupt_shards(tmp_path)
    ds = shard_dataset('val', T, str(tmp_path), name='Shards')
    list(DataLoader(ds, batch_size=1, num_workers=2))
    assert ds.num_skipped == 1


def test_missing_annotation_is_unreadable(tmp_path):
    broken = sample(0)
    del broken['json']['actions']
    write_shards([broken, sample(1)], tmp_path, 2)
    ds = shard_dataset('val', T, str(tmp_path), fields=('action',))
    assert ds[0]['index'] == 1 and ds.num_skipped == 1


def test_json_frame_count_must_match(tmp_path):
    broken = sample(0)
    broken['json']['num_frames'] = T + 1
    write_shards([broken, sample(1)], tmp_path, 2)
    ds = shard_dataset('val', T, str(tmp_path), strict=True)
    with pytest.raises(CorruptSampleError, match='num_frames'):
        ds[0]


def test_generated_split_is_written_once(tmp_path):
    calls = []

    def samples():
        calls.append(1)
        return (sample(i) for i in range(3))

    write_generated_split(tmp_path / 'train', {'n': 3}, samples, 2)
    write_generated_split(tmp_path / 'train', {'n': 3}, samples, 2)
    assert len(calls) == 1 and len(list_shards(str(tmp_path / 'train'))) == 2
    assert json.loads((tmp_path / 'train' / 'generation.json').read_text()) == {'n': 3}
    assert [p.name for p in tmp_path.iterdir()] == ['train']  # no temporary folder left
    with pytest.raises(ValueError, match='generated with'):
        write_generated_split(tmp_path / 'train', {'n': 4}, samples, 2)
    (tmp_path / 'val').mkdir()
    with pytest.raises(ValueError, match='not written by this generator'):
        write_generated_split(tmp_path / 'val', {'n': 3}, samples, 2)


def test_written_shards_are_byte_identical(tmp_path):
    write_shards((sample(i) for i in range(2)), tmp_path / 'a', 2)
    write_shards((sample(i) for i in range(2)), tmp_path / 'b', 2)
    assert (tmp_path / 'a' / 'shard-000000.tar').read_bytes() == (tmp_path / 'b' / 'shard-000000.tar').read_bytes()


def test_npy_members_are_plain_numpy(tmp_path):
    write_shards([sample(5)], tmp_path, 1)
    with tarfile.open(tmp_path / 'shard-000000.tar') as tar:
        frames = np.load(io.BytesIO(tar.extractfile('000005.frames.npy').read()))
    assert frames.dtype == np.uint8 and frames.shape == (T, H, W, 3)


# ---- checksums: garbled bytes are found ----

def garble(shard, key: str, member: str = 'frames.npy'):
    """Overwrite bytes in the middle of one member of a shard, as a failing disk or copy would."""
    members = dict(scan_shard(str(shard)))[key]
    offset, size = members[member]
    data = bytearray(shard.read_bytes())
    data[offset + size // 2:offset + size // 2 + 64] = b'\xff' * 64
    shard.write_bytes(bytes(data))


def test_written_samples_carry_checksums(tmp_path):
    write_shards([sample(0)], tmp_path, 1)
    with tarfile.open(tmp_path / 'shard-000000.tar') as tar:
        meta = json.loads(tar.extractfile('000000.json').read())
        frames = tar.extractfile('000000.frames.npy').read()
    assert meta['crc32'] == {'frames.npy': f'{zlib.crc32(frames):08x}'}


def test_garbled_sample_is_skipped_by_both_readers(tmp_path, caplog):
    write_shards((sample(i) for i in range(4)), tmp_path, 2)
    garble(tmp_path / 'shard-000000.tar', '000001')
    indexed = shard_dataset('val', T, str(tmp_path), name='Shards')
    with caplog.at_level(logging.WARNING, logger='far'):
        assert [indexed[i]['index'] for i in range(4)] == [0, 2, 2, 3]
    assert indexed.num_skipped == 1
    assert 'shard-000000.tar:000001 (ValueError: its frames.npy fails its checksum' in caplog.text
    streamed = shard_dataset('train', T, str(tmp_path), name='Shards', streaming=True, rank=0, world_size=1)
    assert 1 not in [item['index'] for item in streamed] and streamed.num_skipped >= 1
    strict = shard_dataset('val', T, str(tmp_path), name='Shards', strict=True)
    with pytest.raises(CorruptSampleError, match=r'000001 is unreadable .*fails its checksum'):
        strict[1]


def test_shards_without_checksums_still_read(tmp_path):
    with wds.TarWriter(str(tmp_path / 'shard-000000.tar')) as sink:  # as published shards are written
        for i in range(2):
            sink.write(sample(i))
    ds = shard_dataset('val', T, str(tmp_path), fields=('label',), strict=True)
    assert [item_number(ds[i]) for i in range(2)] == [0, 1]


# ---- a resumed stream continues its epoch ----

def loader_batches(ds, num_workers: int, start_step: int, count: int) -> list:
    """``count`` training batches from ``start_step`` on, as the trainer draws them: (samples, pixels)."""
    trainer = SimpleNamespace(batch_size=2, num_workers=num_workers, seed=5)
    batches = Trainer._stream_batches(trainer, ds, start_step, dict(num_workers=num_workers))
    return [(b['index'].tolist(), b['video']) for _, b in zip(range(count), batches)]


def assert_same_batches(a: list, b: list):
    assert [indices for indices, _ in a] == [indices for indices, _ in b]
    for (_, x), (_, y) in zip(a, b):
        assert torch.equal(x, y)  # the same random crops and starts too


@pytest.mark.parametrize('num_workers', [0, 2])
def test_resumed_stream_continues_where_it_stopped(tmp_path, num_workers):
    make_shards(tmp_path, [5, 4, 4])
    ds = stream(tmp_path, rank=0, world_size=1, shuffle_buffer=4, samples_per_epoch=11)
    # 2 workers: 6 and 5 samples, 3 and 2 batches of 2 per epoch (one sample left over each)
    assert ds.resume_point(7, batch_size=2, num_workers=num_workers).epoch == 1
    uninterrupted = loader_batches(ds, num_workers, 0, 8)
    epochs = [[i for indices, _ in uninterrupted[s] for i in indices] for s in (slice(0, 5), slice(5, 8))]
    assert len(epochs[0]) == 10 and epochs[1] != epochs[0][:6]  # each epoch in its own order
    for start in (3, 6):  # inside the first epoch, and inside the second
        assert_same_batches(loader_batches(ds, num_workers, start, 8 - start), uninterrupted[start:])


def test_resume_point_counts_each_workers_batches():
    ds = SimpleNamespace(samples_per_rank=11, corrupt=SimpleNamespace(dataset='X'))
    point = functools.partial(ShardStream.resume_point, ds, batch_size=2, num_workers=2)
    ds.quotas = functools.partial(ShardStream.quotas, ds)
    assert ds.quotas(2) == [6, 5]  # 3 and 2 batches: the loader takes w0, w1, w0, w1, w0
    assert [point(b) for b in (0, 1, 4, 5, 6)] == [(0, (0, 0), 0), (0, (2, 0), 1), (0, (4, 4), 0), (1, (0, 0), 0),
                                                   (1, (2, 0), 1)]
    with pytest.raises(ValueError, match='fewer than one batch of 7'):
        ShardStream.resume_point(ds, 1, batch_size=7, num_workers=2)


@pytest.mark.parametrize('damage', ['header', 'cut'])
def test_a_damaged_tar_is_reported_not_silently_shortened(tmp_path, caplog, damage):
    write_shards((sample(i) for i in range(4)), tmp_path, 4)
    shard = tmp_path / 'shard-000000.tar'
    header = dict(scan_shard(str(shard)))['000002']['frames.npy'][0] - 512  # where sample 2 starts
    data = shard.read_bytes()
    shard.write_bytes(data[:header] + b'\x07' * 4000 + data[header + 4000:] if damage == 'header' else data[:header])
    problem = 'the tar header there is damaged' if damage == 'header' else 'the file ends there, cut short'
    expected = f'{shard}: {problem}; the 2 samples before byte {header} are read, the rest is lost'
    with caplog.at_level(logging.WARNING, logger='far'):
        indexed = shard_dataset('val', T, str(tmp_path), fields=('label',))
        streamed = stream(tmp_path, rank=0, world_size=1)
    assert caplog.text.count(expected) == 2 and indexed.num_skipped == streamed.num_skipped == 1
    assert [indexed[i]['index'] for i in range(len(indexed))] == [0, 1] and len(streamed.index_of) == 2
    with pytest.raises(CorruptSampleError, match='the rest is lost'):
        shard_dataset('val', T, str(tmp_path), strict=True)
