"""Clip-wise flow matching (the Video DiT's objective): one noise level per clip, a leading run of clean frames."""
from dataclasses import dataclass

import pytest
import torch

from far.objectives import CLEAN_TIMESTEP, ClipFlowMatchingObjective, FlowMatchingObjective
from far.options import OptionError, validate


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_every_noised_frame_of_a_clip_shares_one_timestep():
    x0 = torch.randn(64, 6, 2, 1, 1, generator=gen(1))
    noised = ClipFlowMatchingObjective(clean_context_ratio=0.5).noise(x0, window=6, generator=gen(2))
    for timesteps, clean in zip(noised.timesteps, noised.clean):
        assert len(set(timesteps[~clean].tolist())) == 1
    assert len(set(noised.timesteps[:, -1].tolist())) > 10  # but clips differ
    # the noising itself is the frame-wise objective's: x_t = (1 - sigma) x0 + sigma noise, target noise - x0
    noise = noised.target + x0
    sigma = (noised.timesteps / 1000)[..., None, None, None]
    expected = torch.where(noised.clean[..., None, None, None], x0, (1 - sigma) * x0 + sigma * noise)
    torch.testing.assert_close(noised.inputs, expected)


def test_clean_frames_are_a_leading_context_of_a_share_of_the_clips():
    x0 = torch.randn(2000, 9, 1, 1, 1, generator=gen(3))
    noised = ClipFlowMatchingObjective(clean_context_ratio=0.9).noise(x0, window=9, generator=gen(4))
    counts = noised.clean.sum(1)
    assert torch.equal(noised.clean, torch.arange(9)[None] < counts[:, None])  # a prefix, never the whole clip
    assert 0.88 < (counts > 0).float().mean().item() < 0.92
    assert set(counts.tolist()) == set(range(9))  # 1..8 context frames, or none
    assert torch.equal(noised.inputs[noised.clean], x0[noised.clean])
    assert (noised.timesteps[noised.clean] == CLEAN_TIMESTEP).all()


def test_the_loss_is_the_frame_wise_objectives():
    assert ClipFlowMatchingObjective.loss is FlowMatchingObjective.loss


@dataclass
class _Holder:
    objective: ClipFlowMatchingObjective


def test_long_context_training_is_not_a_clip_wise_setting():
    assert not ClipFlowMatchingObjective().long_context
    with pytest.raises(OptionError, match=r"objective\.training_type: unknown key for ClipFlowMatchingObjective"):
        validate({'objective': {'training_type': 'long_context'}}, _Holder, 'run.yml')
