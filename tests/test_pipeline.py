"""FARPipeline: parity with the reference sampler, KV cache, classifier-free guidance, pixel generation."""
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from far.models import FAR
from far.models.autoencoders import IdentityAutoencoder
from far.pipelines import FARPipeline
from far.registry import PIPELINES


def load_fixture(shared_dir, name):
    path = shared_dir / 'fixtures' / 'parity' / name
    if not path.is_file():
        pytest.skip(f'{path} is absent')
    return torch.load(path, weights_only=False)


def make_pipeline(model, vae=None) -> FARPipeline:
    pipe = FARPipeline(transformer=model, vae=vae, scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_far(condition_cfg, channels=4, slope_scale=0.0) -> FAR:
    torch.manual_seed(0)
    model = FAR(in_channels=channels, out_channels=channels, num_layers=2, attention_head_dim=16,
                num_attention_heads=2, axes_dims_rope=[4, 6, 6], condition_cfg=condition_cfg, slope_scale=slope_scale)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model.eval()


def latents(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize('use_kv_cache', [True, False])
def test_generation_matches_reference(shared_dir, use_kv_cache):
    fixture = load_fixture(shared_dir, 'far.pt')
    model = FAR(**fixture['config']).eval()
    model.load_state_dict(fixture['state_dict'])
    g = fixture['generate']
    out = make_pipeline(model).generate_latents(
        context=g['context'], noise=g['noise'], conditions=g['conditions'],
        num_inference_steps=g['num_inference_steps'], guidance_scale=g['guidance_scale'], use_kv_cache=use_kv_cache)
    assert out.shape == g['output_kv_cache'].shape
    assert (out - g['output_kv_cache']).abs().max() < 1e-4
    assert (out - g['output_no_cache']).abs().max() < 1e-4


@pytest.mark.parametrize('condition_cfg, conditions', [
    ({'type': 'label', 'num_classes': 3}, {'label': torch.tensor([0, 2])}),
    ({'type': 'action', 'num_action_classes': 3}, {'action': torch.tensor([[0, 1, 2, 1, 0, 2]] * 2)}),
])
def test_kv_cache_equals_no_cache(condition_cfg, conditions):
    pipe = make_pipeline(tiny_far(condition_cfg, slope_scale=0.05))
    kwargs = dict(context=latents(2, 2, 4, 4, 4), noise=latents(2, 4, 4, 4, 4, seed=1), conditions=conditions,
                  num_inference_steps=3, guidance_scale=2.0)
    cached = pipe.generate_latents(**kwargs, use_kv_cache=True)
    uncached = pipe.generate_latents(**kwargs, use_kv_cache=False)
    assert (cached - uncached).abs().max() < 1e-4
    assert torch.equal(cached[:, :2], kwargs['context'])


def test_kv_cache_feeds_one_frame_per_denoising_step():
    model = tiny_far(None)
    fed = []
    model.transformer_blocks[0].register_forward_pre_hook(lambda module, args: fed.append(args[0].shape[1]))
    make_pipeline(model).generate_latents(context=latents(1, 2, 4, 4, 4), noise=latents(1, 3, 4, 4, 4),
                                          num_inference_steps=3, use_kv_cache=True)
    # first step of each new frame: the clean frames not cached yet + the new frame; then the new frame alone
    assert fed == [3, 1, 1, 2, 1, 1, 2, 1, 1]


def test_generation_without_context():
    pipe = make_pipeline(tiny_far(None))
    noise = latents(2, 3, 4, 4, 4)
    cached = pipe.generate_latents(context=None, noise=noise, num_inference_steps=2)
    assert cached.shape == (2, 3, 4, 4, 4)
    assert (cached - pipe.generate_latents(context=None, noise=noise, num_inference_steps=2,
                                           use_kv_cache=False)).abs().max() < 1e-4


def test_guidance_combines_null_and_conditional_predictions():
    model = tiny_far({'type': 'label', 'num_classes': 3})
    pipe = make_pipeline(model)
    context, noise, label = latents(2, 2, 4, 4, 4), latents(2, 1, 4, 4, 4, seed=1), torch.tensor([1, 2])
    out = pipe.generate_latents(context, noise, {'label': label}, num_inference_steps=1, guidance_scale=3.0)

    frames = torch.cat([context, noise], 1)
    timestep = torch.tensor([[-1.0, -1.0, 1000.0]] * 2)
    cond = model(frames, timestep, {'label': label}).sample[:, -1]
    uncond = model(frames, timestep, {'label': torch.full((2,), 3)}).sample[:, -1]  # null id = num_classes
    expected = noise[:, 0] - (uncond + 3.0 * (cond - uncond))  # one Euler step from sigma 1 to 0
    assert (out[:, -1] - expected).abs().max() < 1e-5


def test_guidance_minus_one_is_fully_unconditional():
    pipe = make_pipeline(tiny_far({'type': 'action', 'num_action_classes': 3}))
    kwargs = dict(context=latents(1, 1, 4, 4, 4), noise=latents(1, 2, 4, 4, 4, seed=1), num_inference_steps=2)
    unconditional = pipe.generate_latents(**kwargs, conditions={'action': torch.tensor([[0, 1, 2]])},
                                          guidance_scale=-1)
    null_ids = pipe.generate_latents(**kwargs, conditions={'action': torch.full((1, 3), 3)}, guidance_scale=1)
    assert torch.equal(unconditional, null_ids)


def test_condition_errors_are_clear():
    pipe = make_pipeline(tiny_far({'type': 'action', 'num_action_classes': 3}))
    with pytest.raises(ValueError, match='covering context and generated frames'):
        pipe.generate_latents(latents(1, 1, 4, 4, 4), latents(1, 2, 4, 4, 4), {'action': torch.zeros(1, 2).long()})
    with pytest.raises(ValueError, match='unconditional'):
        make_pipeline(tiny_far(None)).generate_latents(None, latents(1, 1, 4, 4, 4), guidance_scale=2.0)


def test_generate_in_pixels_with_an_autoencoder():
    vae = IdentityAutoencoder(in_channels=3, pixel_unshuffle=2)  # 12 latent channels at half resolution
    pipe = make_pipeline(tiny_far({'type': 'label', 'num_classes': 3}, channels=vae.latent_channels), vae=vae)
    context = torch.rand(2, 2, 3, 8, 8)
    generators = [torch.Generator().manual_seed(i) for i in range(2)]
    video = pipe.generate(context_video=context, num_frames=2, conditions={'label': torch.tensor([0, 1])},
                          generator=generators, num_inference_steps=2, guidance_scale=1.5)
    assert video.shape == (2, 4, 3, 8, 8) and 0 <= video.min() and video.max() <= 1
    assert torch.allclose(video[:, :2], context, atol=1e-6)  # the identity autoencoder reconstructs exactly
    again = pipe.generate(context_video=context, num_frames=2, conditions={'label': torch.tensor([0, 1])},
                          generator=[torch.Generator().manual_seed(i) for i in range(2)], num_inference_steps=2,
                          guidance_scale=1.5)
    assert torch.equal(video, again)
    scratch = pipe.generate(num_frames=2, conditions={'label': torch.tensor([2])}, batch_size=1, height=8, width=8,
                            num_inference_steps=2)
    assert scratch.shape == (1, 2, 3, 8, 8)


def test_generate_needs_an_autoencoder_and_is_registered():
    assert PIPELINES.get('FARPipeline') is FARPipeline
    with pytest.raises(ValueError, match='generate_latents'):
        make_pipeline(tiny_far(None)).generate(num_frames=1, height=4, width=4)
