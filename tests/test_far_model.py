"""FAR transformer: parity with the reference implementation, checkpoint names, causality, KV cache,
attention backends, save/load, sizes."""
import warnings

import pytest
import torch

from far.models import FAR, SlotKVCache, build_model
from far.registry import MODELS


@pytest.fixture
def tiny_far(tiny_far):
    """The tiny FAR, label-conditioned (5 classes)."""
    return lambda **overrides: tiny_far(**{'condition_cfg': {'type': 'label', 'num_classes': 5}, **overrides})


def inputs(batch=2, frames=4, channels=4, size=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(batch, frames, channels, size, size, generator=g)
    timestep = torch.rand(batch, frames, generator=g) * 1000
    timestep[:, 0] = -1  # a clean context frame
    return latents, timestep, {'label': torch.arange(batch) % 5}


# ----- parity and released-checkpoint names -----

def test_forward_matches_reference(reference_forward_error):
    assert reference_forward_error('far.pt', FAR) < 1e-4


def test_parameter_names_are_the_checkpoint_names(parity):
    fixture = parity('far.pt')
    names = set(FAR(**fixture['config']).state_dict())
    assert names == set(fixture['state_dict'])


def test_paper_sizes_parameter_counts():
    label = {'type': 'label', 'num_classes': 101}
    expected = {('FAR_B', None): 129.56, ('FAR_M', None): 230.16, ('FAR_L', 'label'): 456.94,
                ('FAR_XL', 'label'): 673.82}
    for (name, condition), millions in expected.items():
        with torch.device('meta'):  # no memory, no init cost
            model = build_model(name, condition_cfg=label if condition else None)
        assert round(sum(p.numel() for p in model.parameters()) / 1e6, 2) == millions, name
        assert model.config.attention_head_dim == 64 and model.config.in_channels == 32


def test_build_model_and_registry():
    assert {'FAR', 'FAR_B', 'FAR_M', 'FAR_L', 'FAR_XL'} <= set(MODELS.keys())
    model = build_model('FAR', in_channels=4, out_channels=4, num_layers=1, attention_head_dim=16,
                        num_attention_heads=1, axes_dims_rope=[4, 6, 6])
    assert isinstance(model, FAR) and model.config.num_layers == 1
    with pytest.raises(KeyError, match='FAR_XXL'):
        build_model('FAR_XXL')


# ----- behaviour -----

def test_causal_across_frames_full_within_frame(tiny_far):
    model = tiny_far(slope_scale=0.05)
    latents, timestep, conditions = inputs()
    out = model(latents, timestep, conditions).sample
    changed = latents.clone()
    changed[:, 2, :, 0, 0] += 1.0  # one token of frame 2
    out2 = model(changed, timestep, conditions).sample
    assert torch.equal(out[:, :2], out2[:, :2])  # earlier frames never see a later frame
    assert (out[:, 2] - out2[:, 2])[:, :, 1:, 1:].abs().max() > 1e-3  # the whole frame sees the token
    assert (out[:, 3] - out2[:, 3]).abs().max() > 1e-3


def test_timestep_per_clip_broadcasts_to_frames(tiny_far):
    model = tiny_far()
    latents, _, conditions = inputs()
    t = torch.tensor([10.0, 500.0])
    assert torch.allclose(model(latents, t, conditions).sample,
                          model(latents, t[:, None].expand(2, 4), conditions).sample)


def test_label_dropout_uses_null_id_and_can_be_off(tiny_far):
    latents, timestep, conditions = inputs()
    always = tiny_far(condition_dropout=1.0).train()
    null = {'label': torch.full((2,), 5)}
    assert torch.allclose(always(latents, timestep, conditions).sample, always.eval()(latents, timestep, null).sample)
    never = tiny_far(condition_dropout=0.0).train()
    assert torch.equal(never(latents, timestep, conditions).sample, never.eval()(latents, timestep, conditions).sample)


def test_action_conditioning_is_per_frame(tiny_far):
    model = tiny_far(condition_cfg={'type': 'action', 'num_action_classes': 3})
    latents, timestep, _ = inputs()
    actions = torch.zeros(2, 4, dtype=torch.long)
    out = model(latents, timestep, {'action': actions}).sample
    actions[:, 3] = 2
    out2 = model(latents, timestep, {'action': actions}).sample
    assert torch.equal(out[:, :3], out2[:, :3]) and not torch.allclose(out[:, 3], out2[:, 3])


def cached_pass(model, cache, cached, inputs, first, count, slope):
    """Feed frames ``first..first+count-1`` after the ``cached`` segments, as the cached sampler does."""
    latents, timestep, conditions = inputs
    fed = [(first, count, 16)]
    start = sum(frames * tokens for _, frames, tokens in cached)
    cache.write, cache.visible = slice(start, start + count * 16), start + count * 16
    attend = model.attention_for(fed, cached + fed, latents.device, slope)
    return model.forward_cached(latents[:, first:first + count], timestep[:, first:first + count], conditions,
                                cache=cache, frames=range(first, first + count), attend=attend)


def test_cached_passes_equal_the_full_forward(tiny_far):
    model = tiny_far(slope_scale=0.1)
    batch = inputs(frames=5)
    full = model(*batch).sample
    cache = model.make_slot_cache(batch_size=2, num_frames=5, height=4, width=4)
    buffer = cache.keys.data_ptr()
    # frames 0-2 in one pass, then frame 3, then frame 4, each attending to the frames cached before it
    first = cached_pass(model, cache, [], batch, 0, 3, 0.1)
    third = cached_pass(model, cache, [(0, 3, 16)], batch, 3, 1, 0.1)
    fourth = cached_pass(model, cache, [(0, 4, 16)], batch, 4, 1, 0.1)
    torch.testing.assert_close(torch.cat([first, third, fourth], 1), full, rtol=1e-4, atol=1e-5)
    assert cache.keys.data_ptr() == buffer  # preallocated, written in place
    # forward's slope is an argument too (the model's by default)
    assert not torch.allclose(model(*batch, slope_scale=0.0).sample, full)


def test_slot_cache_writes_in_place_and_returns_the_visible_slots():
    cache = SlotKVCache(num_layers=2, batch_size=1, num_heads=2, head_dim=4, num_slots=8, device=torch.device('cpu'),
                        dtype=torch.float32)
    cache.write, cache.visible = slice(3, 5), 5
    k, v = cache.layer(1).extend(torch.ones(1, 2, 2, 4), torch.ones(1, 2, 2, 4))
    assert k.shape == (1, 2, 5, 4) and k.data_ptr() == cache.keys[1].data_ptr()
    assert cache.keys[1, :, :, 3:5].eq(1).all() and cache.keys[1, :, :, :3].eq(0).all()
    cache.write, cache.visible = torch.tensor([6, 7]), None  # a compiled pass: index slots, every slot visible
    k, _ = cache.layer(0).extend(torch.full((1, 2, 2, 4), 2.0), torch.ones(1, 2, 2, 4))
    assert k.shape == (1, 2, 8, 4) and cache.keys[0, :, :, 6:].eq(2).all()


def test_flex_attention_backend_matches_sdpa(tiny_far):
    model = tiny_far(slope_scale=0.05)
    latents, timestep, conditions = inputs(frames=3)
    with torch.no_grad():
        model.attention_backend = 'sdpa'
        reference = model(latents, timestep, conditions).sample
        model.attention_backend = 'flex'  # unfused on CPU (forward only), fused on CUDA
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            flex = model(latents, timestep, conditions).sample
    torch.testing.assert_close(flex, reference, rtol=1e-4, atol=1e-5)
    model.attention_backend = 'xformers'
    with pytest.raises(ValueError, match='attention_backend'):
        model(latents, timestep, conditions)


def test_gradient_checkpointing_gives_the_same_gradients(tiny_far):
    latents, timestep, conditions = inputs()
    grads = []
    for checkpointing in (False, True):
        model = tiny_far().train()
        if checkpointing:
            model.enable_gradient_checkpointing()
        model(latents, timestep, conditions).sample.square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-6)


def test_save_pretrained_round_trip(tiny_far, tmp_path):
    model = tiny_far(slope_scale=0.02)
    model.save_pretrained(tmp_path)
    loaded = FAR.from_pretrained(tmp_path).eval()
    assert loaded.config.condition_cfg == {'type': 'label', 'num_classes': 5}
    latents, timestep, conditions = inputs()
    assert torch.equal(loaded(latents, timestep, conditions).sample, model(latents, timestep, conditions).sample)


def test_clear_errors_on_bad_input(tiny_far):
    model = tiny_far()
    latents, timestep, conditions = inputs()
    with pytest.raises(ValueError, match=r"pass conditions=\{'label'"):
        model(latents, timestep, None)
    with pytest.raises(ValueError, match=r'latents must be \[B, T, 4, H, W\]'):
        model(latents[:, :, :3], timestep, conditions)
    with pytest.raises(ValueError, match='timestep must be'):
        model(latents, timestep[:, :2], conditions)
    with pytest.raises(ValueError, match='axes_dims_rope'):
        FAR(attention_head_dim=16, axes_dims_rope=[4, 4, 4])
    with pytest.raises(ValueError, match='condition_cfg'):
        FAR(condition_cfg={'type': 'text'})
    with pytest.raises(ValueError, match='condition_cfg'):
        FAR(condition_cfg={'type': 'label', 'num_class': 3})
    with pytest.raises(TypeError):
        FAR(2)  # keyword-only
