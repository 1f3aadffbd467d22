"""Minecraft in FAR's JSON list layout: mp4 videos with action files, and latents."""
import json

import numpy as np
import torch

from far.video import encode_video


def test_minecraft_items(dataset_of, tmp_path):
    levels = (20 + 8 * np.arange(24)).astype(np.uint8)
    frames = np.broadcast_to(levels[:, None, None, None], (24, 32, 32, 3)).copy()
    (tmp_path / 'ep.mp4').write_bytes(encode_video(frames))
    np.savez(tmp_path / 'ep.npz', actions=np.arange(24) % 4)
    torch.save(torch.arange(24.0)[:, None, None, None].expand(24, 32, 8, 8).clone(), tmp_path / 'ep.pt')
    (tmp_path / 'minecraft_val.json').write_text(json.dumps([{'video_path': 'ep.mp4', 'action_path': 'ep.npz'}]))
    (tmp_path / 'latent.json').write_text(json.dumps([{'latent_path': 'ep.pt', 'action_path': 'ep.npz'}]))

    item = dataset_of('Minecraft', 'val', {'type': 'data_list', 'path': str(tmp_path / 'minecraft_val.json')},
                      num_frames=24)[0]
    assert set(item) == {'video', 'action', 'index'} and item['video'].shape == (24, 3, 32, 32)
    frame = ((item['video'].mean(dim=(1, 2, 3)) * 255 - 20) / 8).round().long()
    assert torch.equal(frame, torch.arange(24)) and torch.equal(item['action'], torch.arange(24) % 4)

    source = {'type': 'data_list', 'path': str(tmp_path / 'latent.json'), 'use_latent': True}
    train = dataset_of('Minecraft', 'train', source, num_frames=10)
    for _ in range(10):
        item = train[0]
        numbers = item['latent'][:, 0, 0, 0].long()
        assert torch.equal(numbers, numbers[0] + torch.arange(10)) and torch.equal(item['action'], numbers % 4)
