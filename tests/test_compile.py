"""Compilation: regional compilation of the blocks computes what eager code computes, once per shape, and the
compiled cached sampler (inductor, as on a GPU) gives the eager sampler's videos without recompiling."""
import pytest
import torch

from far.utils.compile import compile_blocks, count_compilations


def training_step(model, latents, timestep, conditions):
    model.zero_grad(set_to_none=True)
    loss = model(latents, timestep, conditions).sample.square().mean()
    loss.backward()
    return loss.detach(), torch.cat([p.grad.flatten() for p in model.parameters()])


def test_regional_compilation_trains_like_eager_code_and_compiles_once(tiny_far):
    torch._dynamo.reset()
    labels = {'type': 'label', 'num_classes': 3}
    eager, compiled = tiny_far(condition_cfg=labels).train(), tiny_far(condition_cfg=labels).train()
    assert compile_blocks(compiled, backend='aot_eager') == 2
    g = torch.Generator().manual_seed(0)
    latents, conditions = torch.randn(2, 3, 4, 4, 4, generator=g), {'label': torch.tensor([0, 2])}
    timestep = torch.tensor([[-1.0, 500.0, 20.0], [300.0, -1.0, 999.0]])
    with count_compilations() as first:
        loss, grads = training_step(compiled, latents, timestep, conditions)
    expected_loss, expected_grads = training_step(eager, latents, timestep, conditions)
    torch.testing.assert_close(loss, expected_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grads, expected_grads, rtol=1e-4, atol=1e-6)
    with count_compilations() as again:
        training_step(compiled, latents.flip(0), timestep.flip(0), conditions)
    assert first['graphs'] >= 1 and first['graph_breaks'] == 0
    assert again == dict.fromkeys(again, 0)  # the second block reuses the first's code
    with pytest.raises(ValueError, match='no repeated block'):
        compile_blocks(torch.nn.Linear(2, 2))


@pytest.mark.slow
def test_inductor_compiled_sampling_equals_eager_and_never_recompiles(tiny_far, make_pipeline):
    torch._dynamo.reset()
    pipe = make_pipeline(tiny_far(num_layers=1, num_attention_heads=1, axes_dims_rope=[4, 6, 6],
                                  attention_head_dim=16), num_inference_steps=2)
    g = torch.Generator().manual_seed(0)
    context, noise = torch.randn(3, 2, 4, 4, 4, generator=g), torch.randn(3, 3, 4, 4, 4, generator=g)
    compiled = pipe.generate_latents(context, noise, execution='compiled')
    assert (compiled - pipe.generate_latents(context, noise)).abs().max() <= 1e-4 * compiled.abs().max()
    with count_compilations() as after_warm_up:
        pipe.generate_latents(context[:2, :1], noise[:2], execution='compiled')  # a smaller batch, other lengths
        pipe.generate_latents(None, noise[:1, :2], execution='compiled')
    assert after_warm_up == dict.fromkeys(after_warm_up, 0)


LONG_CONTEXT_SPY = '''
import functools
import sys

import torch

sys.path.insert(0, {repo!r})
import far.trainers.base as base
import train
from far.trainers import FARTrainer
from far.utils.compile import count_compilations

# Dynamo's guards decide what compiles again, whatever the backend: aot_eager keeps the test fast.
base.compile_blocks = functools.partial(base.compile_blocks, backend='aot_eager')
random_clip, lengths = FARTrainer._random_clip, []


def recording(self, batch, step):
    batch = random_clip(self, batch, step)
    lengths.append(batch['video'].shape[1])
    return batch


FARTrainer._random_clip = recording
with count_compilations() as found:
    trainer = train.train(train.parse_args(sys.argv[1:]))
torch.save({{'lengths': lengths, 'compilations': found, 'buckets': trainer.clip_lengths(16)}}, 'spy.pt')
'''

TINY_FAR_LONG = [
    'model.num_layers=1', 'model.num_attention_heads=1', 'model.attention_head_dim=32',
    'model.axes_dims_rope=[8,12,12]', 'model.short_term_ctx_winsize=4', 'datasets.train.source.num_episodes=8',
    'datasets.train.source.episode_length=16', 'datasets.train.source.window=4', 'datasets.test.source.window=4',
    'datasets.test.source.num_episodes=2',
    'test.protocol.sliding_window_baseline=4', 'test.protocol.context_length=8', 'test.protocol.unroll_length=8',
    'trainer.total_steps=10', 'trainer.batch_size=2', 'trainer.log.every=5', 'trainer.checkpoint.every=10',
]


@pytest.mark.slow
def test_compiled_long_context_training_compiles_once_per_clip_length_bucket(scripts, tmp_path):
    script = tmp_path / 'spy.py'
    script.write_text(LONG_CONTEXT_SPY.format(repo=str(scripts.repo)))
    result = scripts.run(str(script), '-opt', str(scripts.repo / 'options/long_context/far_long_maze_memory.yml'),
                         *TINY_FAR_LONG, 'trainer.compile=true', 'name=long', cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    spy = torch.load(tmp_path / 'spy.pt')
    assert spy['buckets'] == [4, 8, 12, 16]  # the default 4 buckets from the window to the whole clip
    assert set(spy['lengths']) <= set(spy['buckets']) and len(set(spy['lengths'])) > 2
    assert spy['compilations']['graph_breaks'] == 0
    assert 1 <= spy['compilations']['graphs'] <= len(spy['buckets']) + 1
