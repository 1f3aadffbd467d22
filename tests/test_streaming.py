"""Streaming generation (``far.pipelines.streaming``): a stream makes batch sampling's frames one at a time, slides
its window beyond the model's context with memory that stays put, does not recompile in its steady state, and keeps
its seed, guidance and reset to itself."""
import gc
import multiprocessing
import tracemalloc

import pytest
import torch

from far.models.autoencoders import IdentityAutoencoder
from far.models.video_dit import VideoDiT
from conftest import make_tiny_far_long
from far.pipelines import FARPipeline, FARSampling, VideoDiTPipeline, cached_sampling
from far.pipelines.streaming import LONG_TERM_WINDOWS
from far.utils.compile import count_compilations

ACTIONS = {'type': 'action', 'num_action_classes': 4}
SMALL = dict(num_layers=1, num_attention_heads=1, axes_dims_rope=[4, 6, 6], attention_head_dim=16)


@pytest.fixture
def eager_backend(monkeypatch):
    monkeypatch.setattr(cached_sampling, 'BACKEND', 'eager')


def stream_noise(seed, batch, frames, shape=(4, 4, 4)):
    """The noise a stream of ``seed`` draws: one ``[B, C, h, w]`` frame after the other."""
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randn(batch, *shape, generator=g) for _ in range(frames)], 1)


def episode(batch=2, context=2, new=6, seed=3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, context, 4, 4, 4, generator=g), torch.randint(0, 4, (batch, context + new), generator=g)


def streamed(stream, actions, first):
    """The latents ``[B, n, ...]`` of stepping ``stream`` with the actions of frames ``first..``."""
    return torch.stack([stream.step(actions[:, i]).latent for i in range(first, actions.shape[1])], 1)


@pytest.fixture(params=['FAR', 'FAR_Long'])
def action_model(request, tiny_far, tiny_far_long):
    if request.param == 'FAR':
        return tiny_far(condition_cfg=ACTIONS, **SMALL)
    return tiny_far_long(short_term_ctx_winsize=3, **SMALL)


@pytest.mark.parametrize('sampling', [dict(), dict(guidance_scale=1.5), dict(execution='compiled')])
def test_a_stream_makes_the_frames_of_batch_sampling_while_the_video_fits(action_model, make_pipeline, eager_backend,
                                                                          sampling):
    pipe = make_pipeline(action_model, num_inference_steps=2, **sampling)
    context, actions = episode()
    batch = pipe.generate_latents(context, stream_noise(7, 2, 6), {'action': actions})
    stream = pipe.open_stream(context=context, conditions={'action': actions[:, :2]}, seed=7, max_frames=8)
    torch.testing.assert_close(streamed(stream, actions, 2), batch[:, 2:], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('execution', ['eager', 'compiled'])
def test_beyond_its_window_a_stream_slides_as_batch_sampling_with_that_window(action_model, make_pipeline,
                                                                              eager_backend, execution):
    pipe = make_pipeline(action_model, num_inference_steps=2, execution=execution)
    context, actions = episode(context=3, new=12)
    batch = pipe.generate_latents(context, stream_noise(5, 2, 12), {'action': actions}, context_window=5,
                                  execution='eager')
    stream = pipe.open_stream(context=context, conditions={'action': actions[:, :3]}, seed=5, max_frames=5)
    frames = streamed(stream, actions, 3)
    torch.testing.assert_close(frames, batch[:, 3:], rtol=1e-4, atol=1e-5)
    assert stream.step(0).index == 15 and stream.max_frames == 5


def test_a_context_longer_than_the_window_keeps_its_last_frames(action_model, make_pipeline):
    pipe = make_pipeline(action_model, num_inference_steps=1)
    context, actions = episode(context=6, new=2)
    stream = pipe.open_stream(context=context, conditions={'action': actions[:, :6]}, seed=2, max_frames=4)
    batch = pipe.generate_latents(context, stream_noise(2, 2, 2), {'action': actions}, context_window=4)
    torch.testing.assert_close(streamed(stream, actions, 6), batch[:, 6:], rtol=1e-4, atol=1e-5)


def test_the_window_is_max_frames_else_the_samplers_context_window_else_the_models(tiny_far, tiny_far_long,
                                                                                   make_pipeline):
    far, far_long = tiny_far(**SMALL, short_term_ctx_winsize=5), tiny_far_long(short_term_ctx_winsize=3, **SMALL)
    start = dict(height=4, width=4, conditions={'action': torch.zeros(1, 0).long()})
    assert make_pipeline(far).open_stream(height=4, width=4).max_frames == 5
    assert make_pipeline(far_long).open_stream(**start).max_frames == 3 * (1 + LONG_TERM_WINDOWS)
    assert make_pipeline(far_long, context_window=7).open_stream(**start).max_frames == 7
    stream = make_pipeline(far_long, context_window=7).open_stream(**start, max_frames=4)
    assert stream.max_frames == 4
    stream.reset(max_frames=6)
    assert stream.max_frames == 6


LABELS = {'type': 'label', 'num_classes': 3}


@pytest.mark.parametrize('condition, sampling, window', [
    (None, dict(), 3), (None, dict(), 1),  # a window of one frame: every frame from nothing
    (LABELS, dict(), 3), (LABELS, dict(guidance_scale=2.0), 3),
])
def test_unconditional_and_label_models_stream_without_actions(tiny_far, make_pipeline, condition, sampling, window):
    pipe = make_pipeline(tiny_far(condition_cfg=condition, **SMALL), num_inference_steps=1, **sampling)
    conditions = None if condition is None else {'label': torch.tensor([1, 2])}
    batch = 1 if condition is None else 2
    stream = pipe.open_stream(conditions=conditions, height=4, width=4, seed=1, max_frames=window)
    frames = torch.stack([stream.step().latent for _ in range(5)], 1)
    expected = pipe.generate_latents(None, stream_noise(1, batch, 5), conditions, context_window=window)
    torch.testing.assert_close(frames, expected, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match='takes no actions'):
        stream.step(1)


def test_two_streams_of_one_model_keep_their_seed_guidance_and_reset(tiny_far_long, make_pipeline):
    pipe = make_pipeline(tiny_far_long(short_term_ctx_winsize=2, **SMALL), num_inference_steps=2)
    context, actions = episode(batch=1, context=1, new=7)
    start = dict(context=context, conditions={'action': actions[:, :1]}, max_frames=4)
    alone = streamed(pipe.open_stream(**start, seed=1), actions, 1)
    first, second = pipe.open_stream(**start, seed=1), pipe.open_stream(**start, seed=2, guidance_scale=2.0)
    together = [(first.step(actions[:, i]).latent, second.step(actions[:, i]).latent) for i in range(1, 8)]
    torch.testing.assert_close(torch.stack([a for a, _ in together], 1), alone)
    other = torch.stack([b for _, b in together], 1)
    assert (other - alone).abs().max() > 1e-3
    second.reset(seed=1, guidance_scale=None)
    torch.testing.assert_close(streamed(second, actions, 1), alone)
    first.reset()
    torch.testing.assert_close(streamed(first, actions, 1), alone)


def test_frames_are_decoded_through_the_vae(tiny_far, make_pipeline):
    vae = IdentityAutoencoder(in_channels=4, downsample=4)
    pipe = make_pipeline(tiny_far(**SMALL), vae=vae, num_inference_steps=1)
    context = torch.rand(1, 2, 4, 16, 16)
    frame = pipe.open_stream(context=context, max_frames=3).step()
    assert frame.index == 2 and frame.latent.shape == (1, 4, 4, 4) and frame.pixels.shape == (1, 4, 16, 16)
    torch.testing.assert_close(frame.pixels, vae.decode(frame.latent[:, None])[:, 0])


@pytest.mark.parametrize('start, step, message', [
    (dict(), dict(action=0), 'needs height and width'),
    (dict(context=torch.zeros(1, 2, 3, 4, 4)), dict(action=0), 'giving 4-channel latents'),
    (dict(height=4, width=4, max_frames=0), dict(action=0), 'max_frames must be an int >= 1'),
    (dict(height=4, width=4), dict(action=None), 'give an action id in'),
    (dict(height=4, width=4), dict(action=4), 'give an action id in'),
    (dict(height=4, width=4), dict(action=torch.tensor([0, 1])), 'or 1 of them'),
])
def test_bad_starts_and_actions_are_refused_with_one_line(tiny_far, make_pipeline, start, step, message):
    pipe = make_pipeline(tiny_far(condition_cfg=ACTIONS, **SMALL), num_inference_steps=1)
    with pytest.raises(ValueError, match=message):
        pipe.open_stream(**start).step(**step)


def test_a_sampler_that_cannot_stream_says_which_one_does():
    with pytest.raises(NotImplementedError, match='VideoDiTPipeline does not stream .* FARPipeline does'):
        VideoDiTPipeline(transformer=VideoDiT(**SMALL, in_channels=4, out_channels=4)).open_stream(height=4, width=4)


def held_bytes():
    """(bytes of every live tensor's storage, bytes Python holds); a full collection also empties Python's free
    lists, which tracemalloc would otherwise count as held."""
    gc.collect()
    return (sum(o.untyped_storage().nbytes() for o in gc.get_objects() if torch.is_tensor(o)),
            tracemalloc.get_traced_memory()[0])


def thousand_frames(results):
    """A FAR-Long stream's held bytes after 100 and after 1,000 frames, put on ``results``: run in a fresh process,
    where no earlier test's objects or threads allocate meanwhile."""
    pipe = FARPipeline(transformer=make_tiny_far_long(short_term_ctx_winsize=2, **SMALL),
                       options=FARSampling(num_inference_steps=1))
    pipe.set_progress_bar_config(disable=True)
    stream = pipe.open_stream(context=torch.randn(1, 1, 4, 4, 4), conditions={'action': torch.zeros(1, 1).long()},
                              max_frames=5)
    tracemalloc.start()
    for i in range(100):
        frame = stream.step(i % 4)
    after_100 = held_bytes()
    for i in range(900):
        frame = stream.step(i % 4)
    results.put((frame.index, bool(torch.isfinite(frame.latent).all()), after_100, held_bytes()))


@pytest.mark.slow
def test_memory_after_a_thousand_frames_is_where_it_was_after_a_hundred():
    context = multiprocessing.get_context('spawn')
    results = context.Queue()
    child = context.Process(target=thousand_frames, args=(results,))
    child.start()
    index, finite, after_100, after_1000 = results.get(timeout=300)
    child.join()
    assert index == 1000 and finite
    assert after_1000[0] <= after_100[0]
    assert after_1000[1] - after_100[1] < 32 * 1024  # allocator noise; one object kept per frame would be 50 kB


@pytest.mark.parametrize('kind', ['FAR', 'FAR_Long'])
def test_a_compiled_stream_does_not_recompile_frame_after_frame(tiny_far, tiny_far_long, make_pipeline,
                                                                eager_backend, kind):
    model = tiny_far(condition_cfg=ACTIONS, **SMALL) if kind == 'FAR' else tiny_far_long(short_term_ctx_winsize=2,
                                                                                           **SMALL)
    stream = make_pipeline(model, num_inference_steps=2, execution='compiled').open_stream(
        height=4, width=4, max_frames=4)
    with count_compilations() as warm_up:
        for i in range(6):
            stream.step(i % 4)
    with count_compilations() as steady:
        for i in range(30):
            stream.step(i % 4)
    engine = stream.engine
    stream.reset(seed=3)  # a reset keeps the engine and its compiled passes
    with count_compilations() as after_reset:
        for i in range(10):
            stream.step(i % 4)
    assert warm_up['graphs'] >= 1 and stream.engine is engine and engine.fallback is None
    nothing = {'graphs': 0, 'frames': 0, 'graph_breaks': 0, 'cudagraph_skips': 0}
    assert steady == nothing and after_reset == nothing
