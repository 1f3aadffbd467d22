"""Static-shape sampling: the same videos as the dynamic sampler, the reference's numbers, and no recompilation
after warm-up whatever the batch, the frame count or the cache mode."""
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from torch._dynamo.utils import counters

from far.models import FAR, FAR_Long
from far.pipelines.static_sampling import StaticFrameSampler

LABELS = {'type': 'label', 'num_classes': 3}


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def inputs(batch, context, new, actions=True, seed=1):
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(batch, context, 4, 4, 4, generator=g) if context else None
    noise = torch.randn(batch, new, 4, 4, 4, generator=g)
    conditions = ({'action': torch.randint(0, 4, (batch, context + new), generator=g)} if actions
                  else {'label': torch.randint(0, 3, (batch,), generator=g)})
    return latents, noise, conditions


def assert_same_videos(pipe, context, noise, conditions, **sampling):
    eager = pipe.generate_latents(context, noise, conditions, **sampling)
    static = pipe.generate_latents(context, noise, conditions, execution='static', **sampling)
    torch.testing.assert_close(static, eager, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('sampling', [dict(), dict(guidance_scale=2.0), dict(slope_scale=0.1)])
def test_far_static_sampling_equals_the_dynamic_sampler(tiny_far, make_pipeline, sampling):
    pipe = make_pipeline(tiny_far(condition_cfg=LABELS), num_inference_steps=3)
    assert_same_videos(pipe, *inputs(2, 2, 4, actions=False), **sampling)
    assert_same_videos(pipe, *inputs(2, 0, 3, actions=False), **sampling)  # from nothing


@pytest.mark.parametrize('context, sampling', [
    (2, dict()), (2, dict(guidance_scale=1.5)), (2, dict(multi_level_cache=False)),
    (6, dict(guidance_scale=1.5)),  # a context longer than the window: long-term frames before the first new one
])
def test_far_long_static_sampling_equals_the_dynamic_sampler(tiny_far_long, make_pipeline, context, sampling):
    pipe = make_pipeline(tiny_far_long(short_term_ctx_winsize=3), num_inference_steps=2)
    assert_same_videos(pipe, *inputs(2, context, 5), **sampling)


def test_static_sampling_reproduces_the_reference(parity, make_pipeline):
    for name, model_class in (('far.pt', FAR), ('far_long.pt', FAR_Long)):
        fixture = parity(name)
        model = model_class(**fixture['config']).eval()
        model.load_state_dict(fixture['state_dict'])
        g = fixture['generate']
        out = make_pipeline(model).generate_latents(
            g['context'], g['noise'], g['conditions'], num_inference_steps=g['num_inference_steps'],
            guidance_scale=g['guidance_scale'], execution='static')
        torch.testing.assert_close(out, g['output_kv_cache'], rtol=1e-4, atol=1e-4)


def test_engines_are_reused_for_smaller_batches_and_shorter_videos(tiny_far, make_pipeline):
    pipe = make_pipeline(tiny_far(condition_cfg=LABELS), num_inference_steps=2, execution='static')
    pipe.generate_latents(*inputs(3, 2, 4, actions=False))
    engine = pipe._engines[0]
    pipe.generate_latents(*inputs(2, 1, 3, actions=False))          # a last batch smaller, a shorter video
    assert pipe._engines == [engine] and (engine.batch_size, engine.num_frames) == (3, 6)
    pipe.generate_latents(*inputs(4, 2, 4, actions=False))          # larger: one new engine replaces it
    assert len(pipe._engines) == 1 and (pipe._engines[0].batch_size, pipe._engines[0].num_frames) == (4, 6)
    with pytest.raises(ValueError, match='window of at least 2 frames'):
        StaticFrameSampler(FAR_Long(**{**pipe.transformer.config, 'context_patch_size': 2,
                                       'short_term_ctx_winsize': 1}),
                           batch_size=1, num_frames=4, height=4, width=4, guidance_scale=1.0)


def rollout(engine, batch, context, new, multi_level_cache=True):
    latents, noise, conditions = inputs(batch, context, new)
    guided = {'action': torch.cat([torch.full_like(conditions['action'], 4), conditions['action']])}
    scheduler = FlowMatchEulerDiscreteScheduler()
    scheduler.set_timesteps(2)
    return engine.sample(latents, noise, guided, scheduler.timesteps, scheduler.sigmas,
                         multi_level_cache=multi_level_cache)


def test_no_recompilation_after_warm_up(tiny_far_long):
    """Compiled passes are traced once; a smaller last batch, every frame count of a rollout and both cache modes
    replay them (the backend only changes the code each graph becomes, not when graphs are made)."""
    torch._dynamo.reset()
    engine = StaticFrameSampler(tiny_far_long(num_layers=1, short_term_ctx_winsize=4), batch_size=3, num_frames=10,
                                height=4, width=4, guidance_scale=1.5, backend='eager')
    rollout(engine, 3, 2, 8)  # warm-up: the window slides, every pass is traced
    counters.clear()
    for batch, context, new, multi_level in ((2, 2, 5, True), (3, 7, 3, True), (1, 0, 10, True), (3, 2, 8, False)):
        rollout(engine, batch, context, new, multi_level)
    assert counters['stats']['unique_graphs'] == 0 and counters['frames']['total'] == 0
