"""BAIR in FAR's JSON list layout: video-only items, consecutive frames, padding."""
import json

import numpy as np
import torch

from far.video import encode_video


def write_clip(folder, name: str, num_frames: int) -> dict:
    levels = (20 + 8 * np.arange(num_frames)).astype(np.uint8)
    frames = np.broadcast_to(levels[:, None, None, None], (num_frames, 64, 64, 3)).copy()
    (folder / f'{name}.mp4').write_bytes(encode_video(frames))
    # BAIR's actions are continuous robot commands: kept in the layout, not read
    np.savez(folder / f'{name}_actions.npz', actions=np.random.rand(num_frames, 4).astype(np.float32))
    return {'video_path': str(folder / f'{name}.mp4'), 'action_path': str(folder / f'{name}_actions.npz')}


def test_bair_items(dataset_of, tmp_path):
    records = [write_clip(tmp_path, 'traj0', 30), write_clip(tmp_path, 'traj1', 12)]
    (tmp_path / 'bair_val.json').write_text(json.dumps(records))
    ds = dataset_of('BAIR', 'val', {'type': 'data_list', 'path': str(tmp_path / 'bair_val.json')}, num_frames=16)
    assert len(ds) == 2 and ds.labels is None
    item = ds[0]
    assert set(item) == {'video', 'index'} and item['video'].shape == (16, 3, 64, 64)
    means = item['video'].mean(dim=(1, 2, 3)) * 255
    assert torch.allclose(means, 20 + 8 * torch.arange(16.0), atol=2)
    short = ds[1]['video']
    assert short[12:].abs().max() == 0 and short[11].mean() * 255 > 100  # 12 frames, then black padding

    train = dataset_of('BAIR', 'train', {'type': 'data_list', 'path': str(tmp_path / 'bair_val.json')}, num_frames=30)
    first = train[0]['video'].mean(dim=(1, 2, 3)) * 255
    assert abs(first[0].item() - 20) < 2  # 30 of 30 frames: the only start is 0
