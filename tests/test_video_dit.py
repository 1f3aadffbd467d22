"""The Video DiT baseline: FAR's modules with attention over the whole clip, and its window sampler."""
import pytest
import torch

from far.experiment import load_experiment
from far.models import FAR, VideoDiT
from far.options import OptionError
from far.pipelines import FARPipeline, VideoDiTPipeline, VideoDiTSampling

CONFIGS = 'options/convergence/contenders'


@pytest.fixture
def tiny_dit(tiny_far):
    """``tiny_dit(**overrides)``: the tiny FAR of ``tiny_far`` (random weights) as a VideoDiT, weights and all."""

    def make(**overrides) -> VideoDiT:
        far = tiny_far(**overrides)
        dit = VideoDiT(**{key: value for key, value in far.config.items() if not key.startswith('_')})
        dit.load_state_dict(far.state_dict())
        return dit.eval()

    return make


def latents(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_same_modules_and_parameter_count_as_far(tiny_far):
    far = tiny_far()
    dit = VideoDiT(**{key: value for key, value in far.config.items() if not key.startswith('_')})
    assert {k: v.shape for k, v in dit.state_dict().items()} == {k: v.shape for k, v in far.state_dict().items()}
    assert sum(p.numel() for p in dit.parameters()) == sum(p.numel() for p in far.parameters())


def test_attention_is_bidirectional(tiny_far, tiny_dit):
    x, t = latents(1, 4, 4, 4, 4), torch.full((1, 4), 500.0)
    later = x.clone()
    later[:, 3] += 1.0  # the last frame changes
    dit = tiny_dit()
    assert not torch.allclose(dit(x, t).sample[:, 0], dit(later, t).sample[:, 0])
    far = tiny_far()  # the same weights, frame-causal: the first frame does not see the last
    torch.testing.assert_close(far(x, t).sample[:, 0], far(later, t).sample[:, 0])


def test_causal_options_are_refused(tiny_dit):
    with pytest.raises(ValueError, match='slope_scale'):
        tiny_dit(slope_scale=0.1)(latents(1, 2, 4, 4, 4), torch.zeros(1, 2))



def test_families_declare_what_they_support(tiny_dit, tiny_far):
    """Siblings over one frame transformer: neither inherits features the other has to refuse."""
    dit, far = tiny_dit(), tiny_far()
    assert (dit.attention, dit.supports_kv_cache, far.attention, far.supports_kv_cache) == \
        ('full', False, 'frame_causal', True)
    assert not isinstance(dit, FAR) and not hasattr(dit, 'make_slot_cache')
    assert sorted(dit.state_dict()) == sorted(far.state_dict())  # the same parameters, the same names
    with pytest.raises(ValueError, match='FARPipeline samples FAR models, got a VideoDiT'):
        FARPipeline(transformer=dit)


def fed_inputs(model):
    """The frames and timesteps of every transformer call."""
    calls = []
    original = model.forward

    def spy(latents, timestep, **kwargs):
        calls.append((latents.clone(), timestep.clone()))
        return original(latents, timestep, **kwargs)

    model.forward = spy
    return calls


def test_sampler_keeps_context_frames_clean(tiny_dit):
    model = tiny_dit()
    calls = fed_inputs(model)
    pipe = VideoDiTPipeline(transformer=model, options=VideoDiTSampling(num_inference_steps=3))
    context = latents(2, 3, 4, 4, 4)
    out = pipe.generate_latents(context, latents(2, 2, 4, 4, 4, seed=1))
    assert torch.equal(out[:, :3], context)
    assert len(calls) == 3
    for frames, timestep in calls:
        assert torch.equal(frames[:, :3], context) and (timestep[:, :3] == -1).all() and (timestep[:, 3:] > 0).all()
    assert not torch.equal(out[:, 3:], latents(2, 2, 4, 4, 4, seed=1))


def test_long_videos_go_window_by_window(tiny_dit):
    model = tiny_dit()
    calls = fed_inputs(model)
    pipe = VideoDiTPipeline(transformer=model, options=VideoDiTSampling(num_inference_steps=2, window=4))
    context, noise = latents(1, 2, 4, 4, 4), latents(1, 5, 4, 4, 4, seed=1)
    out = pipe.generate_latents(context, noise)
    assert [frames.shape[1] for frames, _ in calls] == [4, 4, 4, 4, 3, 3]  # 2 + 2 new, 2 + 2 new, 2 + 1 new
    # the second window starts from the last two frames of the first, clean
    second, timestep = calls[2]
    assert torch.equal(second[:, :2], out[:, 2:4]) and (timestep[:, :2] == -1).all()
    assert VideoDiTPipeline.windows(5, 33, VideoDiTSampling(window=9))[:2] == [(0, 5, 9), (4, 9, 13)]
    windows = VideoDiTPipeline.windows(2, 9, VideoDiTSampling(window=4, window_context=1))
    assert windows == [(0, 2, 4), (3, 4, 7), (6, 7, 9)]


def test_a_video_does_not_depend_on_its_batch(tiny_dit):
    pipe = VideoDiTPipeline(transformer=tiny_dit(condition_cfg={'type': 'label', 'num_classes': 3}),
                            options=VideoDiTSampling(num_inference_steps=2, guidance_scale=2.0, window=3))
    context, noise = latents(3, 2, 4, 4, 4), latents(3, 3, 4, 4, 4, seed=1)
    labels = torch.tensor([0, 2, 1])
    together = pipe.generate_latents(context, noise, {'label': labels})
    alone = pipe.generate_latents(context[1:2], noise[1:2], {'label': labels[1:2]})
    torch.testing.assert_close(together[1:2], alone, rtol=1e-4, atol=1e-5)


def test_bad_settings_are_refused(tiny_dit):
    with pytest.raises(ValueError, match='window must be >= 2'):
        VideoDiTSampling(window=1)
    with pytest.raises(ValueError, match='window_context'):
        VideoDiTSampling(window=4, window_context=4)
    with pytest.raises(ValueError, match='unconditional'):
        VideoDiTPipeline(transformer=tiny_dit(), options=VideoDiTSampling(guidance_scale=2.0))


def test_experiment_files_pair_each_model_with_its_own_sampler():
    dit, far = f'{CONFIGS}/video_dit_moving_shapes_16px.yml', f'{CONFIGS}/far_moving_shapes_16px.yml'
    load_experiment(dit)
    with pytest.raises(OptionError, match=r"test\.sampler\.type: FARPipeline samples FAR models, but model.type is "
                                          r"VideoDiT; choose the sampler of that model family: VideoDiTPipeline"):
        load_experiment(dit, ['test.sampler={type: FARPipeline}'])
    with pytest.raises(OptionError, match='VideoDiTPipeline samples VideoDiT models, but model.type is FAR'):
        load_experiment(far, ['test.sampler={type: VideoDiTPipeline}'])
