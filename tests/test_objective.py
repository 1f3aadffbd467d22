"""Frame-wise flow matching: timestep sampling, noising, clean context frames, the masked loss."""
from dataclasses import dataclass

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.training_utils import compute_density_for_timestep_sampling

from far.models import FAR
from far.objectives import CLEAN_TIMESTEP, FlowMatchingObjective, FlowMatchSchedule
from far.options import OptionError, validate
from far.utils.host_syncs import count_host_syncs


@dataclass
class _Holder:
    objective: FlowMatchingObjective


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize('shift', [1.0, 3.0])
def test_noising_is_the_schedulers_forward_process(shift):
    objective = FlowMatchingObjective(clean_context_ratio=0.0, scheduler=FlowMatchSchedule(shift=shift))
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    x0 = torch.randn(3, 5, 4, 2, 2, generator=gen(1))
    noised = objective.noise(x0, window=5, generator=gen(2))
    assert not noised.clean.any()
    # the same noise, drawn again from the same generator state
    noise = torch.randn(x0.shape, generator=gen(2))
    expected = scheduler.scale_noise(x0.flatten(0, 1), noised.timesteps.flatten(), noise.flatten(0, 1))
    torch.testing.assert_close(noised.inputs, expected.view_as(x0))
    torch.testing.assert_close(noised.target, noise - x0)
    # timesteps are entries of the training schedule
    assert torch.isin(noised.timesteps, scheduler.timesteps).all()


def test_timesteps_follow_the_logit_normal_density():
    timesteps, sigmas = FlowMatchingObjective().sample_timesteps(200, 100, 'cpu', gen())
    assert timesteps.shape == sigmas.shape == (200, 100)
    torch.testing.assert_close(sigmas, timesteps / 1000)
    logits = torch.logit(sigmas.clamp(1e-4, 1 - 1e-4).double())
    assert abs(logits.mean().item()) < 0.05 and abs(logits.std().item() - 1.0) < 0.05
    uniform, _ = FlowMatchingObjective(weighting_scheme='uniform').sample_timesteps(200, 100, 'cpu', gen())
    assert abs(uniform.mean().item() - 500) < 15 and (uniform < 100).float().mean() > 0.08


def test_clean_context_frames_are_clean_and_tagged():
    x0 = torch.randn(400, 25, 2, 1, 1, generator=gen(3))
    noised = FlowMatchingObjective(clean_context_ratio=0.1).noise(x0, window=25, generator=gen(4))
    ratio = noised.clean.float().mean().item()
    assert 0.09 < ratio < 0.11
    assert torch.equal(noised.inputs[noised.clean], x0[noised.clean])
    assert (noised.timesteps[noised.clean] == CLEAN_TIMESTEP).all()
    assert (noised.timesteps[~noised.clean] > 0).all()


def test_long_context_frames_before_the_window_are_always_clean():
    x0 = torch.randn(64, 10, 2, 1, 1, generator=gen(5))
    objective = FlowMatchingObjective(clean_context_ratio=0.1, training_type='long_context')
    noised = objective.noise(x0, window=4, generator=gen(6))
    assert noised.clean[:, :6].all()
    assert 0.02 < noised.clean[:, 6:].float().mean().item() < 0.25  # the window keeps the random ratio


def test_loss_covers_noised_frames_of_the_window_only():
    target = torch.randn(2, 6, 3, 2, 2, generator=gen(7))
    prediction = target.clone()
    clean = torch.zeros(2, 6, dtype=torch.bool)
    clean[0, 4] = True
    prediction[:, :2] += 100.0  # outside the window of 4
    prediction[0, 4] += 100.0   # a clean frame
    assert FlowMatchingObjective.loss(prediction, target, clean, window=4).item() == 0.0

    prediction[1, 5] += 1.0  # one noised frame of video 1 off by 1: its frame error is 1, video 1's mean 1/4
    loss = FlowMatchingObjective.loss(prediction, target, clean, window=4)
    torch.testing.assert_close(loss, torch.tensor((0.0 + 0.25) / 2))
    prediction[0, 5] += 2.0  # video 0 has 3 noised frames in the window: 4 / 3
    loss = FlowMatchingObjective.loss(prediction, target, clean, window=4)
    torch.testing.assert_close(loss, torch.tensor((4 / 3 + 0.25) / 2))


def test_objective_trains_a_far_model():
    torch.manual_seed(0)
    model = FAR(in_channels=4, out_channels=4, num_layers=1, attention_head_dim=8, num_attention_heads=2,
                axes_dims_rope=[2, 2, 4], short_term_ctx_winsize=3)
    objective = FlowMatchingObjective(clean_context_ratio=0.5)
    latents = torch.randn(2, 3, 4, 4, 4, generator=gen(8))
    loss = objective(model, latents, window=3, generator=gen(9))
    loss.backward()
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert model.proj_out.weight.grad.abs().sum() > 0
    again = objective(model, latents, window=3, generator=gen(9))
    assert again.item() == loss.item()


def test_bad_objective_options_name_the_key():
    with pytest.raises(OptionError, match=r'run\.yml: objective: clean_context_ratio must be in \[0, 1\)'):
        validate({'objective': {'clean_context_ratio': 1.5}}, _Holder, 'run.yml')
    with pytest.raises(OptionError, match=r"objective\.training_type: got 'long'.*'base', 'long_context'"):
        validate({'objective': {'training_type': 'long'}}, _Holder, 'run.yml')


def test_timesteps_are_drawn_on_the_device_from_the_schedule_tables():
    objective = FlowMatchingObjective(weighting_scheme='mode', scheduler=FlowMatchSchedule(shift=3.0))
    objective.schedule_tables('cpu')  # copied to the device once
    with count_host_syncs() as syncs:
        timesteps, sigmas = objective.sample_timesteps(4, 6, 'cpu', gen(7))
    assert syncs['total'] == 0
    u = compute_density_for_timestep_sampling(weighting_scheme='mode', batch_size=24, mode_scale=1.29, generator=gen(7))
    indices = (u * 1000).long()
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    assert torch.equal(timesteps, scheduler.timesteps[indices].view(4, 6))
    assert torch.equal(sigmas, scheduler.sigmas[indices].view(4, 6))
