"""MovingShapes: deterministic rendering, shards written once and atomically, learnable but moving content."""
import multiprocessing
import os

import numpy as np
import pytest
import torch

from far.data import ShardStream
from far.data.moving_shapes import NUM_CLASSES, generate_samples, render_clip
from far.options import validate_block
from far.registry import DATASETS


def small(root, split='val', read=None, **source):
    block = {'type': 'MovingShapes', 'split': split,
             'source': {'root': str(root), 'num_videos': 36, 'videos_per_shard': 16, **source}, 'read': read or {}}
    return DATASETS.build(validate_block(block, DATASETS, 'test.yml'))


def test_items_follow_the_dataset_contract(tmp_path):
    ds = small(tmp_path)
    assert len(ds) == 36 and sorted(os.listdir(tmp_path / 'val'))[:3] == ['generation.json', 'shard-000000.tar',
                                                                              'shard-000001.tar']
    item = ds[5]
    assert set(item) == {'video', 'label', 'index'} and item['index'] == 5
    assert item['video'].shape == (16, 3, 32, 32) and item['video'].dtype == torch.float32
    assert 0 <= item['video'].min() and item['video'].max() <= 1 and item['video'].max() > 0.5
    assert ds.labels == [i % NUM_CLASSES for i in range(36)] and item['label'] == 5


@pytest.mark.parametrize('resolution', [16, 64])
def test_resolutions(tmp_path, resolution):
    ds = small(tmp_path, resolution=resolution, num_frames=8, num_videos=4)
    assert ds[0]['video'].shape == (8, 3, resolution, resolution)


def test_rendering_is_deterministic_and_splits_differ():
    first = [s['frames.npy'] for s in generate_samples('train', 5, 16, 32, 2, seed=0)]
    again = [s['frames.npy'] for s in generate_samples('train', 5, 16, 32, 2, seed=0)]
    val = [s['frames.npy'] for s in generate_samples('val', 5, 16, 32, 2, seed=0)]
    other_seed = [s['frames.npy'] for s in generate_samples('train', 5, 16, 32, 2, seed=1)]
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not any(np.array_equal(a, b) for a, b in zip(first, val))
    assert not any(np.array_equal(a, b) for a, b in zip(first, other_seed))


def test_classes_differ_in_colour_and_shape():
    rng = np.random.default_rng(0)
    dominant = [int(render_clip(label, rng, 4, 32, 1).reshape(-1, 3).max(0).argmax()) for label in range(3)]
    assert dominant == [0, 1, 2]  # red, green, blue objects
    areas = [(render_clip(label, np.random.default_rng(1), 1, 64, 1).max(-1) > 0).sum() for label in (0, 3, 6)]
    assert len(set(areas)) == 3  # square, circle and triangle of the same size cover different areas


def test_objects_move_several_pixels_per_frame_so_copying_the_last_frame_is_beatable(tmp_path):
    ds = small(tmp_path, max_shapes=1)
    displacements, copy_last_mse = [], []
    for i in range(len(ds)):
        video = ds[i]['video']
        mask = video.amax(1) > 0.5
        ys, xs = torch.arange(32.0)[:, None], torch.arange(32.0)[None, :]
        centroids = torch.stack([torch.stack([(xs * m).sum() / m.sum(), (ys * m).sum() / m.sum()]) for m in mask])
        displacements.append((centroids[1:] - centroids[:-1]).norm(dim=-1))
        copy_last_mse.append(((video[2:] - video[1:-1]) ** 2).mean())  # predict frames 2.. from frame t-1
    displacements = torch.cat(displacements)
    # 2-4 px per frame, except across a bounce, where the reflected step can nearly cancel out
    assert displacements.median() >= 2.0 and (displacements > 1.5).float().mean() > 0.85
    assert torch.stack(copy_last_mse).mean() > 0.01 and torch.stack(copy_last_mse).min() > 0.002


def test_existing_shards_are_reused_and_other_parameters_refused(tmp_path):
    small(tmp_path)
    shard = tmp_path / 'val' / 'shard-000000.tar'
    stamp = shard.stat().st_mtime_ns
    small(tmp_path)
    assert shard.stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match='generated with .*delete that folder'):
        small(tmp_path, seed=1)


def _build(root, queue):
    ds = small(root, 'train')
    queue.put(len(ds))


def test_two_processes_starting_together_share_one_copy(tmp_path):
    ctx = multiprocessing.get_context('fork')
    queue = ctx.Queue()
    workers = [ctx.Process(target=_build, args=(tmp_path, queue)) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert [w.exitcode for w in workers] == [0, 0] and [queue.get(), queue.get()] == [36, 36]
    assert os.listdir(tmp_path) == ['train']  # the losing copy is gone


def test_streaming_training_set(tmp_path):
    ds = small(tmp_path, 'train', read={'streaming': True, 'rank': 0, 'world_size': 2})
    assert isinstance(ds, ShardStream) and len(ds) == 18
    labels = [item['label'] for item in ds]
    assert len(labels) == 18 and set(labels) <= set(range(NUM_CLASSES))
