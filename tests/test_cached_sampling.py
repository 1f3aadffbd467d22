"""Cached sampling (``far.pipelines.cached_sampling``): eager and compiled passes give the uncached sampler's videos,
compiled engines are shared and bounded, and a pass that cannot compile falls back to eager code with a warning."""
import logging
from types import SimpleNamespace

import pytest
import torch
from diffusers import DDIMScheduler

from far.experiment import load_experiment
from far.options import OptionError
from far.pipelines import FARSampling, cached_sampling
from far.trainers.generative import GenerativeTrainer
from far.utils.compile import count_compilations

LABELS = {'type': 'label', 'num_classes': 3}
SMALL = dict(num_layers=1, num_attention_heads=1, axes_dims_rope=[4, 6, 6], attention_head_dim=16)


def inputs(batch, context, new, actions=True, seed=1):
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(batch, context, 4, 4, 4, generator=g) if context else None
    noise = torch.randn(batch, new, 4, 4, 4, generator=g)
    conditions = ({'action': torch.randint(0, 4, (batch, context + new), generator=g)} if actions
                  else {'label': torch.randint(0, 3, (batch,), generator=g)})
    return latents, noise, conditions


def assert_same_videos(pipe, context, noise, conditions, **sampling):
    """Eager cached, compiled cached and uncached sampling agree."""
    uncached = pipe.generate_latents(context, noise, conditions, use_kv_cache=False, **sampling)
    eager = pipe.generate_latents(context, noise, conditions, **sampling)
    compiled = pipe.generate_latents(context, noise, conditions, execution='compiled', **sampling)
    torch.testing.assert_close(eager, uncached, rtol=1e-4, atol=1e-5)
    # Inductor reorders float sums: equal within 1e-4 of the videos' scale
    assert (compiled - eager).abs().max() <= 1e-4 * eager.abs().max()


@pytest.fixture
def eager_backend(monkeypatch):
    """Compiled passes traced by Dynamo but run as traced (fast to build): when graphs are made is the same."""
    monkeypatch.setattr(cached_sampling, 'BACKEND', 'eager')


@pytest.mark.parametrize('sampling', [dict(), dict(guidance_scale=2.0), dict(slope_scale=0.1)])
def test_far_cached_sampling_equals_uncached(tiny_far, make_pipeline, eager_backend, sampling):
    pipe = make_pipeline(tiny_far(condition_cfg=LABELS, **SMALL), num_inference_steps=3)
    assert_same_videos(pipe, *inputs(2, 2, 4, actions=False), **sampling)
    assert_same_videos(pipe, *inputs(2, 0, 3, actions=False), **sampling)  # from nothing


@pytest.mark.parametrize('context, sampling', [
    (2, dict()), (2, dict(guidance_scale=1.5)), (2, dict(multi_level_cache=False)),
    (6, dict(guidance_scale=1.5)),  # a context longer than the window: long-term frames before the first new one
])
def test_far_long_cached_sampling_equals_uncached(tiny_far_long, make_pipeline, eager_backend, context, sampling):
    pipe = make_pipeline(tiny_far_long(short_term_ctx_winsize=3, **SMALL), num_inference_steps=2)
    assert_same_videos(pipe, *inputs(2, context, 5), **sampling)


@pytest.mark.slow
def test_inductor_compiled_passes_equal_eager(tiny_far, tiny_far_long, make_pipeline):
    """FAR and FAR-Long (both cache modes) through Inductor, as on a GPU."""
    far = make_pipeline(tiny_far(condition_cfg=LABELS, **SMALL), num_inference_steps=2)
    assert_same_videos(far, *inputs(2, 2, 3, actions=False), guidance_scale=2.0)
    far_long = make_pipeline(tiny_far_long(short_term_ctx_winsize=3, **SMALL), num_inference_steps=2)
    for multi_level_cache in (True, False):
        assert_same_videos(far_long, *inputs(2, 2, 4), multi_level_cache=multi_level_cache)


def test_engines_are_shared_grown_and_compile_a_bounded_number_of_graphs(tiny_far, make_pipeline, eager_backend,
                                                                          caplog):
    """Validation builds a new sampler each time: five of them in a row, then three engine sizes, compile each
    pass once per engine (two passes: one frame, and the frame made before with the new one)."""
    model = tiny_far(condition_cfg=LABELS, **SMALL)
    with count_compilations() as counted:
        for _ in range(5):
            make_pipeline(model, num_inference_steps=2, execution='compiled').generate_latents(
                *inputs(3, 2, 3, actions=False))
    assert counted['graphs'] == 2 and counted['graph_breaks'] == 0
    engine = cached_sampling.compiled_engine(model, batch_size=3, num_frames=5, height=4, width=4,
                                             guidance_scale=1.0, slope=0.0)
    assert (engine.batch_size, engine.num_frames) == (4, 8)  # grown to powers of two
    with count_compilations() as counted:
        for batch, new in ((2, 3), (5, 3), (8, 14), (3, 2)):  # smaller, a larger batch, a longer video, smaller
            make_pipeline(model, num_inference_steps=2, execution='compiled').generate_latents(
                *inputs(batch, 2, new, actions=False))
    assert counted['graphs'] == 4  # two larger engines, two passes each: never near the recompile limit
    grown = cached_sampling.compiled_engine(model, batch_size=1, num_frames=1, height=4, width=4,
                                            guidance_scale=1.0, slope=0.0)
    assert (grown.batch_size, grown.num_frames) == (8, 16) and grown.fallback is None
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.slow
def test_engines_of_many_shapes_never_reach_the_recompile_limit(tiny_far, make_pipeline, eager_backend, caplog):
    """Each engine compiles its passes on its own copy of their code: more engines of other shapes than Dynamo's
    recompile limit (8 entries per code object) all stay compiled."""
    model = tiny_far(**SMALL)
    for size in range(2, torch._dynamo.config.recompile_limit + 3):  # latents of 2x2 .. 10x10: one engine each
        noise = torch.randn(1, 2, 4, size, size, generator=torch.Generator().manual_seed(size))
        make_pipeline(model, num_inference_steps=1, execution='compiled').generate_latents(None, noise)
        assert cached_sampling.compiled_engine(model, batch_size=1, num_frames=2, height=size, width=size,
                                               guidance_scale=1.0, slope=0.0).fallback is None
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_graph_break_falls_back_to_eager_with_one_warning(tiny_far, make_pipeline, eager_backend, caplog):
    model = tiny_far(**SMALL)
    pipe = make_pipeline(model, num_inference_steps=2)
    context, noise, _ = inputs(2, 2, 3, actions=False)
    expected = pipe.generate_latents(context, noise)
    block = model.transformer_blocks[0]
    forward = block.forward

    def untraceable(*args):
        torch._dynamo.graph_break()  # what Dynamo cannot put in one graph
        return forward(*args)

    block.forward = untraceable
    out = pipe.generate_latents(context, noise, execution='compiled')
    out_again = pipe.generate_latents(context, noise, execution='compiled')
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    assert torch.equal(out, out_again)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and 'runs eagerly' in warnings[0]


@pytest.mark.parametrize('settings, message', [
    (dict(execution='static'), "execution must be 'eager' or 'compiled'"),
    (dict(execution='compiled', use_kv_cache=False), 'needs use_kv_cache: true'),
    (dict(execution='compiled', context_window=3), 'no context_window'),
])
def test_settings_that_cannot_work_are_refused_at_construction(settings, message):
    with pytest.raises(ValueError, match=message):
        FARSampling(**settings)


def test_a_scheduler_whose_step_is_not_euler_is_refused(tiny_far, make_pipeline):
    pipe = make_pipeline(tiny_far(**SMALL), num_inference_steps=2)
    pipe = type(pipe)(transformer=pipe.transformer, scheduler=DDIMScheduler())
    with pytest.raises(ValueError, match='FlowMatchEulerDiscreteScheduler'):
        pipe.generate_latents(*inputs(1, 1, 1, actions=False)[:2])


def test_a_sliding_window_samples_with_the_cache_as_without(tiny_far_long, make_pipeline):
    pipe = make_pipeline(tiny_far_long(short_term_ctx_winsize=2, **SMALL), num_inference_steps=2)
    context, noise, conditions = inputs(2, 2, 4)
    cached = pipe.generate_latents(context, noise, conditions, context_window=3)
    torch.testing.assert_close(cached, pipe.generate_latents(context, noise, conditions, context_window=3,
                                                             use_kv_cache=False), rtol=1e-4, atol=1e-5)


def test_validation_samples_a_half_precision_copy_refreshed_in_place(tiny_far, make_pipeline, eager_backend):
    """bf16 sampling from fp32 weights: one bf16 copy, refreshed in place after the weights change, so that the
    compiled engine built for it is reused."""
    model = tiny_far(**SMALL)
    trainer = SimpleNamespace(accelerator=SimpleNamespace(mixed_precision='bf16'), sampling_model=model,
                              _sampling_copy=None)
    copy = GenerativeTrainer.sampling_weights(trainer)
    assert copy is not model and copy.dtype == torch.bfloat16 and model.dtype == torch.float32
    context, noise, _ = inputs(2, 2, 2, actions=False)

    def sample(weights):
        with torch.autocast('cpu', dtype=torch.bfloat16):
            return make_pipeline(weights, num_inference_steps=2, execution='compiled').generate_latents(context, noise)

    before = sample(copy)
    with torch.no_grad():  # a training step
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
    assert GenerativeTrainer.sampling_weights(trainer) is copy
    assert all(torch.equal(c, m.to(torch.bfloat16)) for c, m in zip(copy.parameters(), model.parameters()))
    with count_compilations() as counted:
        after = sample(copy)
    assert counted['graphs'] == 0 and not torch.allclose(before, after)
    trainer.accelerator.mixed_precision = 'no'
    assert GenerativeTrainer.sampling_weights(trainer) is model


def test_passes_that_do_not_run_as_cuda_graphs_are_reported_once(tiny_far, caplog):
    engine = cached_sampling.CachedFrameSampler(tiny_far(**SMALL), batch_size=1, num_frames=2, height=4, width=4,
                                                guidance_scale=1.0, slope=0.0)
    for skips in (0, 2, 1):  # what count_compilations read around each compiled call
        engine._check_cuda_graphs({'cudagraph_skips': skips}, torch.device('cuda'))
    engine._check_cuda_graphs({'cudagraph_skips': 3}, torch.device('cpu'))  # no CUDA graphs off CUDA
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and 'do not run as CUDA graphs (2 skipped graphs)' in warnings[0]


def test_an_experiment_file_with_such_settings_stops_when_it_loads():
    with pytest.raises(OptionError, match=r'trainer\.validation\.sampler: execution: compiled .* needs use_kv_cache'):
        load_experiment('options/demo/far_moving_shapes.yml', ['trainer.validation.sampler.execution=compiled',
                                                               'trainer.validation.sampler.use_kv_cache=false'])
