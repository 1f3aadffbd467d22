"""Pixel metrics: per-frame MSE/PSNR/SSIM equal to the torchmetrics calls FAR's evaluation makes."""
import pytest
import torch
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

import far.metrics  # noqa: F401  (registers the metrics)
from far.metrics import MSE, PSNR, SSIM
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


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match='does not broadcast'):
        SSIM()(torch.rand(2, 4, 3, 16, 16), torch.rand(2, 3, 3, 16, 16))
    with pytest.raises(ValueError, match='batch_size must be >= 1'):
        MSE(batch_size=0)
