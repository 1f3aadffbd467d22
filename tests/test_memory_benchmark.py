"""The embedded long-context benchmark: the memory protocol, the sliding-window sampler, its YAML files."""
import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image

import far  # noqa: F401  (fills the registries)
from far.experiment import load_experiment
from far.metrics.memory import MemoryProtocol
from far.metrics.scores import mean_curves
from far.registry import PROTOCOLS

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / 'options' / 'long_context').glob('*.yml'))


# ----- the protocol -----

def synthetic_videos(errors):
    """gt ``[2, 6, 3, 8, 8]`` and one trajectory off by the constant ``errors[f]`` in frame f (PSNR -20 log10 e)."""
    gt = torch.full((2, 6, 3, 8, 8), 0.5)
    offsets = torch.tensor(errors, dtype=torch.float32).view(2, 6, 1, 1, 1)
    return (gt + offsets)[:, None], gt


def test_metrics_are_split_by_the_revisit_mask():
    # context 2, predicted 4; revisits get a near-perfect prediction (PSNR 40), the rest a bad one (PSNR 20)
    revisit = torch.tensor([[0, 0, 1, 1, 0, 0],
                            [0, 1, 0, 1, 1, 1]], dtype=torch.bool)
    errors = [[0.1 if not r else 0.01 for r in row] for row in revisit.tolist()]
    samples, gt = synthetic_videos(errors)
    protocol = MemoryProtocol(context_length=2, unroll_length=4, metrics=['mse', 'psnr'], bucket_size=3)
    results = protocol.evaluate(samples, gt, revisit)

    assert results['psnr_revisit'] == pytest.approx(40.0, abs=1e-3)
    assert results['psnr_other'] == pytest.approx(20.0, abs=1e-3)
    assert results['mse_revisit'] == pytest.approx(1e-4, rel=1e-4)
    assert results['mse_other'] == pytest.approx(1e-2, rel=1e-4)
    # overall: per video the mean over its predicted frames (video 0: 2 of 4 revisits, video 1: 3 of 4)
    assert results['psnr'] == pytest.approx(((20 + 20 + 40 + 40) / 4 + (20 + 40 + 40 + 40) / 4) / 2, abs=1e-3)
    # buckets by absolute frame index: frames 2-4 and the last one, 5
    assert [bucket['frames'] for bucket in results['buckets']] == [[2, 4], [5, 5]]
    assert results['buckets'][0]['psnr'] == pytest.approx((40 + 40 + 20 + 20 + 40 + 40) / 6, abs=1e-3)
    assert results['buckets'][1]['psnr'] == pytest.approx((20 + 40) / 2, abs=1e-3)


def test_first_visits_are_scored_apart_when_the_mask_is_given():
    revisit = torch.tensor([[0, 0, 1, 1, 0, 0]] * 2, dtype=torch.bool)
    first_visit = torch.tensor([[1, 1, 0, 0, 1, 0]] * 2, dtype=torch.bool)  # frame 5: seen within the window
    errors = [[0.1, 0.1, 0.01, 0.01, 0.1, 0.01]] * 2  # PSNR 20 on first visits, 40 on revisits and on frame 5
    samples, gt = synthetic_videos(errors)
    protocol = MemoryProtocol(context_length=2, unroll_length=4, metrics=['psnr'])
    results = protocol.evaluate(samples, gt, revisit, first_visit)
    assert results['psnr_first_visit'] == pytest.approx(20.0, abs=1e-3)
    assert results['psnr_revisit'] == pytest.approx(40.0, abs=1e-3)
    assert results['psnr_other'] == pytest.approx(30.0, abs=1e-3)  # frames 4 and 5
    assert 'psnr_first_visit' not in protocol.evaluate(samples, gt, revisit)
    with pytest.raises(ValueError, match='first_visit must be a BoolTensor'):
        protocol.evaluate(samples, gt, revisit, first_visit.float())


def test_per_frame_curves_follow_the_roll_out_and_each_category():
    revisit = torch.tensor([[0, 0, 1, 1, 0, 0],
                            [0, 1, 0, 1, 1, 1]], dtype=torch.bool)
    errors = [[0.1 if not r else 0.01 for r in row] for row in revisit.tolist()]  # PSNR 40 on revisits, else 20
    samples, gt = synthetic_videos(errors)
    protocol = MemoryProtocol(context_length=2, unroll_length=4, metrics=['psnr'], bucket_size=3)
    results = protocol.evaluate(samples, gt, revisit, ~revisit)
    curves = results.curves()
    assert set(curves) == {'psnr', 'psnr_revisit', 'psnr_first_visit'}  # no curve per bucket
    assert curves['psnr'] == pytest.approx([30.0, 40.0, 30.0, 30.0], abs=1e-3)  # the mean over the 2 videos
    assert curves['psnr_revisit'] == pytest.approx([40.0] * 4, abs=1e-3)
    assert curves['psnr_first_visit'][1] is None  # frame 3 is a revisit in both videos
    assert [curves['psnr_first_visit'][i] for i in (0, 2, 3)] == pytest.approx([20.0] * 3, abs=1e-3)
    assert sum(curves['psnr']) / 4 == pytest.approx(results['psnr'], abs=1e-9)  # the metric is their mean
    seeds = mean_curves([curves, {**curves, 'psnr': [20.0] * 4, 'psnr_first_visit': [None, 10.0, None, 30.0]}])
    assert seeds['psnr'] == pytest.approx([25.0, 30.0, 25.0, 25.0], abs=1e-3)
    assert seeds['psnr_first_visit'] == pytest.approx([20.0, 10.0, 20.0, 25.0], abs=1e-3)


def test_context_frames_do_not_count_and_empty_categories_are_left_out():
    revisit = torch.tensor([[1, 1, 0, 0, 0, 0]] * 2, dtype=torch.bool)  # revisits in the context only
    samples, gt = synthetic_videos([[0.3, 0.3, 0.1, 0.1, 0.1, 0.1]] * 2)
    results = MemoryProtocol(context_length=2, unroll_length=4, metrics=['psnr']).evaluate(samples, gt, revisit)
    assert set(results) == {'psnr', 'psnr_other'}
    assert results['psnr'] == pytest.approx(20.0, abs=1e-3)


def test_an_exactly_repeated_frame_scores_the_psnr_cap():
    revisit = torch.zeros(2, 6, dtype=torch.bool)
    samples, gt = synthetic_videos([[0.1, 0.1, 0.0, 0.1, 0.1, 0.1]] * 2)  # frame 2 is exact
    results = MemoryProtocol(context_length=2, unroll_length=4, metrics=['psnr']).evaluate(samples, gt, revisit)
    assert results['psnr'] == pytest.approx((20 * math.log10(255) + 3 * 20) / 4, abs=1e-3)


def test_categories_use_each_videos_best_trajectory():
    revisit = torch.tensor([[0, 0, 1, 1, 0, 0]] * 2, dtype=torch.bool)
    worse, gt = synthetic_videos([[0.1] * 6] * 2)
    better, _ = synthetic_videos([[0.01, 0.01, 0.01, 0.01, 0.1, 0.1]] * 2)
    results = MemoryProtocol(context_length=2, unroll_length=4, num_trajectories=2, metrics=['psnr']).evaluate(
        torch.cat([worse, better], dim=1), gt, revisit)
    assert results['psnr_revisit'] == pytest.approx(40.0, abs=1e-3)
    assert results['psnr_other'] == pytest.approx(20.0, abs=1e-3)


def test_bad_masks_and_options_are_refused():
    samples, gt = synthetic_videos([[0.1] * 6] * 2)
    protocol = MemoryProtocol(context_length=2, unroll_length=4, metrics=['psnr'])
    with pytest.raises(ValueError, match=r'revisit must be a BoolTensor \[B, F\] = \[2, 6\]'):
        protocol.evaluate(samples, gt, torch.zeros(2, 6))
    with pytest.raises(ValueError, match='revisit must be'):
        protocol.evaluate(samples, gt, torch.zeros(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match='fvd needs videos; the memory protocol scores metrics of frames only'):
        MemoryProtocol(metrics=['psnr', 'fvd'])
    with pytest.raises(ValueError, match='sliding_window_baseline'):
        MemoryProtocol(sliding_window_baseline=0)


def test_the_protocol_is_registered_and_describes_itself():
    protocol = PROTOCOLS.build({'type': 'MemoryProtocol', 'context_length': 32, 'unroll_length': 16,
                                'metrics': ['psnr'], 'sliding_window_baseline': 8})
    assert PROTOCOLS.get('memory') is MemoryProtocol  # the short name is an alias
    assert protocol.sampler_baselines() == {'sliding_window': {'context_window': 8}}
    info = protocol.describe()
    assert info['protocol'] == 'memory' and info['sliding_window_baseline'] == 8
    assert info['context_frames'] == 32 and info['predicted_frames'] == 16
    assert 'revisit' in info['scoring']['categories']
    assert protocol.frame_fields == ('revisit', 'first_visit')


# ----- the sliding-window sampler -----

@pytest.fixture
def pipeline(tiny_far_long, make_pipeline):
    return make_pipeline(tiny_far_long())


def rollout_inputs(context_frames=5, new_frames=3):
    generator = torch.Generator().manual_seed(1)
    context = torch.randn(2, context_frames, 4, 4, 4, generator=generator)
    noise = torch.randn(2, new_frames, 4, 4, 4, generator=generator)
    actions = torch.randint(0, 4, (2, context_frames + new_frames), generator=generator)
    return context, noise, actions


# window 3 is the model's short-term window; window 5 also holds long-term frames
@pytest.mark.parametrize('use_kv_cache,window', [(False, 3), (True, 3), (True, 5)])
def test_sliding_window_equals_sampling_on_truncated_context(pipeline, use_kv_cache, window):
    context, noise, actions = rollout_inputs()
    steps = 3
    windowed = pipeline.generate_latents(context, noise, {'action': actions}, num_inference_steps=steps,
                                         use_kv_cache=use_kv_cache, context_window=window)

    # by hand: each new frame from only the last window - 1 frames, numbered from 0
    video = context
    for i in range(noise.shape[1]):
        start = video.shape[1] - (window - 1)
        frame = pipeline.generate_latents(video[:, start:], noise[:, i:i + 1],
                                          {'action': actions[:, start:video.shape[1] + 1]},
                                          num_inference_steps=steps, use_kv_cache=use_kv_cache)[:, -1:]
        video = torch.cat([video, frame], dim=1)
    torch.testing.assert_close(windowed, video, rtol=1e-4, atol=1e-5)


def test_a_window_covering_the_video_changes_nothing_and_a_short_one_does(pipeline):
    context, noise, actions = rollout_inputs()
    kwargs = dict(conditions={'action': actions}, num_inference_steps=3)
    full = pipeline.generate_latents(context, noise, **kwargs)
    covering = pipeline.generate_latents(context, noise, context_window=context.shape[1] + noise.shape[1], **kwargs)
    short = pipeline.generate_latents(context, noise, context_window=3, **kwargs)
    torch.testing.assert_close(covering, full, rtol=0, atol=0)
    assert not torch.allclose(short[:, 5:], full[:, 5:], atol=1e-3)
    with pytest.raises(ValueError, match='context_window'):
        pipeline.generate_latents(context, noise, context_window=0, **kwargs)


# ----- the experiment files -----

@pytest.mark.parametrize('config', CONFIGS, ids=[c.name for c in CONFIGS])
def test_long_context_configs_validate_and_fit_together(config):
    opt = load_experiment(str(config))
    model, protocol = opt.model, opt.test.protocol
    assert model['type'] in ('FAR_Long', 'FAR') and opt.datasets[opt.test.dataset]['split'] == 'test'
    test_set = opt.datasets[opt.test.dataset]['source']
    assert protocol['context_length'] + protocol['unroll_length'] <= test_set.episode_length
    if model['type'] == 'FAR_Long':  # the revisit mask is relative to the short-term window
        assert test_set.window == model['short_term_ctx_winsize']
    else:  # every frame at full resolution, the loss on all of them; the revisit window is the dataset's
        assert model['short_term_ctx_winsize'] >= opt.datasets['train']['source'].episode_length
    if opt.trainer is not None:
        assert protocol['sliding_window_baseline'] == test_set.window
        assert (opt.trainer['objective'].training_type == 'long_context') == (model['type'] == 'FAR_Long')
        assert opt.datasets['train']['source'].window == test_set.window


def test_the_benchmark_rolls_out_beyond_the_training_length():
    train = load_experiment(str(REPO / 'options' / 'long_context' / 'far_long_maze_memory.yml'))
    rollout = load_experiment(str(REPO / 'options' / 'long_context' / 'far_long_maze_memory_rollout.yml'))
    assert rollout.model == train.model and rollout.autoencoder == train.autoencoder
    assert rollout.test.sampler == train.test.sampler
    protocol, train_length = rollout.test.protocol, train.datasets['train']['source'].episode_length
    assert protocol['context_length'] + protocol['unroll_length'] >= 2 * train_length
    assert protocol['sliding_window_baseline'] == train_length  # the other remedy: the training length
    assert rollout.test.checkpoint == f'experiments/{train.name}/checkpoints/checkpoint-{train.trainer["total_steps"]}'
    assert math.isclose(rollout.model['slope_scale'], 0.0)
    world = ('route', 'period', 'grid', 'view', 'stride', 'resolution', 'window')
    assert {k: getattr(rollout.datasets['test']['source'], k) for k in world} == \
        {k: getattr(train.datasets['train']['source'], k) for k in world}


# ----- the benchmark end to end, shrunk to seconds -----

@pytest.mark.slow
def test_the_benchmark_trains_and_scores_revisits_and_first_visits(scripts, tmp_path):
    config = str(REPO / 'options' / 'long_context' / 'far_long_maze_memory.yml')
    shrink = ['model.num_layers=1', 'trainer.total_steps=4', 'trainer.batch_size=2', 'trainer.log.every=2',
              'trainer.checkpoint.every=4', 'datasets.train.source.num_episodes=4',
              'datasets.test.source.num_episodes=2', 'datasets.train.source.episode_length=20',
              'datasets.test.source.episode_length=20', 'datasets.train.source.period=12',
              'datasets.test.source.period=12', 'test.protocol.context_length=6', 'test.protocol.unroll_length=14',
              'test.protocol.metrics=[psnr]', 'test.sampler.num_inference_steps=2']
    trained = scripts.run('train.py', '-opt', config, *shrink, cwd=tmp_path)
    assert trained.returncode == 0, trained.stdout + trained.stderr
    tested = scripts.run('test.py', '-opt', config, *shrink, cwd=tmp_path)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    results = json.loads((tmp_path / 'experiments/far_long_maze_memory/results/checkpoint-4-ema/results.json')
                         .read_text())
    # frames 6-11 finish the first lap (new rooms), 12-19 come back to rooms 12 frames before
    for scores in (results['metrics'], results['sliding_window'], results['copy_last_frame']):
        assert {'psnr', 'psnr_revisit', 'psnr_first_visit', 'psnr_other'} <= set(scores)
    assert results['protocol']['sliding_window_baseline'] == 8
    assert results['baselines'] == ['sliding_window', 'copy_last_frame']
    assert (tmp_path / 'datasets/maze_memory_patrol/test').is_dir()
    per_frame = results['per_frame']
    assert per_frame['frames'] == list(range(6, 20))
    for key in ('metrics', 'sliding_window', 'copy_last_frame'):
        assert per_frame[key]['psnr_first_visit'][:6] != [None] * 6 and per_frame[key]['psnr_revisit'][6:] != [None] * 8
        assert sum(per_frame[key]['psnr']) / 14 == pytest.approx(results[key]['psnr'], rel=1e-9)
    out = tmp_path / 'experiments/far_long_maze_memory/results/checkpoint-4-ema'
    assert (out / 'per_frame_metrics.png').is_file()
    with Image.open(out / 'videos/seed_0/grid.png') as grid:
        assert 10 * 96 < grid.size[0] < 16 * 96  # 20 frames of 32 pixels enlarged 3 times, in 2 lines of 10
