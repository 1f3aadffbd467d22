"""UCF-101 in FAR's JSON list layout: labels, sampling rules, padding, resize/crop, flips, errors."""
import json
import logging
import random

import numpy as np
import pytest
import torch

from far.data import CorruptSampleError
from far.video import encode_video
from far.options import OptionError, validate_block
from far.registry import DATASETS

H, W = 40, 56  # resized to 32: 32 x int(32 * 56 / 40) = 32 x 44, then a 32 x 32 crop


def write_video(path, num_frames: int):
    """Frame t is flat gray 20 + 8t."""
    levels = (20 + 8 * np.arange(num_frames)).astype(np.uint8)
    path.write_bytes(encode_video(np.broadcast_to(levels[:, None, None, None], (num_frames, H, W, 3)).copy()))


def frame_numbers(video: torch.Tensor) -> list:
    """Which source frame each output frame is (-1 for black padding)."""
    return [int(round((v * 255 - 20) / 8)) if v > 0.02 else -1 for v in video.mean(dim=(1, 2, 3)).tolist()]


@pytest.fixture
def ucf(tmp_path):
    """trainval.json with three videos: 20, 30 and 10 frames (the last shorter than a 16-frame clip)."""
    (tmp_path / 'videos').mkdir()
    records = []
    for i, (name, frames, label) in enumerate([('a', 20, 7), ('b', 30, 3), ('c', 10, 100)]):
        write_video(tmp_path / 'videos' / f'v_{name}.mp4', frames)
        records.append({'video_path': f'videos/v_{name}.mp4', 'label': label})
    (tmp_path / 'trainval.json').write_text(json.dumps(records))
    return tmp_path / 'trainval.json'


def test_evaluation_items(dataset_of, ucf):
    ds = dataset_of('UCF101', 'val', {'type': 'data_list', 'path': str(ucf)}, num_frames=16, resolution=32)
    assert len(ds) == 3 and ds.labels == [7, 3, 100]
    item = ds[0]
    assert set(item) == {'video', 'label', 'index'} and item['label'] == 7 and item['index'] == 0
    assert item['video'].shape == (16, 3, 32, 32) and item['video'].dtype == torch.float32
    assert 0 <= item['video'].min() and item['video'].max() <= 1
    assert frame_numbers(item['video']) == list(range(16))


def test_evaluation_order_and_content_are_deterministic(dataset_of, ucf):
    ds = dataset_of('UCF101', 'val', {'type': 'data_list', 'path': str(ucf)}, num_frames=16, frame_interval=3)
    first = [ds[i]['video'] for i in range(3)]
    again = [ds[i]['video'] for i in range(3)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert frame_numbers(first[1]) == list(range(16))  # 30 frames cannot hold 16 at interval 3: consecutive


def test_short_videos_are_padded_with_black_frames(dataset_of, ucf):
    ds = dataset_of('UCF101', 'val', {'type': 'data_list', 'path': str(ucf)}, num_frames=16)
    assert frame_numbers(ds[2]['video']) == list(range(10)) + [-1] * 6
    assert ds[2]['video'][10:].abs().max() == 0


def test_training_samples_random_starts_crops_and_flips(dataset_of, ucf, monkeypatch):
    random.seed(0)
    ds = dataset_of('UCF101', 'train', {'type': 'data_list', 'path': str(ucf)},
                    num_frames=4, frame_interval=3, resolution=32, flip=True)
    starts = set()
    for _ in range(60):
        numbers = frame_numbers(ds[1]['video'])
        assert numbers == [numbers[0] + 3 * k for k in range(4)]
        starts.add(numbers[0])
    assert starts <= set(range(30 - 9)) and len(starts) > 10  # every start: see test_data_video

    # A horizontal ramp tells crops and flips apart.
    ramp = np.broadcast_to(np.linspace(0, 255, W).astype(np.uint8)[None, None, :, None], (4, H, W, 3)).copy()
    monkeypatch.setattr('far.data.json_list.decode_video_and_rate', lambda path: (ramp, 25.0))
    rows = {tuple(ds[0]['video'][0, 0, 0, [0, -1]].mul(255).round().tolist()) for _ in range(80)}
    assert any(left > right for left, right in rows) and any(left < right for left, right in rows)
    assert len(rows) > 4  # several crop offsets


def test_paths_relative_to_the_working_directory(dataset_of, ucf, tmp_path, monkeypatch):
    records = json.loads(ucf.read_text())
    for r in records:
        r['video_path'] = f'{tmp_path.name}/{r["video_path"]}'
    (tmp_path / 'cwd.json').write_text(json.dumps(records))
    monkeypatch.chdir(tmp_path.parent)
    assert dataset_of('UCF101', 'val', {'type': 'data_list', 'path': str(tmp_path / 'cwd.json')},
                      num_frames=16)[1]['label'] == 3


def test_missing_files_fail_before_work(dataset_of, tmp_path, ucf):
    with pytest.raises(FileNotFoundError, match='download.py'):
        dataset_of('UCF101', 'val', {'type': 'data_list', 'path': str(tmp_path / 'nope.json')}, num_frames=16)
    (tmp_path / 'moved.json').write_text(json.dumps([{'video_path': 'elsewhere/v.mp4', 'label': 0}]))
    with pytest.raises(FileNotFoundError, match='elsewhere/v.mp4'):
        dataset_of('UCF101', 'val', {'type': 'data_list', 'path': str(tmp_path / 'moved.json')}, num_frames=16)
    (tmp_path / 'nolabel.json').write_text(json.dumps([{'video_path': 'videos/v_a.mp4'}]))
    with pytest.raises(ValueError, match="record 0 .* lacks \\['label'\\]"):
        dataset_of('UCF101', 'val', {'type': 'data_list', 'path': str(tmp_path / 'nolabel.json')}, num_frames=16)


def test_corrupt_video_is_skipped_and_counted_or_stops_a_strict_run(dataset_of, ucf, caplog):
    (ucf.parent / 'videos' / 'v_b.mp4').write_bytes(b'\x00' * 500)
    ds = dataset_of('UCF101', 'val', {'type': 'data_list', 'path': str(ucf)}, num_frames=16)
    with caplog.at_level(logging.WARNING, logger='far'):
        assert ds[1]['index'] == 2
    assert ds.num_skipped == 1 and 'v_b.mp4' in caplog.text
    strict = dataset_of('UCF101', 'val', {'type': 'data_list', 'path': str(ucf)}, num_frames=16, strict=True)
    with pytest.raises(CorruptSampleError, match='v_b.mp4'):
        strict[1]


def test_num_samples_keeps_the_first_videos(dataset_of, ucf):
    ds = dataset_of('UCF101', 'val', {'type': 'data_list', 'path': str(ucf)}, num_frames=16, num_samples=2)
    assert len(ds) == 2 and ds.labels == [7, 3]
    with pytest.raises(ValueError, match='num_samples=5'):
        dataset_of('UCF101', 'val', {'type': 'data_list', 'path': str(ucf)}, num_frames=16, num_samples=5)


def test_yaml_block_is_validated_and_built(ucf):
    block = {'type': 'UCF101', 'split': 'train', 'source': {'type': 'data_list', 'path': str(ucf)},
             'read': {'num_frames': 16, 'resolution': 32, 'flip': True}}
    ds = DATASETS.build(validate_block(block, DATASETS, 'exp.yml', 'datasets.train'))
    assert ds[0]['video'].shape == (16, 3, 32, 32)
    with pytest.raises(OptionError, match="datasets.train.read.use_flip: unknown key.*'flip'"):
        validate_block({**block, 'read': {'num_frames': 16, 'use_flip': True}}, DATASETS, 'exp.yml', 'datasets.train')
    with pytest.raises(OptionError, match="split: got 'training'"):
        validate_block({**block, 'split': 'training'}, DATASETS, 'exp.yml', 'datasets.train')
    # the source and the reading options are separate groups: a reading option is no source option
    with pytest.raises(OptionError, match=r"datasets\.train\.source\.num_frames: unknown key for data source "
                                          r"'data_list'"):
        validate_block({**block, 'source': {'type': 'data_list', 'path': str(ucf), 'num_frames': 16}}, DATASETS,
                       'exp.yml', 'datasets.train')
    with pytest.raises(OptionError, match=r"datasets\.train\.source\.type: unknown data source 'tar'"):
        validate_block({**block, 'source': {'type': 'tar', 'path': str(ucf)}}, DATASETS, 'exp.yml', 'datasets.train')
    with pytest.raises(OptionError, match=r'datasets\.train\.read\.num_frames: missing required key'):
        validate_block({**block, 'read': {}}, DATASETS, 'exp.yml', 'datasets.train')
