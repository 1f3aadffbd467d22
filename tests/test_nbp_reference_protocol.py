"""The ``nbp_reference`` protocol: NBP's evaluation draw (DistributedSampler shares of 8 processes, each cycled),
on tiny generated videos read as the reference reads them, scored with PSNR, SSIM, LPIPS and FVD."""
import json
import math

import numpy as np
import pytest
import torch
from accelerate import Accelerator

import far  # noqa: F401  (fills the registries)
from far.evaluation import sample_videos
from far.experiment import load_experiment
from far.metrics.nbp_reference import reference_order
from far.pipelines import build_sampler
from far.registry import PROTOCOLS
from far.video import encode_video


def distributed_shares(num_items: int, processes: int, seed: int) -> list:
    """torch's DistributedSampler written out: a seeded permutation, padded from its start to a multiple of the
    processes, dealt round-robin."""
    order = torch.randperm(num_items, generator=torch.Generator().manual_seed(seed)).tolist()
    total = math.ceil(num_items / processes) * processes
    order += order[:total - num_items]
    return [order[rank::processes] for rank in range(processes)]


@pytest.mark.parametrize('num_items,num_videos,processes', [(10, 14, 3), (5, 16, 8), (29, 29, 1)])
def test_the_draw_cycles_each_processs_share(num_items, num_videos, processes):
    shares = distributed_shares(num_items, processes, seed=0)
    per_process = math.ceil(num_videos / processes)
    expected = [share[i % len(share)] for share in shares for i in range(per_process)]
    order = reference_order(num_items, num_videos, processes, seed=0)
    assert order == expected and len(order) == per_process * processes
    assert set(order) == set(range(num_items))
    assert reference_order(num_items, num_videos, processes, seed=1) != order  # the protocol's seed shuffles


def test_the_papers_numbers_of_samples():
    ucf = reference_order(9537, 10_000, 8, seed=0)  # split 1's training list
    k600 = reference_order(29_739, 50_000, 8, seed=0)  # the validation list
    assert (len(ucf), len(set(ucf)), len(k600), len(set(k600))) == (10_000, 9537, 50_000, 29_739)


@pytest.fixture(scope='module')
def pipe(scripts):
    """The tiny demo sampler with random weights (32x32 pixels)."""
    torch.manual_seed(0)
    opt = load_experiment(str(scripts.demo), scripts.tiny)
    pipe = build_sampler(opt.test.sampler, model=opt.build_model().eval(), autoencoder=opt.build_autoencoder())
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def k600_list(tmp_path):
    """Three 25 fps videos of 40 frames (48x36, 4:3) with random content, in a JSON list."""
    rng = np.random.default_rng(0)
    records = []
    for n in range(3):
        frames = np.repeat(rng.integers(0, 256, (40, 9, 12, 3), dtype=np.uint8), 4, axis=1).repeat(4, axis=2)
        (tmp_path / f'{n}.mp4').write_bytes(encode_video(frames, fps=25))
        records.append({'video_path': f'{n}.mp4'})
    (tmp_path / 'val.json').write_text(json.dumps(records))
    return str(tmp_path / 'val.json')


@pytest.mark.slow
def test_a_cycled_list_gives_its_first_clips_again_with_new_samples(dataset_of, k600_list, pipe, shared_dir):
    dataset = dataset_of('K600', 'val', {'type': 'data_list', 'path': k600_list}, num_frames=10, fps=16,
                         clip_start='random', resolution=32, resize='squash')
    weights = shared_dir / 'weights'
    vgg = weights / 'lpips_vgg'
    lpips = {'type': 'lpips', 'net': 'vgg', 'backbone_weights': str(vgg / 'vgg16_features_imagenet.pth'),
             'head_weights': str(vgg / 'lpips_v0.1_vgg_lin.pth')}
    fvd = {'type': 'fvd', 'weights': str(weights / 'i3d_k400' / 'i3d_kinetics400_tfhub.pt')}
    protocol = PROTOCOLS.build({'type': 'nbp_reference', 'num_videos': 6, 'processes': 2, 'context_length': 2,
                                'unroll_length': 8, 'metrics': ['psnr', 'ssim', lpips, fvd]})
    indices = protocol.select(dataset, seed=0)
    assert len(indices) == 6 and set(indices) == {0, 1, 2}  # 3 videos, 2 shares of 2, each cycled to 3

    samples, gt = sample_videos(pipe, dataset, indices, context_length=2, unroll_length=8,
                                accelerator=Accelerator(cpu=True), seed=0, batch_size=2)
    first = {index: position for position, index in reversed(list(enumerate(indices)))}
    repeats = [p for p, index in enumerate(indices) if first[index] != p]
    assert repeats
    for position in repeats:
        torch.testing.assert_close(gt[position], gt[first[indices[position]]], rtol=0, atol=0)  # the same clip
        assert not torch.allclose(samples[position], samples[first[indices[position]]])  # sampled again

    scores = protocol.evaluate(samples, gt)
    assert {'psnr', 'ssim', 'lpips', 'fvd'} <= set(scores)
    assert all(math.isfinite(scores[name]) for name in ('psnr', 'ssim', 'lpips', 'fvd'))
    assert protocol.describe()['selection'].startswith("NBP's loader order")


def test_a_repeated_video_draws_as_its_next_trajectories(pipe):
    clips = [{'video': torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(i)), 'index': i}
             for i in range(2)]
    kwargs = dict(context_length=2, unroll_length=2, accelerator=Accelerator(cpu=True), seed=3, batch_size=2)
    cycled, _ = sample_videos(pipe, clips, [0, 1, 0], **kwargs)
    two_each, _ = sample_videos(pipe, clips, [0, 1], num_trajectories=2, **kwargs)
    torch.testing.assert_close(cycled[[0, 1], 0], two_each[:, 0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(cycled[2, 0], two_each[0, 1], rtol=1e-4, atol=1e-5)
