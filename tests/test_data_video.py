"""Video decoding, frame selection rules and resize/crop geometry (far.data.video)."""
import random

import numpy as np
import pytest
import torch

from far.data.transforms import crop_square, resize_short_side, sample_frame_ids
from far.video import decode_video, encode_video


def gray_frames(num_frames: int, height: int = 32, width: int = 48) -> np.ndarray:
    """Frame t is flat gray 20 + 8t: identifiable after lossy coding."""
    levels = 20 + 8 * np.arange(num_frames, dtype=np.uint8)
    return np.broadcast_to(levels[:, None, None, None], (num_frames, height, width, 3)).copy()


def test_encode_decode_round_trip_from_bytes_and_path(tmp_path):
    frames = gray_frames(12)
    data = encode_video(frames)
    (tmp_path / 'clip.mp4').write_bytes(data)
    for decoded in (decode_video(data), decode_video(tmp_path / 'clip.mp4')):
        assert decoded.shape == frames.shape and decoded.dtype == np.uint8
        assert np.abs(decoded.astype(int) - frames).max() <= 3


def test_decode_garbage_raises_a_value_error():
    with pytest.raises(ValueError, match='undecodable video'):  # counted as a corrupt sample by the datasets
        decode_video(b'not a video at all' * 50)


def test_encode_rejects_odd_sizes_and_wrong_dtype():
    with pytest.raises(ValueError, match='even'):
        encode_video(np.zeros((2, 31, 32, 3), np.uint8))
    with pytest.raises(ValueError, match='uint8'):
        encode_video(np.zeros((2, 32, 32, 3), np.float32))


@pytest.mark.parametrize('total,num,interval', [(40, 16, 1), (40, 16, 2), (100, 16, 3), (16, 16, 1)])
def test_training_starts_are_uniform_over_the_valid_starts(total, num, interval):
    rng = random.Random(0)
    starts = set()
    for _ in range(2000):
        ids = sample_frame_ids(total, num, interval, 'random', rng)
        assert len(ids) == num and ids[-1] < total
        assert all(b - a == interval for a, b in zip(ids, ids[1:]))
        starts.add(ids[0])
    assert starts == set(range(total - (num - 1) * interval))


def test_evaluation_starts_at_zero_and_keeps_the_interval():
    assert sample_frame_ids(100, 16, 3, 'first', random.Random(0)) == list(range(0, 48, 3))


@pytest.mark.parametrize('start', ['random', 'first', 'center'])
def test_too_short_for_the_interval_gives_consecutive_frames_from_zero(start):
    # 20 frames cannot hold 16 frames at interval 3 (needs 46): frames 0..15, as FAR's UCF-101 loader
    assert sample_frame_ids(20, 16, 3, start, random.Random(0)) == list(range(16))


def test_resize_short_side_follows_torchvision_sizes():
    video = torch.rand(2, 3, 240, 320)
    assert resize_short_side(video, 64).shape == (2, 3, 64, 85)  # int(64 * 320 / 240)
    assert resize_short_side(video.transpose(-1, -2), 64).shape == (2, 3, 85, 64)
    assert resize_short_side(video, 240) is video  # no interpolation at the same size


def test_resize_is_antialiased_bilinear():
    # A one-in-four column pattern shrunk 4x: antialiasing averages it to 0.25; plain bilinear would sample
    # between columns 1 and 2 of each group and see 0.
    video = torch.zeros(1, 1, 32, 32)
    video[..., ::4] = 1.0
    out = resize_short_side(video, 8)
    assert out.shape == (1, 1, 8, 8)
    assert torch.allclose(out[..., 1:-1, 1:-1], torch.full_like(out[..., 1:-1, 1:-1], 0.25), atol=1e-5)


def test_center_crop_rounds_like_torchvision():
    video = torch.arange(85, dtype=torch.float32).expand(1, 1, 64, 85)
    out = crop_square(video, 64)
    assert out.shape == (1, 1, 64, 64)
    assert out[0, 0, 0, 0] == 10  # round((85 - 64) / 2) = round(10.5) = 10


def test_random_crop_covers_every_offset():
    video = torch.arange(40, dtype=torch.float32).expand(1, 1, 32, 40)
    rng = random.Random(0)
    lefts = {int(crop_square(video, 32, rng)[0, 0, 0, 0]) for _ in range(500)}
    assert lefts == set(range(9))


def test_crop_larger_than_the_video_is_an_error():
    with pytest.raises(ValueError, match='cannot crop'):
        crop_square(torch.zeros(1, 3, 16, 32), 32)
