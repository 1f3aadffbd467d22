"""Pixel metrics: per-frame MSE/PSNR/SSIM equal to the torchmetrics calls FAR's evaluation makes; the mean intensity
of predicted and true frames."""
import pytest
import torch
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

import far.metrics  # noqa: F401  (registers the metrics)
from far.metrics import MSE, PSNR, SSIM, MCVDProtocol
from far.metrics.pixel import GroundTruthMeanIntensity, MeanIntensity
from far.registry import METRICS


@pytest.fixture
def videos():
    g = torch.Generator().manual_seed(0)
    gt = torch.rand(3, 4, 3, 32, 32, generator=g)
    sample = (gt + 0.1 * torch.randn(gt.shape, generator=g)).clamp(0, 1)
    return sample, gt


def test_psnr_matches_torchmetrics_module(videos):
    sample, gt = videos
    reference = PeakSignalNoiseRatio(data_range=1.0, reduction='none', dim=[1, 2, 3])
    expected = reference(sample.flatten(0, 1), gt.flatten(0, 1)).view(3, 4)
    scores = PSNR()(sample, gt)
    assert scores.shape == (3, 4)
    torch.testing.assert_close(scores, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(scores, 10 * torch.log10(1 / (sample - gt).square().mean(dim=(2, 3, 4))))


def test_ssim_matches_torchmetrics_module(videos):
    sample, gt = videos
    reference = StructuralSimilarityIndexMeasure(data_range=1.0, reduction='none')
    expected = reference(sample.flatten(0, 1), gt.flatten(0, 1)).view(3, 4)
    torch.testing.assert_close(SSIM()(sample, gt), expected, rtol=1e-5, atol=1e-6)


def test_mse_per_frame(videos):
    sample, gt = videos
    torch.testing.assert_close(MSE()(sample, gt), (sample - gt).square().mean(dim=(2, 3, 4)))


def test_registry_builds_every_pixel_metric(videos):
    sample, gt = videos
    for name, cls in [('mse', MSE), ('psnr', PSNR), ('ssim', SSIM)]:
        metric = METRICS.build({'type': name, 'batch_size': 5})
        assert isinstance(metric, cls)
        torch.testing.assert_close(metric(sample, gt), cls()(sample, gt))


def test_broadcast_gt_and_chunking_do_not_change_scores(videos):
    sample, gt = videos
    trajectories = torch.stack([sample, gt, 1 - sample], dim=1)  # [N, n=3, T, C, H, W]
    full = PSNR(batch_size=1000)(trajectories, gt.unsqueeze(1).expand_as(trajectories).clone())
    chunked = PSNR(batch_size=1)(trajectories, gt.unsqueeze(1))
    assert chunked.shape == (3, 3, 4)
    torch.testing.assert_close(chunked, full)
    torch.testing.assert_close(chunked[:, 0], PSNR()(sample, gt))
    assert torch.isinf(chunked[:, 1]).all()  # identical frames


def test_mean_intensity_of_the_prediction_and_of_the_ground_truth(videos):
    sample, gt = videos
    faded = sample * torch.linspace(1.0, 0.25, 4)[:, None, None, None]  # dims frame by frame
    torch.testing.assert_close(METRICS.build({'type': 'mean_intensity'})(faded, gt), faded.mean(dim=(2, 3, 4)))
    torch.testing.assert_close(METRICS.build({'type': 'mean_intensity_gt'})(faded, gt), gt.mean(dim=(2, 3, 4)))
    ratio = MeanIntensity()(faded, gt) / GroundTruthMeanIntensity()(faded, gt)
    torch.testing.assert_close(ratio[:, -1], torch.full((3,), 0.25), rtol=0.05, atol=0.0)


def test_a_protocol_averages_the_mean_intensity_over_trajectories(videos):
    sample, gt = videos
    samples = torch.stack([gt, 0.5 * sample], dim=1)  # [B, n=2, F, C, H, W]: PSNR's best trajectory is the first
    protocol = MCVDProtocol(context_length=1, unroll_length=3, num_trajectories=2, num_videos=None,
                            metrics=['psnr', 'mean_intensity', 'mean_intensity_gt'])
    scores = protocol.evaluate(samples, gt)
    expected = (0.5 * gt[:, 1:].mean(dim=(2, 3, 4)) + 0.25 * sample[:, 1:].mean(dim=(2, 3, 4))).double()
    torch.testing.assert_close(scores.frames['mean_intensity'], expected, rtol=1e-5, atol=0.0)
    torch.testing.assert_close(scores.frames['mean_intensity_gt'], gt[:, 1:].mean(dim=(2, 3, 4)).double(), rtol=1e-5,
                               atol=0.0)
    assert scores['mean_intensity'] == pytest.approx(expected.mean().item(), rel=1e-6)
    assert 'trajectories' in protocol.scoring()['mean_intensity']


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match='does not broadcast'):
        SSIM()(torch.rand(2, 4, 3, 16, 16), torch.rand(2, 3, 3, 16, 16))
    with pytest.raises(ValueError, match='batch_size must be >= 1'):
        MSE(batch_size=0)
