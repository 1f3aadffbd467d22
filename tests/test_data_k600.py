"""Kinetics-600 in the JSON list layout, on small generated videos: items, frame rules, no padding, the YAML block."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from far.data import CorruptSampleError
from far.data.k600 import K600
from far.experiment import load_experiment
from far.video import encode_video

CONFIG = Path(__file__).resolve().parents[1] / 'options' / 'test' / 'nbp' / 'NBP_base_k600_res128_5to12.yml'
H, W = 40, 56  # resized to 32: 32 x 44, then a 32 x 32 crop


@pytest.fixture
def k600(tmp_path):
    """k600_val.json with two videos of 20 and 6 frames; frame t is flat gray 20 + 8t."""
    (tmp_path / 'videos').mkdir()
    records = []
    for name, frames in (('a', 20), ('b', 6)):
        levels = (20 + 8 * np.arange(frames)).astype(np.uint8)
        video = np.broadcast_to(levels[:, None, None, None], (frames, H, W, 3)).copy()
        (tmp_path / 'videos' / f'{name}.mp4').write_bytes(encode_video(video))
        records.append({'video_path': f'videos/{name}.mp4'})
    (tmp_path / 'k600_val.json').write_text(json.dumps(records))
    return tmp_path / 'k600_val.json'


def test_items_carry_video_only_from_frame_zero(dataset_of, k600):
    ds = dataset_of('K600', 'val', {'type': 'data_list', 'path': str(k600)}, num_frames=17, resolution=32)
    item = ds[0]
    assert set(item) == {'video', 'index'} and item['video'].shape == (17, 3, 32, 32)
    levels = [round((v * 255 - 20) / 8) for v in item['video'].mean(dim=(1, 2, 3)).tolist()]
    assert levels == list(range(17))
    assert K600.conditions == {}


def test_short_videos_are_unreadable_not_padded(dataset_of, k600):
    strict = dataset_of('K600', 'val', {'type': 'data_list', 'path': str(k600)},
                        num_frames=17, resolution=32, strict=True)
    with pytest.raises(CorruptSampleError, match='the clip has 6 frames, read.num_frames asks for 17'):
        strict[1]
    assert dataset_of('K600', 'val', {'type': 'data_list', 'path': str(k600)},
                      num_frames=17, resolution=32)[1]['index'] == 0  # skipped


def test_the_paper_config_reads_it(k600):
    opt = load_experiment(str(CONFIG),
                          [f'datasets.val.source.path={k600}', 'datasets.val.read.resolution=32',
                           'autoencoder.image_size=32'])
    video = opt.build_dataset('val')[0]['video']
    assert video.shape == (17, 3, 32, 32) and torch.all((video >= 0) & (video <= 1))
