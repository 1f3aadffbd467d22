"""FARPipeline: parity with the reference sampler, KV cache, classifier-free guidance, pixel generation."""
import pytest
import torch

from far.models import FAR
from far.models.autoencoders import IdentityAutoencoder
from far.pipelines import FARPipeline, FARSampling, build_sampler
from far.registry import PIPELINES


def tiny(tiny_far, condition_cfg, channels=4, slope_scale=0.0):
    return tiny_far(in_channels=channels, out_channels=channels, condition_cfg=condition_cfg, condition_dropout=0.1,
                    slope_scale=slope_scale)


def latents(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize('use_kv_cache', [True, False])
def test_generation_matches_reference(reference_generation_error, use_kv_cache):
    assert reference_generation_error('far.pt', FAR, use_kv_cache=use_kv_cache) < 1e-4


@pytest.mark.parametrize('condition_cfg, conditions', [
    ({'type': 'label', 'num_classes': 3}, {'label': torch.tensor([0, 2])}),
    ({'type': 'action', 'num_action_classes': 3}, {'action': torch.tensor([[0, 1, 2, 1, 0, 2]] * 2)}),
])
def test_kv_cache_equals_no_cache(tiny_far, make_pipeline, condition_cfg, conditions):
    pipe = make_pipeline(tiny(tiny_far, condition_cfg, slope_scale=0.05))
    kwargs = dict(context=latents(2, 2, 4, 4, 4), noise=latents(2, 4, 4, 4, 4, seed=1), conditions=conditions,
                  num_inference_steps=3, guidance_scale=2.0)
    cached = pipe.generate_latents(**kwargs, use_kv_cache=True)
    uncached = pipe.generate_latents(**kwargs, use_kv_cache=False)
    assert (cached - uncached).abs().max() < 1e-4
    assert torch.equal(cached[:, :2], kwargs['context'])


def test_kv_cache_feeds_one_frame_per_denoising_step(tiny_far, make_pipeline):
    model = tiny_far()
    fed = []
    model.transformer_blocks[0].register_forward_pre_hook(lambda module, args: fed.append(args[0].shape[1]))
    make_pipeline(model).generate_latents(context=latents(1, 2, 4, 4, 4), noise=latents(1, 3, 4, 4, 4),
                                          num_inference_steps=3, use_kv_cache=True)
    # first step of each new frame: the clean frames not cached yet + the new frame; then the new frame alone
    assert fed == [3, 1, 1, 2, 1, 1, 2, 1, 1]


def test_generation_without_context(tiny_far, make_pipeline):
    pipe = make_pipeline(tiny_far())
    noise = latents(2, 3, 4, 4, 4)
    cached = pipe.generate_latents(context=None, noise=noise, num_inference_steps=2)
    assert cached.shape == (2, 3, 4, 4, 4)
    assert (cached - pipe.generate_latents(context=None, noise=noise, num_inference_steps=2,
                                           use_kv_cache=False)).abs().max() < 1e-4


def test_guidance_combines_null_and_conditional_predictions(tiny_far, make_pipeline):
    model = tiny(tiny_far, {'type': 'label', 'num_classes': 3})
    pipe = make_pipeline(model)
    context, noise, label = latents(2, 2, 4, 4, 4), latents(2, 1, 4, 4, 4, seed=1), torch.tensor([1, 2])
    out = pipe.generate_latents(context, noise, {'label': label}, num_inference_steps=1, guidance_scale=3.0)

    frames = torch.cat([context, noise], 1)
    timestep = torch.tensor([[-1.0, -1.0, 1000.0]] * 2)
    cond = model(frames, timestep, {'label': label}).sample[:, -1]
    uncond = model(frames, timestep, {'label': torch.full((2,), 3)}).sample[:, -1]  # null id = num_classes
    expected = noise[:, 0] - (uncond + 3.0 * (cond - uncond))  # one Euler step from sigma 1 to 0
    # batched (guided) and separate forwards round differently: compare relative to the values' magnitude
    torch.testing.assert_close(out[:, -1], expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())


def test_guidance_minus_one_is_fully_unconditional(tiny_far, make_pipeline):
    pipe = make_pipeline(tiny(tiny_far, {'type': 'action', 'num_action_classes': 3}))
    kwargs = dict(context=latents(1, 1, 4, 4, 4), noise=latents(1, 2, 4, 4, 4, seed=1), num_inference_steps=2)
    unconditional = pipe.generate_latents(**kwargs, conditions={'action': torch.tensor([[0, 1, 2]])},
                                          guidance_scale=-1)
    null_ids = pipe.generate_latents(**kwargs, conditions={'action': torch.full((1, 3), 3)}, guidance_scale=1)
    assert torch.equal(unconditional, null_ids)


def test_condition_errors_are_clear(tiny_far, make_pipeline):
    pipe = make_pipeline(tiny(tiny_far, {'type': 'action', 'num_action_classes': 3}))
    with pytest.raises(ValueError, match='must cover context and generated frames'):
        pipe.generate_latents(latents(1, 1, 4, 4, 4), latents(1, 2, 4, 4, 4), {'action': torch.zeros(1, 2).long()})
    with pytest.raises(ValueError, match='unconditional'):
        make_pipeline(tiny_far()).generate_latents(None, latents(1, 1, 4, 4, 4), guidance_scale=2.0)
    with pytest.raises(ValueError, match='unconditional'):
        make_pipeline(tiny_far(), guidance_scale=2.0)
    with pytest.raises(TypeError, match="no setting \\['num_steps'\\]"):
        make_pipeline(tiny_far()).generate_latents(None, latents(1, 1, 4, 4, 4), num_steps=2)


def test_generate_in_pixels_with_an_autoencoder(tiny_far, make_pipeline):
    vae = IdentityAutoencoder(in_channels=3, pixel_unshuffle=2)  # 12 latent channels at half resolution
    pipe = make_pipeline(tiny(tiny_far, {'type': 'label', 'num_classes': 3}, channels=vae.latent_channels), vae=vae)
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


def test_generate_needs_an_autoencoder_and_is_registered(tiny_far, make_pipeline):
    assert PIPELINES.get('FARPipeline') is FARPipeline
    with pytest.raises(ValueError, match='generate_latents'):
        make_pipeline(tiny_far()).generate(num_frames=1, height=4, width=4)


def test_a_yaml_block_builds_the_sampler_with_its_settings(tiny_far):
    vae = IdentityAutoencoder(in_channels=3, pixel_unshuffle=2)
    model = tiny(tiny_far, {'type': 'label', 'num_classes': 3}, channels=vae.latent_channels)
    sampler = build_sampler({'type': 'FARPipeline', 'num_inference_steps': 3, 'guidance_scale': 2.0}, model=model,
                            autoencoder=vae)
    assert sampler.transformer is model and sampler.vae is vae and sampler.condition == model.condition
    assert sampler.options == FARSampling(num_inference_steps=3, guidance_scale=2.0)
    assert sampler.describe()['num_inference_steps'] == 3
    windowed = sampler.replace(context_window=2)
    assert windowed.options.context_window == 2 and sampler.options.context_window is None


def test_predict_is_generate_with_the_pipelines_settings(tiny_far, make_pipeline):
    vae = IdentityAutoencoder(in_channels=3, pixel_unshuffle=2)
    pipe = make_pipeline(tiny(tiny_far, {'type': 'label', 'num_classes': 3}, channels=vae.latent_channels), vae=vae,
                         num_inference_steps=2)
    context, label = torch.rand(2, 2, 3, 8, 8), {'label': torch.tensor([0, 1])}
    predicted = pipe.predict(context=context, num_frames=2, conditions=label, height=8, width=8,
                             generators=[torch.Generator().manual_seed(i) for i in range(2)])
    generated = pipe.generate(context_video=context, num_frames=2, conditions=label, num_inference_steps=2,
                              generator=[torch.Generator().manual_seed(i) for i in range(2)])
    assert torch.equal(predicted, generated)
