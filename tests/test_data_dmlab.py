"""DMLab in FAR's JSON list layout: npz videos with actions, latents, alignment, short clips."""
import json
import random

import numpy as np
import pytest
import torch

from far.data import CorruptSampleError


def frame_numbers(video: torch.Tensor) -> torch.Tensor:
    return (video[:, 0, 0, 0] * 255).round().long()


@pytest.fixture
def dmlab(tmp_path):
    """Two 40-frame episodes and one 10-frame one; frame t of episode e has pixel value t and action (t + e) % 4."""
    pixels, latents = [], []
    for e, length in enumerate([40, 40, 10]):
        video = np.zeros((length, 64, 64, 3), np.uint8)
        video[:, 0, 0, 0] = np.arange(length)
        actions = (np.arange(length) + e) % 4
        np.savez(tmp_path / f'{e}.npz', video=video, actions=actions)
        torch.save(torch.arange(length, dtype=torch.float16)[:, None, None, None].expand(length, 32, 8, 8).clone(),
                   tmp_path / f'{e}.pt')
        np.savez(tmp_path / f'{e}_actions.npz', actions=actions)
        pixels.append({'video_path': f'{e}.npz'})
        latents.append({'latent_path': f'{e}.pt', 'action_path': f'{e}_actions.npz'})
    (tmp_path / 'dmlab_val.json').write_text(json.dumps(pixels))
    (tmp_path / 'dmlab_latent.json').write_text(json.dumps(latents))
    return tmp_path


def test_pixel_items_carry_aligned_actions(dataset_of, dmlab):
    ds = dataset_of('DMLab', 'val', {'type': 'data_list', 'path': str(dmlab / 'dmlab_val.json')}, num_frames=40)
    item = ds[1]
    assert set(item) == {'video', 'action', 'index'}
    assert item['video'].shape == (40, 3, 64, 64) and item['action'].dtype == torch.int64
    assert torch.equal(frame_numbers(item['video']), torch.arange(40))
    assert torch.equal(item['action'], (torch.arange(40) + 1) % 4)


def test_training_clips_and_actions_move_together(dataset_of, dmlab):
    random.seed(0)
    ds = dataset_of('DMLab', 'train', {'type': 'data_list', 'path': str(dmlab / 'dmlab_val.json')},
                    num_frames=8, frame_interval=2)
    for _ in range(20):
        item = ds[0]
        numbers = frame_numbers(item['video'])
        assert torch.equal(numbers, numbers[0] + 2 * torch.arange(8)) and numbers[-1] < 40
        assert torch.equal(item['action'], numbers % 4)


def test_latent_items(dataset_of, dmlab):
    ds = dataset_of('DMLab', 'val', {'type': 'data_list', 'path': str(dmlab / 'dmlab_latent.json'), 'use_latent': True},
                    num_frames=16)
    item = ds[1]
    assert set(item) == {'latent', 'action', 'index'}
    assert item['latent'].shape == (16, 32, 8, 8) and item['latent'].dtype == torch.float32
    assert torch.equal(item['latent'][:, 0, 0, 0].long(), torch.arange(16))
    assert torch.equal(item['action'], (torch.arange(16) + 1) % 4)


def test_latent_records_need_action_files(dataset_of, dmlab):
    (dmlab / 'bad.json').write_text(json.dumps([{'latent_path': '0.pt'}]))
    with pytest.raises(ValueError, match='action_path'):
        dataset_of('DMLab', 'val', {'type': 'data_list', 'path': str(dmlab / 'bad.json'), 'use_latent': True},
                   num_frames=16)


def test_short_episodes_are_not_padded(dataset_of, dmlab):
    ds = dataset_of('DMLab', 'val', {'type': 'data_list', 'path': str(dmlab / 'dmlab_val.json')}, num_frames=16)
    assert ds[2]['index'] == 0 and ds.num_skipped == 1  # the 10-frame episode is skipped
    strict = dataset_of('DMLab', 'val', {'type': 'data_list', 'path': str(dmlab / 'dmlab_val.json')},
                        num_frames=16, strict=True)
    with pytest.raises(CorruptSampleError, match=r'2\.npz.*10 frames, read.num_frames asks for 16'):
        strict[2]
