"""Evaluation protocols: video selection, best-of-n scoring, FVD over trajectories, FAR's quirks, the mp4 round trip."""
import math
import random
from collections import Counter
from pathlib import Path

import imageio
import pytest
import torch

import far.metrics  # noqa: F401  (registers the metrics and protocols)
from far.experiment import load_experiment
from far.metrics import (FVD, FrameMetric, LPIPSMetric, MSE, PSNR, SSIM, frechet_distance, mp4_round_trip,
                        paired_mp4_round_trip)
from far.metrics.protocols import LatteProtocol, MCVDProtocol, TECOProtocol
from far.options import OptionError
from far.video import decode_video, write_mp4
from far.registry import METRICS, PROTOCOLS

PIXEL = ['mse', 'psnr', 'ssim', 'lpips']


@pytest.fixture(scope='module')
def weights(shared_dir):
    folder = shared_dir / 'weights'
    return {'i3d': str(folder / 'i3d_k400' / 'i3d_kinetics400_tfhub.pt'),
            'alexnet': str(folder / 'lpips_alex' / 'alexnet_features_imagenet.pth'),
            'lpips_alex': str(folder / 'lpips_alex' / 'lpips_v0.1_alex_lin.pth')}


@pytest.fixture(scope='module')
def videos():
    """Two ground-truth videos (2 context + 4 predicted frames) and, per video, a good and a bad trajectory."""
    g = torch.Generator().manual_seed(0)
    gt = torch.rand(2, 6, 3, 32, 32, generator=g)
    good = (gt + 0.05 * torch.randn(gt.shape, generator=g)).clamp(0, 1)
    good[:, :2] = torch.rand(2, 2, 3, 32, 32, generator=g)  # context frames must not count
    bad = torch.rand(gt.shape, generator=g)
    # Video 0 has its good trajectory first, video 1 second: the choice is per video.
    samples = torch.stack([torch.stack([good[0], bad[0]]), torch.stack([bad[1], good[1]])])
    return samples, gt, good, bad


@pytest.fixture
def weight_variables(weights, monkeypatch):
    """The weight files found through their environment variables, as a protocol's default metrics find them."""
    for name, variable in [('i3d', 'FAR_I3D_WEIGHTS'), ('alexnet', 'FAR_ALEXNET_WEIGHTS'),
                           ('lpips_alex', 'FAR_LPIPS_ALEX_WEIGHTS')]:
        monkeypatch.setenv(variable, weights[name])


def entries(weights, names, **fvd):
    """``metrics`` entries: the names, LPIPS and FVD as blocks with the test's weight files (and FVD's options)."""
    blocks = {'lpips': {'type': 'lpips', 'backbone_weights': weights['alexnet'], 'head_weights': weights['lpips_alex']},
              'fvd': {'type': 'fvd', 'weights': weights['i3d'], **fvd}}
    return [blocks.get(name, name) if isinstance(name, str) else name for name in names]


def mcvd(weights, metrics=PIXEL, fvd=None, **kwargs):
    cfg = {'type': 'mcvd', 'context_length': 2, 'unroll_length': 4, 'num_trajectories': 2, 'num_videos': 2,
           'metrics': entries(weights, metrics, **(fvd or {})), **kwargs}
    return PROTOCOLS.build(cfg)


def video_mean(metric, sample, gt):
    return metric(sample[:, 2:], gt[:, 2:]).mean().item()


def test_pixel_metrics_take_each_videos_best_trajectory(weights, videos):
    samples, gt, good, bad = videos
    protocol = mcvd(weights)
    results = protocol.evaluate(samples, gt, device='cpu')
    assert set(results) == set(PIXEL)
    lpips = LPIPSMetric(backbone_weights=weights['alexnet'], head_weights=weights['lpips_alex'])
    for name, metric in [('mse', MSE()), ('psnr', PSNR()), ('ssim', SSIM()), ('lpips', lpips)]:
        assert results[name] == pytest.approx(video_mean(metric, good, gt), rel=1e-5), name
        assert results[name] != pytest.approx(video_mean(metric, bad, gt), rel=1e-2), name
    assert protocol.evaluate(samples.flip(1), gt) == results  # trajectory order does not matter
    assert protocol.evaluate(samples, gt) == results  # deterministic


def test_reference_quirks_reproduce_far_and_keep_the_correct_values(weights, videos):
    samples, gt, good, bad = videos
    results = mcvd(weights, reference_quirks=True).evaluate(samples, gt)
    assert set(results) == {*PIXEL, 'lpips_normalized', *(f'{m}_quirk_free' for m in PIXEL)}
    for name, value in mcvd(weights).evaluate(samples, gt).items():
        assert results[f'{name}_quirk_free'] == value

    decoded_samples, decoded_gt = paired_mp4_round_trip(samples, gt)
    best_lpips = {}
    for normalize in (False, True):
        metric = LPIPSMetric(normalize=normalize, backbone_weights=weights['alexnet'],
                             head_weights=weights['lpips_alex'])
        best_lpips[normalize] = metric(decoded_samples[:, :, 2:], decoded_gt[:, :, 2:]).mean(-1).amin(1).mean().item()
    assert results['lpips'] == pytest.approx(best_lpips[False], rel=1e-5)
    assert results['lpips_normalized'] == pytest.approx(best_lpips[True], rel=1e-5)
    assert results['lpips'] < results['lpips_normalized']
    # FAR's MSE takes the worst trajectory of each video.
    worst_mse = MSE()(decoded_samples[:, :, 2:], decoded_gt[:, :, 2:]).mean(-1).amax(1).mean().item()
    assert results['mse'] == pytest.approx(worst_mse, rel=1e-5)
    assert results['mse'] > 10 * results['mse_quirk_free']


def test_fvd_is_the_mean_of_per_trajectory_fvds(weights):
    g = torch.Generator().manual_seed(1)
    gt, other = torch.rand(2, 2, 9, 3, 16, 16, generator=g)
    samples = torch.stack([gt.flip(0), other], dim=1)  # trajectory 0: the same set of videos as gt
    protocol = mcvd(weights, context_length=3, unroll_length=6, metrics=['fvd'], fvd={'min_frames': 9})
    value = protocol.evaluate(samples, gt)['fvd']
    features = FVD(weights['i3d']).features(torch.cat([gt, other]))
    assert value == pytest.approx(frechet_distance(features[2:], features[:2]) / 2, rel=1e-3)
    assert value > 1


def test_fvd_can_score_the_first_frames_at_a_lower_resolution(weights):
    """NBP's gFVD: the first 16 of 17 frames, and for K600 both sets resized to 64x64 before I3D."""
    g = torch.Generator().manual_seed(2)
    gt, other = torch.rand(2, 2, 12, 3, 16, 16, generator=g)
    protocol = mcvd(weights, context_length=2, unroll_length=10, num_trajectories=1, metrics=['fvd'],
                    fvd={'min_frames': 9, 'frames': 10, 'resolution': 8})
    value = protocol.evaluate(other[:, None], gt)['fvd']

    def scored(videos):
        frames = videos[:, :10].flatten(0, 1)
        return torch.nn.functional.interpolate(frames, size=(8, 8), mode='bilinear').unflatten(0, (2, 10))

    features = FVD(weights['i3d']).features(torch.cat([scored(gt), scored(other)]))
    assert value == pytest.approx(frechet_distance(features[2:], features[:2]), rel=1e-6)
    assert protocol.describe()['scoring']['fvd'].startswith('the first 10 frames; resized to 8x8 (bilinear)')
    with pytest.raises(ValueError, match=r'metrics: fvd: frames must be in \[1, 12\]'):
        mcvd(weights, context_length=2, unroll_length=10, metrics=['fvd'], fvd={'frames': 13})
    with pytest.raises(ValueError, match='the protocol scores 8; drop fvd'):
        mcvd(weights, context_length=2, unroll_length=10, metrics=['fvd'], fvd={'frames': 8})


class MeanAbsoluteError(FrameMetric):
    """A metric the package does not have: its class and its registry entry are all a protocol needs."""

    name, higher_is_better = 'mae', False

    def score(self, sample, gt):
        return (sample - gt).abs().mean(dim=(1, 2, 3))


def test_a_new_metric_is_scored_by_a_protocol_from_its_declaration(videos):
    METRICS.register(MeanAbsoluteError, aliases=('mae', ))
    samples, gt, good, _ = videos
    protocol = PROTOCOLS.build({'type': 'rollout', 'context_length': 2, 'unroll_length': 4, 'num_trajectories': 2,
                                'bucket_size': 3, 'metrics': ['mae', 'psnr']})
    scores = protocol.evaluate(samples, gt)
    errors = (good[:, 2:] - gt[:, 2:]).abs().mean(dim=(2, 3, 4))  # [B, F]: the good trajectory wins
    assert scores['mae'] == pytest.approx(errors.mean().item(), rel=1e-5)
    assert [bucket['frames'] for bucket in scores['buckets']] == [[2, 4], [5, 5]]
    assert scores['buckets'][1]['mae'] == pytest.approx(errors[:, 3].mean().item(), rel=1e-5)
    assert protocol.describe()['scoring']['mae'].startswith('predicted frames; mean over frames; best trajectory')
    summary = protocol.aggregate([scores, {**scores, 'mae': 0.0}])
    assert summary['mae'] == pytest.approx(scores['mae'] / 2) and summary['buckets'][1]['mae_std'] == 0


def test_metric_options_are_checked_when_the_yaml_is_read():
    demo = str(Path(__file__).resolve().parents[1] / 'options/demo/far_moving_shapes.yml')
    fvd = load_experiment(demo, ['test.protocol.metrics=[psnr, {type: fvd, frames: 16, resolution: 64}]'])
    assert fvd.test.protocol['metrics'] == ['psnr', {'type': 'fvd', 'frames': 16, 'resolution': 64}]
    with pytest.raises(OptionError, match=r"metrics\[1\]\.framez: unknown key for metric 'fvd' \(did you mean"):
        load_experiment(demo, ['test.protocol.metrics=[psnr, {type: fvd, framez: 16}]'])


class LabelledVideos:
    """The part of a dataset the Latte draw reads: its length and one class id per video."""

    def __init__(self, labels):
        self.labels = labels

    def __len__(self):
        return len(self.labels)


def far_balanced_draw(labels, num_samples, seed):
    """FAR's draw as its UCF-101 dataset does it, on the global `random` after set_seed(seed)."""
    random.seed(seed)
    by_class = {}
    for index, label in enumerate(labels):
        by_class.setdefault(label, []).append(index)
    drawn = []
    for items in by_class.values():
        drawn.extend(random.sample(items, math.ceil(num_samples / len(by_class))))
    random.shuffle(drawn)
    return drawn[:num_samples]


def test_latte_draw_is_class_balanced_seeded_and_the_same_as_far(weights):
    labels = [(i * 7) % 11 for i in range(400)]  # 11 classes, interleaved, 36-37 videos each
    dataset = LabelledVideos(labels)
    protocol = LatteProtocol(num_videos=100, metrics=entries(weights, ['fvd']))
    chosen = protocol.select(dataset, seed=2)
    assert len(chosen) == len(set(chosen)) == 100
    assert max(Counter(labels[i] for i in chosen).values()) <= math.ceil(100 / 11)
    assert chosen == protocol.select(dataset, seed=2)
    assert chosen != protocol.select(dataset, seed=4)
    assert chosen == far_balanced_draw(labels, 100, seed=2)

    with pytest.raises(ValueError, match='class 3 has 2 videos'):
        protocol.select(LabelledVideos([0] * 50 + [3] * 2), seed=0)
    with pytest.raises(ValueError, match='has no `labels`'):
        protocol.select(list(range(10)), seed=0)


def test_prediction_protocols_take_the_first_videos(weights):
    protocol = mcvd(weights, num_videos=3, every=10, metrics=['psnr'])
    assert protocol.select(range(100), seed=5) == [0, 10, 20]
    with pytest.raises(ValueError, match='offers 2 videos'):
        protocol.select(range(15), seed=0)
    assert mcvd(weights, num_videos=None, metrics=['psnr']).select(range(4), seed=0) == [0, 1, 2, 3]


def test_registry_defaults_are_the_papers(weight_variables):
    teco = PROTOCOLS.build({'type': 'teco'})
    assert isinstance(teco, TECOProtocol)
    assert (teco.context_length, teco.unroll_length, teco.num_trajectories, teco.num_videos) == (144, 156, 1, 256)
    assert teco.metrics == ['mse', 'psnr', 'ssim', 'lpips'] and len(teco.seeds) == 4
    teco_fvd = PROTOCOLS.build({'type': 'teco_fvd'})
    assert (teco_fvd.context_length, teco_fvd.unroll_length, teco_fvd.metrics) == (36, 264, ['fvd'])
    latte = PROTOCOLS.build({'type': 'latte'})
    assert (latte.num_videos, latte.seeds, latte.context_length, latte.unroll_length) == (2048, [0, 2, 4, 6], 0, 16)
    short = PROTOCOLS.build({'type': 'mcvd', 'context_length': 4, 'unroll_length': 12})
    assert isinstance(short, MCVDProtocol)
    assert (short.num_trajectories, short.num_videos, short.seeds) == (100, 256, [0])
    assert short.metrics == ['mse', 'psnr', 'ssim', 'lpips', 'fvd']


def test_aggregate_and_describe(weights):
    protocol = mcvd(weights, reference_quirks=True, annotate_context=True, metrics=['psnr', 'lpips'])
    summary = protocol.aggregate([{'psnr': 20.0, 'lpips': 0.1}, {'psnr': 22.0, 'lpips': 0.3}])
    assert summary == pytest.approx({'psnr': 21.0, 'psnr_std': 1.0, 'lpips': 0.2, 'lpips_std': 0.1})
    with pytest.raises(ValueError, match='same keys'):
        protocol.aggregate([{'psnr': 1.0}, {'ssim': 1.0}])

    info = protocol.describe()
    assert info['protocol'] == 'mcvd'
    assert (info['num_videos'], info['num_trajectories'], info['seeds']) == (2, 2, [0])
    assert (info['context_frames'], info['predicted_frames'], info['total_frames']) == (2, 4, 6)
    assert info['reference_quirks'] is True
    assert info['quirks']['context_border'] and list(info['quirks']['metrics']) == ['lpips']  # mse is not evaluated
    assert info['scoring']['psnr'] == 'predicted frames; mean over frames; best trajectory per video; mean over videos'
    assert info['weights']['lpips_alex']['sha256'].startswith('df73285e')
    for package in ['torch', 'torchmetrics', 'diffusers', 'av']:
        assert info['environment'][package] != 'not installed'


def test_bad_arguments_and_inputs_are_named(weights, videos):
    samples, gt, _, _ = videos
    with pytest.raises(ValueError, match="unknown metric 'fid'; registered: "):
        mcvd(weights, metrics=['psnr', 'fid'])
    with pytest.raises(ValueError, match='listed twice'):
        mcvd(weights, metrics=['psnr', 'PSNR'])
    with pytest.raises(ValueError, match='FVD needs at least min_frames=10 frames'):
        mcvd(weights, metrics=['fvd'])
    with pytest.raises(TypeError, match='net_weights'):
        mcvd(weights, metrics=[{'type': 'lpips', 'net_weights': 'x'}])
    protocol = mcvd(weights, metrics=['psnr'])
    with pytest.raises(ValueError, match='the videos have 5 frames, the protocol 6'):
        protocol.evaluate(samples[:, :, :5], gt[:, :5])
    with pytest.raises(ValueError, match=r'expected samples \[B,n,F,3,H,W\]'):
        protocol.evaluate(samples[:, 0], gt)


def test_mp4_files_are_the_ones_far_writes(tmp_path):
    """FAR saves evaluation videos with imageio.get_writer(path, fps=8); write_mp4 makes the same bytes."""
    frames = (torch.rand(6, 32, 64, 3, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8).numpy()
    writer = imageio.get_writer(tmp_path / 'far.mp4', fps=8)
    for frame in frames:
        writer.append_data(frame)
    writer.close()
    write_mp4(frames, tmp_path / 'ours.mp4')
    assert (tmp_path / 'ours.mp4').read_bytes() == (tmp_path / 'far.mp4').read_bytes()
    assert decode_video(tmp_path / 'ours.mp4').shape == frames.shape


def test_mp4_round_trip_shapes_range_and_border():
    ramp = torch.linspace(0, 1, 32).view(1, 1, 1, 32).expand(5, 3, 32, 32)
    decoded = mp4_round_trip(ramp)
    assert decoded.shape == ramp.shape and decoded.dtype == torch.float32
    assert decoded.min() >= 0 and decoded.max() <= 1
    assert (decoded - ramp).abs().mean() < 0.02  # H.264 at CRF 25 on a smooth ramp
    assert torch.equal(decoded * 255, (decoded * 255).round())  # 8-bit frames

    gray = torch.full((2, 4, 3, 16, 16), 0.5)
    samples, gt = paired_mp4_round_trip(gray.unsqueeze(1).expand(2, 3, 4, 3, 16, 16), gray, border_frames=2)
    assert samples.shape == gt.shape == (2, 3, 4, 3, 16, 16)
    redness = samples[:, :, :, 0, 0, 8] - samples[:, :, :, 1, 0, 8]  # red minus green, top row: [B, n, F]
    assert (redness[:, :, :2] > 0.3).all()  # the border, blurred by 4:2:0 chroma, on context frames only
    assert (redness[:, :, 2:].abs() < 0.05).all()
    assert (gt[:, :, :, :, 8, 8] - 0.5).abs().max() < 0.05  # the inside stays gray
    with pytest.raises(ValueError, match='divisible by 16'):
        mp4_round_trip(torch.rand(2, 3, 20, 20))
