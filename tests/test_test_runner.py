"""test.py: load weights, sample the protocol's videos, write them and results.json with the baseline."""
import json

import pytest
import torch
from PIL import Image
from accelerate import Accelerator

import far  # noqa: F401  (fills the registries)
from far.conditions import Condition
from far.evaluation import copy_last_frame, sample_videos
from far.experiment import load_experiment
from far.pipelines import build_sampler
from far.utils.logger import Progress


@pytest.fixture(scope='module')
def random_weights(tmp_path_factory, scripts):
    """A raw state dict of the tiny model, as the released FAR checkpoints are stored."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp('weights') / 'random_far.pth'
    torch.save(load_experiment(str(scripts.demo), scripts.tiny).build_model().state_dict(), path)
    return path


def test_test_py_writes_results_and_videos(scripts, tmp_path, random_weights):
    result = scripts.run('test.py', '-opt', str(scripts.demo), *scripts.tiny, 'name=eval', f'test.checkpoint={random_weights}', cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    out = tmp_path / 'experiments' / 'eval' / 'results' / 'random_far'
    results = json.loads((out / 'results.json').read_text())
    assert results['weights'] == str(random_weights)
    scored = ('mse', 'psnr', 'ssim', 'mean_intensity', 'mean_intensity_gt')
    assert {*scored, *(f'{name}_std' for name in scored)} == set(results['metrics'])
    assert set(results['copy_last_frame']) == set(results['metrics'])
    assert results['protocol']['protocol'] == 'mcvd' and results['protocol']['num_videos'] == 5
    assert results['baselines'] == ['copy_last_frame']
    assert results['protocol']['context_frames'] == 2 and results['protocol']['predicted_frames'] == 3
    assert results['sampling'] == {'type': 'FARPipeline', 'num_inference_steps': 2, 'guidance_scale': 1.0,
                                   'use_kv_cache': True, 'multi_level_cache': True, 'slope_scale': None,
                                   'context_window': None, 'scheduler': {'num_train_timesteps': 1000, 'shift': 16.0},
                                   'execution': 'eager', 'batch_size': 2}
    assert results['per_seed'][0]['seed'] == 0 and 'torch' in json.dumps(results['environment'])
    # both figures are printed
    psnr, baseline = results['metrics']['psnr'], results['copy_last_frame']['psnr']
    assert f'psnr: {psnr:.4f} (copy last frame: {baseline:.4f})' in result.stdout
    videos = out / 'videos' / 'seed_0'
    assert sorted(p.name for p in videos.glob('*.mp4')) == [f'video_{i:06d}.mp4' for i in range(5)]
    with Image.open(videos / 'grid.png') as grid:  # 4 of the 5 videos, 3 rows of 5 frames of 16 pixels enlarged 6 times
        assert 5 * 96 < grid.size[0] < 5 * 100 + 150 and 4 * 3 * 96 < grid.size[1] < 4 * (3 * 100 + 80)
    with Image.open(videos / 'grid.gif') as gif:
        assert gif.n_frames == 5
    # per-frame values: the metric is their mean; and their plot
    per_frame = results['per_frame']
    assert per_frame['frames'] == [2, 3, 4] and set(per_frame) == {'frames', 'metrics', 'copy_last_frame'}
    for key in ('metrics', 'copy_last_frame'):
        assert set(per_frame[key]) == set(scored)
        assert sum(per_frame[key]['psnr']) / 3 == pytest.approx(results[key]['psnr'], rel=1e-9)
    # the ground truth's intensity is the same beside every prediction
    assert per_frame['copy_last_frame']['mean_intensity_gt'] == per_frame['metrics']['mean_intensity_gt']
    with Image.open(out / 'per_frame_metrics.png') as plot:
        assert plot.size[0] > plot.size[1] > 200
    assert (out / 'test.log').is_file() and (out / 'options.yml').is_file()


@pytest.mark.slow
def test_a_second_evaluation_never_overwrites_the_first(scripts, tmp_path, random_weights):
    args = ('test.py', '-opt', str(scripts.demo), *scripts.tiny, 'name=eval', f'test.checkpoint={random_weights}')
    first = scripts.run(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    results = tmp_path / 'experiments' / 'eval' / 'results'
    before = (results / 'random_far' / 'results.json').read_text()
    second = scripts.run(*args, 'test.protocol.unroll_length=2', 'test.protocol.bucket_size=1', cwd=tmp_path)
    assert second.returncode == 0, second.stdout + second.stderr
    assert (results / 'random_far' / 'results.json').read_text() == before
    scored = json.loads((results / 'random_far-2' / 'results.json').read_text())
    assert scored['protocol']['predicted_frames'] == 2
    for key in ('metrics', 'copy_last_frame'):  # one-frame buckets: the per-frame curve
        buckets = scored[key]['buckets']
        assert [bucket['frames'] for bucket in buckets] == [[2, 2], [3, 3]] and 'psnr_std' in buckets[0]
        assert [bucket['psnr'] for bucket in buckets] == pytest.approx(scored['per_frame'][key]['psnr'], rel=1e-9)
    assert 'wrote experiments/eval/results/random_far-2/results.json' in second.stdout + second.stderr


@pytest.mark.slow
def test_missing_or_unfit_weights_are_option_errors(scripts, tmp_path):
    missing = 'experiments/pretrained_models/FAR_Models/FAR_B.pth'
    result = scripts.run('test.py', '-opt', str(scripts.demo), *scripts.tiny, 'name=eval', f'test.checkpoint={missing}', cwd=tmp_path)
    assert result.returncode == 1 and 'Traceback' not in result.stderr
    assert (f'error: {scripts.demo}: test.checkpoint: {missing} does not exist: download the released checkpoints with '
            '`python3 scripts/download.py --what models`') in result.stderr
    other = tmp_path / 'other.pth'
    torch.save({'proj_out.weight': torch.zeros(3, 3)}, other)
    result = scripts.run('test.py', '-opt', str(scripts.demo), *scripts.tiny, 'name=eval', f'test.checkpoint={other}', cwd=tmp_path)
    assert result.returncode == 1 and 'Traceback' not in result.stderr
    assert f'error: {scripts.demo}: test.checkpoint: {other} does not fit the model built from the YAML `model` block' in (
        result.stderr)
    assert not (tmp_path / 'experiments' / 'eval' / 'results').exists()  # the next evaluation's folder keeps its name


def test_latest_without_checkpoint_says_what_to_do(scripts, tmp_path):
    result = scripts.run('test.py', '-opt', str(scripts.demo), *scripts.tiny, 'name=untrained', cwd=tmp_path)
    assert result.returncode == 1
    assert (f"error: {scripts.demo}: test.checkpoint: 'latest', but experiments/untrained/checkpoints holds no checkpoint: "
            f'train first') in result.stderr


def test_copy_last_frame_repeats_the_last_context_frame():
    gt = torch.arange(5.0).view(1, 5, 1, 1, 1).expand(2, 5, 3, 2, 2)
    baseline = copy_last_frame(gt, 2)
    assert baseline.shape == gt.shape
    assert baseline[0, :, 0, 0, 0].tolist() == [0.0, 1.0, 1.0, 1.0, 1.0]


def test_samples_are_deterministic_per_video_whatever_the_batching(random_weights, scripts):
    opt = load_experiment(str(scripts.demo), scripts.tiny)
    model = opt.build_model().eval()
    model.load_state_dict(torch.load(random_weights))
    pipe = build_sampler(opt.test.sampler, model=model, autoencoder=opt.build_autoencoder())
    pipe.set_progress_bar_config(disable=True)
    clips = [{'video': torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(i)), 'index': i}
             for i in range(3)]
    accelerator = Accelerator(cpu=True)
    kwargs = dict(context_length=2, unroll_length=2, accelerator=accelerator, seed=7)
    together, gt = sample_videos(pipe, clips, [0, 1, 2], batch_size=3, num_trajectories=2, **kwargs)
    apart, _ = sample_videos(pipe, clips, [0, 1, 2], batch_size=1, num_trajectories=2, **kwargs)
    assert together.shape == (3, 2, 4, 3, 32, 32) and gt.shape == (3, 4, 3, 32, 32)
    torch.testing.assert_close(together, apart, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(together[:, 0], together[:, 1])  # trajectories differ
    reversed_order, _ = sample_videos(pipe, clips, [2, 1, 0], batch_size=2, num_trajectories=2, **kwargs)
    torch.testing.assert_close(reversed_order.flip(0), together, rtol=1e-4, atol=1e-5)


def test_conditions_are_parsed_once_and_shared(scripts):
    opt = load_experiment(str(scripts.demo), [*scripts.tiny, 'model.condition_cfg={type: label, num_classes: 9}'])
    model = opt.build_model()
    assert model.condition == Condition('label', 9) and model.condition.null_id == 9
    batch = {'video': torch.zeros(2, 4, 3, 32, 32), 'label': torch.tensor([1, 2])}
    assert model.condition.from_batch(batch)['label'].tolist() == [1, 2]
    assert model.condition.repeat(model.condition.from_batch(batch), 2)['label'].tolist() == [1, 1, 2, 2]
    with pytest.raises(ValueError, match="label-conditioned .* carry no 'label'"):
        model.condition.from_batch({'video': batch['video']})
    assert build_sampler(opt.test.sampler, model=model, autoencoder=None).condition is model.condition
    assert load_experiment(str(scripts.demo), scripts.tiny).build_model().condition is None
    actions = Condition.parse({'type': 'action', 'num_action_classes': 4})
    ids = {'action': torch.arange(6).view(1, 6)}
    assert actions.frames(ids, 2, 4)['action'].tolist() == [[2, 3]]
    assert actions.from_batch(ids, num_frames=3)['action'].tolist() == [[0, 1, 2]]


def test_the_first_batchs_one_off_work_is_left_out_of_the_eta(monkeypatch):
    clock = iter([0.0, 10.0, 11.0, 0.0, 10.0, 11.0])  # a first batch that compiles for 10 s, then 1 s a batch
    monkeypatch.setattr('far.utils.logger.time.perf_counter', lambda: next(clock))
    progress = Progress(5, first_is_one_off=True)
    assert progress(1, 'batch') == ('10.00 s for the first batch (one-off work such as compilation included), '
                                    'ETA after the next')
    assert progress(2, 'batch') == '1.00 batch/s, ETA 0:00:03'
    plain = Progress(5)
    plain(1, 'batch')
    assert plain(2, 'batch') == '5.50 s/batch, ETA 0:00:16'
