"""FAR-Long: parity with the reference implementation, checkpoint names, sizes, multi-level KV cache,
test-time temporal decay."""
import warnings

import pytest
import torch

from far.experiment import load_experiment
from far.models import FAR_Long, build_model
from far.options import OptionError, yaml_parameters

MODES = {'no_cache': dict(use_kv_cache=False), 'single_level': dict(use_kv_cache=True, multi_level_cache=False),
         'multi_level': dict(use_kv_cache=True, multi_level_cache=True)}


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_forward_matches_reference(reference_forward_error):
    assert reference_forward_error('far_long.pt', FAR_Long) < 1e-4  # long-term frames included


@pytest.mark.parametrize('mode', MODES)
def test_generation_matches_reference(reference_generation_error, mode):
    assert reference_generation_error('far_long.pt', FAR_Long, **MODES[mode]) < 1e-4


def test_parameter_names_are_the_checkpoint_names(parity):
    fixture = parity('far_long.pt')
    names = set(FAR_Long(**fixture['config']).state_dict())
    assert names == set(fixture['state_dict'])
    last = fixture['config']['num_layers'] - 1
    assert f'transformer_blocks.{last}.attn.to_add_out.weight' not in names
    assert 'transformer_blocks.0.attn.to_add_out.weight' in names


def test_paper_sizes_parameter_counts():
    actions = {'type': 'action', 'num_action_classes': 4}
    for name, millions in (('FAR_B_Long', 158.11), ('FAR_M_Long', 280.54)):
        with torch.device('meta'):
            model = build_model(name, condition_cfg=actions)
        assert round(sum(p.numel() for p in model.parameters()) / 1e6, 2) == millions, name


def test_cache_modes_agree_past_the_window(make_pipeline, tiny_far_long):
    pipe = make_pipeline(tiny_far_long(short_term_ctx_winsize=3, slope_scale=0.05))
    kwargs = dict(context=randn(2, 2, 4, 4, 4), noise=randn(2, 6, 4, 4, 4, seed=1),
                  conditions={'action': randn(2, 8, seed=2).abs().mul(2).long() % 4}, num_inference_steps=2,
                  guidance_scale=1.5)
    outputs = {mode: pipe.generate_latents(**kwargs, **flags) for mode, flags in MODES.items()}
    assert (outputs['single_level'] - outputs['no_cache']).abs().max() < 1e-4
    assert (outputs['multi_level'] - outputs['no_cache']).abs().max() < 1e-4


def test_multi_level_cache_encodes_each_long_term_frame_once(make_pipeline, tiny_far_long):
    model = tiny_far_long(short_term_ctx_winsize=2)
    long_term_frames = []
    model.context_embedder.register_forward_hook(lambda m, args, out: long_term_frames.append(args[0].shape[1]))
    kwargs = dict(context=randn(1, 1, 4, 4, 4), noise=randn(1, 5, 4, 4, 4),
                  conditions={'action': torch.zeros(1, 6).long()}, num_inference_steps=3)
    make_pipeline(model).generate_latents(**kwargs, use_kv_cache=True, multi_level_cache=True)
    assert long_term_frames == [1, 1, 1, 1]  # frames 0..3 leave the 2-frame window one by one
    long_term_frames.clear()
    make_pipeline(model).generate_latents(**kwargs, use_kv_cache=True, multi_level_cache=False)
    assert long_term_frames == [1, 2, 3, 4]  # single level: the whole context again for every new frame


def test_training_forward_is_causal_over_long_and_short_frames(tiny_far_long):
    model = tiny_far_long(short_term_ctx_winsize=3)
    latents, timestep = randn(1, 6, 4, 4, 4), torch.full((1, 6), -1.0)
    timestep[:, 3:] = 500.0
    actions = {'action': torch.zeros(1, 6).long()}
    out = model(latents, timestep, actions).sample
    assert out.shape == latents.shape
    changed = latents.clone()
    changed[:, 4] += 1
    out2 = model(changed, timestep, actions).sample
    assert torch.equal(out[:, :4], out2[:, :4]) and not torch.allclose(out[:, 5], out2[:, 5])


def test_test_time_temporal_decay(make_pipeline, tiny_far_long):
    model = tiny_far_long(short_term_ctx_winsize=3)
    pipe = make_pipeline(model)
    kwargs = dict(context=randn(1, 2, 4, 4, 4), noise=randn(1, 3, 4, 4, 4),
                  conditions={'action': torch.ones(1, 5).long()}, num_inference_steps=2)
    plain = pipe.generate_latents(**kwargs)
    decayed = pipe.generate_latents(**kwargs, slope_scale=0.5)
    assert model.slope_scale == 0.0  # the sampler passes its slope on: the model is left as it is
    assert not torch.allclose(plain[:, 3:], decayed[:, 3:])
    assert (decayed - pipe.generate_latents(**kwargs, slope_scale=0.5, use_kv_cache=False)).abs().max() < 1e-4
    model.slope_scale = 0.5  # or set on the model
    assert torch.equal(pipe.generate_latents(**kwargs), decayed)


def test_save_pretrained_round_trip(tiny_far_long, tmp_path):
    model = tiny_far_long(short_term_ctx_winsize=2, slope_scale=0.01)
    model.save_pretrained(tmp_path)
    loaded = FAR_Long.from_pretrained(tmp_path).eval()
    assert loaded.config.context_patch_size == 2 and loaded.config.short_term_ctx_winsize == 2
    # every key FAR_Long hands on to FAR is recorded and read back
    assert {k: v for k, v in loaded.config.items() if not k.startswith('_')} == \
        {k: v for k, v in model.config.items() if not k.startswith('_')}
    latents, timestep, actions = randn(1, 4, 4, 4, 4), torch.full((1, 4), 300.0), {'action': torch.ones(1, 4).long()}
    assert torch.equal(loaded(latents, timestep, actions).sample, model(latents, timestep, actions).sample)


def test_reference_dtype_rounding_feeds_the_embeddings_what_bf16_made_of_them(tiny_far_long):
    """The released checkpoints embedded timesteps and RoPE frame ids after a cast to bf16 (frame 257 reads 256)."""
    timestep = torch.tensor([[-1.0, 999.0, 500.5, 257.0]])
    latents, actions = randn(1, 4, 4, 4, 4), {'action': torch.zeros(1, 4).long()}
    bf16 = timestep.to(torch.bfloat16).float()
    assert torch.equal(bf16[0, 1:], torch.tensor([1000.0, 500.0, 256.0]))  # what bf16 makes of them
    for rounding, autocast, expected in ((True, True, bf16),
                                         (True, False, timestep), (False, True, timestep)):
        model = tiny_far_long(reference_dtype_rounding=rounding, short_term_ctx_winsize=4)
        fed, rope_dtypes = [], []
        model.time_proj.register_forward_pre_hook(lambda module, args: fed.append(args[0].float()))
        rope = model.rope
        model.rope = lambda *args, **kwargs: rope_dtypes.append(kwargs['round_to']) or rope(*args, **kwargs)
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast):
            model(latents, timestep, actions)
        assert torch.equal(fed[0], expected.flatten())
        assert rope_dtypes == [torch.bfloat16 if rounding and autocast else None]
    exact, rounded = (tiny_far_long().rope(255, 4, 1, 1, 1, torch.device('cpu'), round_to=r)
                      for r in (None, torch.bfloat16))
    table = tiny_far_long().rope(0, 259, 1, 1, 1, torch.device('cpu'))
    assert torch.equal(exact[0], table[0][255:259])
    assert torch.equal(rounded[0], table[0][[255, 256, 256, 258]])  # 257 -> 256


def test_flex_attention_masks_long_and_short_frames_by_frame_arithmetic(tiny_far_long):
    """FlexAttention's block mask and bias compute each token's frame from the segments (long-term frames of 4
    tokens, short-term frames of 16): the same as SDPA's dense mask."""
    model = tiny_far_long(short_term_ctx_winsize=2, slope_scale=0.05)
    latents, timestep, actions = randn(1, 5, 4, 4, 4), torch.full((1, 5), 300.0), {'action': torch.ones(1, 5).long()}
    with torch.no_grad():
        reference = model(latents, timestep, actions).sample
        model.attention_backend = 'flex'  # unfused on CPU (forward only)
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            flex = model(latents, timestep, actions).sample
    torch.testing.assert_close(flex, reference, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('override, message', [
    ('model.context_patch_sise=2', r"model\.context_patch_sise: unknown key for model 'FAR_Long' \(did you mean "
                                   r"'context_patch_size'\?\)"),
    ('model.num_layer=2', r"model\.num_layer: unknown key for model 'FAR_Long' \(did you mean 'num_layers'\?\)"),
])
def test_misspelt_keys_are_refused_though_far_long_hands_its_options_to_far(override, message):
    with pytest.raises(OptionError, match=message):
        load_experiment('options/long_context/far_long_maze_memory.yml', [override])
    assert {'context_patch_size', 'num_layers', 'slope_scale'} <= set(yaml_parameters(FAR_Long))
