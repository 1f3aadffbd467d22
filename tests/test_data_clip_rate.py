"""Frame rate, clip start and frame geometry as dataset options (``read.fps``, ``read.clip_start``, ``read.resize``),
on real mp4 files of known sizes and frame rates written and read as the datasets do."""
import json
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from far.data import CorruptSampleError
from far.options import OptionError
from far.video import decode_video, encode_video

STEP = 4  # gray level per frame index: frame t is 4 (t + 1), read back within a level or two of lossless H.264
EDGE = 32  # red columns on the left, blue on the right: what a square crop of a wide frame cuts away


def indexed_frames(num_frames: int, height: int, width: int) -> np.ndarray:
    frames = np.repeat((STEP * np.arange(1, num_frames + 1, dtype=np.uint8))[:, None, None, None], 3, axis=3)
    frames = np.broadcast_to(frames, (num_frames, height, width, 3)).copy()
    frames[:, :, :EDGE] = (255, 0, 0)
    frames[:, :, -EDGE:] = (0, 0, 255)
    return frames


@pytest.fixture
def videos(tmp_path):
    """``make(name, frames, height, width, fps)``: the path of a JSON list naming one such mp4."""
    def make(name: str, num_frames: int, height: int, width: int, fps: int) -> str:
        (tmp_path / f'{name}.mp4').write_bytes(encode_video(indexed_frames(num_frames, height, width), fps=fps, crf=0))
        (tmp_path / f'{name}.json').write_text(json.dumps([{'video_path': f'{name}.mp4', 'label': 0}]))
        return str(tmp_path / f'{name}.json')
    return make


def frame_indices(video: torch.Tensor) -> list:
    """The source frame each frame ``[T, 3, H, W]`` shows, read from its centre's gray level (black: -1)."""
    height, width = video.shape[-2:]
    levels = video[:, 1, height // 2, width // 2] * 255
    return [int(round(level / STEP)) - 1 for level in levels.tolist()]


def item(dataset_of, data_list: str, name: str = 'K600', split: str = 'val', **read) -> torch.Tensor:
    return dataset_of(name, split, {'type': 'data_list', 'path': data_list}, **read)[0]['video']


def test_time_resampling_follows_the_videos_own_frame_rate(dataset_of, videos):
    at_30 = videos('vga', 60, 120, 160, fps=30)  # 2 s: 16 frames at 8 fps, np.linspace(0, 59, 16) truncated
    clip = item(dataset_of, at_30, num_frames=9, fps=8, clip_start='center', resolution=32, resize='squash')
    assert frame_indices(clip) == [15, 19, 23, 27, 31, 35, 39, 43, 47]  # 8 - 4 = 4th resampled frame on
    at_25 = videos('wide', 50, 180, 320, fps=25)  # 2 s: 32 frames at 16 fps
    clip = item(dataset_of, at_25, num_frames=17, fps=16, clip_start='first', resolution=32, resize='squash')
    assert frame_indices(clip) == [0, 1, 3, 4, 6, 7, 9, 11, 12, 14, 15, 17, 18, 20, 22, 23, 25]


def test_a_video_slower_than_the_rate_keeps_its_frames(dataset_of, videos):
    at_25 = videos('wide', 30, 180, 320, fps=25)
    assert frame_indices(item(dataset_of, at_25, num_frames=9, fps=30, clip_start='first')) == list(range(9))
    assert frame_indices(item(dataset_of, at_25, num_frames=9, fps=25, clip_start='center')) == list(range(11, 20))


def test_without_fps_frame_interval_steps_and_clip_start_applies(dataset_of, videos):
    at_30 = videos('vga', 40, 120, 160, fps=30)
    assert frame_indices(item(dataset_of, at_30, num_frames=5, frame_interval=3)) == [0, 3, 6, 9, 12]
    # the middle frame less half the span of 13 frames: 20 - 6
    clip = item(dataset_of, at_30, num_frames=5, frame_interval=3, clip_start='center')
    assert frame_indices(clip) == [14, 17, 20, 23, 26]


def test_random_starts_cover_the_resampled_video_and_repeat_per_index_in_evaluation(dataset_of, videos):
    at_30 = videos('vga', 60, 120, 160, fps=30)
    resampled = [0, 3, 7, 11, 15, 19, 23, 27, 31, 35, 39, 43, 47, 51, 55, 59]
    train = dataset_of('K600', 'train', {'type': 'data_list', 'path': at_30}, num_frames=9, fps=8)
    random.seed(0)
    starts = set()
    for _ in range(60):
        ids = frame_indices(train[0]['video'])
        assert ids == resampled[resampled.index(ids[0]):][:9]
        starts.add(ids[0])
    assert starts == set(resampled[:8])
    evaluation = dataset_of('K600', 'val', {'type': 'data_list', 'path': at_30}, num_frames=9, fps=8,
                            clip_start='random')
    random.seed(1)
    first = frame_indices(evaluation[0]['video'])
    random.seed(2)
    assert frame_indices(evaluation[0]['video']) == first  # drawn from the index: every read, every process


def test_squash_is_the_whole_frame_resized_and_crop_cuts_the_sides(dataset_of, videos, tmp_path):
    at_25 = videos('wide', 10, 180, 320, fps=25)
    squashed = item(dataset_of, at_25, num_frames=4, resolution=32, resize='squash')
    whole = torch.from_numpy(decode_video(tmp_path / 'wide.mp4')[:4]).permute(0, 3, 1, 2).float() / 255
    expected = F.interpolate(whole, size=(32, 32), mode='bilinear', align_corners=False, antialias=True)
    assert squashed.shape == (4, 3, 32, 32)
    torch.testing.assert_close(squashed, expected, rtol=1e-5, atol=1e-6)
    assert squashed[:, 0, 16, 0].min() > 0.9 and squashed[:, 2, 16, -1].min() > 0.9  # both sides kept
    cropped = item(dataset_of, at_25, num_frames=4, resolution=32)
    assert cropped[:, 0, 16, 0].max() < 0.5 and cropped[:, 2, 16, -1].max() < 0.5  # a centre crop loses them
    train = dataset_of('K600', 'train', {'type': 'data_list', 'path': at_25}, num_frames=4, resolution=32,
                       resize='squash', clip_start='first')
    torch.testing.assert_close(train[0]['video'], squashed)  # no random crop, no flip in training either


def test_a_clip_longer_than_the_video_at_that_rate(dataset_of, videos):
    at_25 = videos('short', 20, 120, 160, fps=25)  # 0.8 s: 6 frames at 8 fps
    with pytest.raises(CorruptSampleError, match=r'6 at read.fps=8.*read.num_frames asks for 9'):
        dataset_of('K600', 'val', {'type': 'data_list', 'path': at_25}, num_frames=9, fps=8, strict=True)[0]
    padded = item(dataset_of, at_25, name='UCF101', num_frames=9, fps=8)  # UCF-101 pads, as the reference does
    assert frame_indices(padded) == [0, 3, 7, 11, 15, 19, -1, -1, -1]


def test_fps_needs_a_frame_rate(dataset_of, tmp_path):
    np.savez(tmp_path / 'frames.npz', video=indexed_frames(20, 16, 16))
    (tmp_path / 'list.json').write_text(json.dumps([{'video_path': 'frames.npz'}]))
    with pytest.raises(CorruptSampleError, match='read.fps: null'):
        dataset_of('K600', 'val', {'type': 'data_list', 'path': str(tmp_path / 'list.json')}, num_frames=4, fps=8,
                   strict=True)[0]


@pytest.mark.parametrize('read,key', [({'resize': 'stretch'}, 'read.resize'), ({'fps': 0}, 'fps must be'),
                                      ({'fps': -8}, 'fps must be'), ({'fps': 8, 'frame_interval': 3}, 'frame_interval'),
                                      ({'resize': 'squash', 'flip': True}, 'flip: false'),
                                      ({'clip_start': 'middle'}, 'read.clip_start')])
def test_bad_options_stop_at_load_naming_the_key(dataset_of, videos, read, key):
    data_list = videos('vga', 20, 120, 160, fps=30)
    with pytest.raises(OptionError, match=key) as error:
        dataset_of('K600', 'val', {'type': 'data_list', 'path': data_list}, num_frames=4, **read)
    assert '\n' not in str(error.value)
