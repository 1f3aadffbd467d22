"""train.py end to end on the embedded dataset: a 20-step run, kill and resume, the experiment folder,
bad options, the checkpoint files behind resuming, non-finite steps and damaged checkpoints."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from far.trainers import FARTrainer
from far.trainers.curves import CURVES_FILE, METRICS_FILE, read_metrics
from far.utils.checkpoints import checkpoint_problem, latest_checkpoint, list_checkpoints, load_weights, resolve_weights

def weights(checkpoint: Path):
    return load_file(str(checkpoint / 'model.safetensors')), load_file(str(checkpoint / 'ema.safetensors'))


def assert_same(a, b):
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)


@pytest.fixture(scope='module')
def finished_run(tmp_path_factory, scripts) -> Path:
    """An uninterrupted 20-step run: its working directory."""
    cwd = tmp_path_factory.mktemp('train')
    scripts.train(cwd)
    return cwd


def test_twenty_step_run_writes_the_experiment_folder(finished_run):
    folder = finished_run / 'experiments' / 'tiny'
    log = (folder / 'train.log').read_text()
    for step in (5, 10, 15, 20):
        assert f'step {step}/20 | grad_norm' in log
    assert 'loss ' in log and 'lr ' in log and 'ETA ' in log and ('it/s' in log or 's/it' in log)
    assert [step for step, _ in list_checkpoints(folder / 'checkpoints')] == [10, 20]  # keep: 2
    for step in (10, 20):
        samples = folder / 'samples' / f'step-{step:07d}'
        assert {p.name for p in samples.iterdir()} == {'video_0000.mp4', 'video_0001.mp4', 'grid.png', 'grid.gif'}
    saved = (folder / 'options.yml').read_text()
    assert 'total_steps: 20' in saved and 'num_layers: 1' in saved
    logged = read_metrics(folder / METRICS_FILE)
    assert set(logged) == {'train/loss', 'train/grad_norm', 'train/lr'} and list(logged['train/loss']) == [5, 10, 15, 20]
    assert logged['train/lr'][20] == 0.0  # the cosine schedule's end
    with Image.open(folder / CURVES_FILE) as curves:
        assert curves.size[0] > 2 * curves.size[1]  # three panels side by side
    state = json.loads((folder / 'checkpoints' / 'checkpoint-20' / 'trainer_state.json').read_text())
    assert state == {'step': 20, 'ema_updates': 20}
    model, ema = weights(folder / 'checkpoints' / 'checkpoint-20')
    assert any(not torch.equal(model[k], ema[k]) for k in model)  # the EMA is its own average


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_weights(scripts, finished_run, tmp_path):
    args = [sys.executable, str(scripts.repo / 'train.py'), '-opt', str(scripts.demo), *scripts.tiny, 'name=tiny']
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    process = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoints = tmp_path / 'experiments' / 'tiny' / 'checkpoints'
    try:  # kill it as soon as checkpoint-10 is published: it is then validating (step 10) or training on
        while latest_checkpoint(checkpoints) is None and process.poll() is None:
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
    assert process.returncode == -signal.SIGKILL, 'the run ended before it could be killed'
    assert [step for step, _ in list_checkpoints(checkpoints)] == [10]

    resumed = scripts.train(tmp_path)
    assert 'checkpoint-10 (step 10)' in resumed.stdout and 'training from step 10 to 20' in resumed.stdout
    # the metrics logged before the kill are read back: the same record as the uninterrupted run's
    logged, uninterrupted = (read_metrics(cwd / 'experiments/tiny' / METRICS_FILE) for cwd in (tmp_path, finished_run))
    assert list(logged['train/loss']) == [5, 10, 15, 20]
    assert logged['train/loss'] == pytest.approx(uninterrupted['train/loss'], rel=1e-5)
    for uninterrupted, continued in zip(weights(finished_run / 'experiments/tiny/checkpoints/checkpoint-20'),
                                        weights(checkpoints / 'checkpoint-20')):
        assert_same(uninterrupted, continued)

    again = scripts.train(tmp_path)  # a finished run started again does nothing
    assert 'training already complete (20/20 steps)' in again.stdout


@pytest.mark.slow
def test_other_options_stop_the_run_and_force_new_archives(scripts, finished_run, tmp_path):
    shutil.copytree(finished_run / 'experiments', tmp_path / 'experiments')
    refused = scripts.run('train.py', '-opt', str(scripts.demo), *scripts.tiny, 'name=tiny', 'trainer.optimizer.lr=0.01', cwd=tmp_path)
    assert refused.returncode == 1
    assert 'experiments/tiny holds a run with other options' in refused.stderr
    assert 'trainer.optimizer.lr: 0.0015 -> 0.01' in refused.stderr and '--force-new' in refused.stderr

    # the new run also tries the other switches: bf16, gradient checkpointing, wandb (offline)
    scripts.train(tmp_path, 'trainer.total_steps=2', 'mixed_precision=bf16', 'trainer.gradient_checkpointing=true',
          'trainer.log.use_wandb=true', '--force-new', name='tiny')
    archived = [p for p in (tmp_path / 'experiments').iterdir() if p.name.startswith('tiny_archived_')]
    assert len(archived) == 1
    assert (archived[0] / 'checkpoints' / 'checkpoint-20').is_dir()  # the old run, untouched
    folder = tmp_path / 'experiments' / 'tiny'
    assert [s for s, _ in list_checkpoints(folder / 'checkpoints')] == [2]
    assert 'mixed precision bf16' in (folder / 'train.log').read_text()
    run_id = (folder / 'wandb_run_id').read_text()
    assert list((folder / 'wandb').glob(f'offline-run-*-{run_id}'))


@pytest.mark.slow
def test_a_run_that_failed_before_its_first_step_does_not_block_its_rerun(scripts, tmp_path):
    failed = scripts.run('train.py', '-opt', str(scripts.demo), *scripts.tiny, 'name=tiny', 'trainer.total_steps=2',
                         f'pretrained={tmp_path / "nowhere.pth"}', cwd=tmp_path)
    assert failed.returncode == 1 and 'nowhere.pth' in failed.stderr
    assert not (tmp_path / 'experiments' / 'tiny' / 'options.yml').exists()
    rerun = scripts.train(tmp_path, 'trainer.total_steps=2')
    assert 'training from step 0 to 2' in rerun.stdout
    assert 'pretrained: null' in (tmp_path / 'experiments' / 'tiny' / 'options.yml').read_text()


@pytest.mark.slow
def test_raising_the_step_budget_continues_the_run(finished_run, tmp_path, scripts):
    shutil.copytree(finished_run / 'experiments', tmp_path / 'experiments')
    folder = tmp_path / 'experiments' / 'tiny'
    extended = scripts.train(tmp_path, 'trainer.total_steps=24', 'trainer.checkpoint.every=4', 'trainer.log.every=2',
                             'trainer.validation=null')
    assert 'training from step 20 to 24' in extended.stdout
    assert 'resuming with a changed setting: trainer.total_steps: 20 -> 24' in extended.stdout
    assert [s for s, _ in list_checkpoints(folder / 'checkpoints')] == [20, 24]
    assert 'total_steps: 24' in (folder / 'options.yml').read_text()
    assert ['total_steps: 20' in p.read_text() for p in folder.glob('options.*.yml')] == [True]  # kept


@pytest.mark.slow
def test_an_extended_run_equals_one_planned_that_long(tmp_path, scripts):
    constant = ['trainer.lr_schedule.name=constant', 'trainer.validation=null', 'trainer.checkpoint.every=4']
    scripts.train(tmp_path / 'a', *constant, 'trainer.total_steps=8')
    scripts.train(tmp_path / 'a', *constant, 'trainer.total_steps=12')
    scripts.train(tmp_path / 'b', *constant, 'trainer.total_steps=12')
    for extended, planned in zip(weights(tmp_path / 'a/experiments/tiny/checkpoints/checkpoint-12'),
                                 weights(tmp_path / 'b/experiments/tiny/checkpoints/checkpoint-12')):
        assert_same(extended, planned)


def test_bad_key_stops_before_any_work(scripts, tmp_path):
    result = scripts.run('train.py', '-opt', str(scripts.demo), 'trainer.optimizer.lrr=0.1', cwd=tmp_path)
    assert result.returncode == 1
    assert (f'error: {scripts.demo}: trainer.optimizer.lrr: unknown key for OptimizerOptions (did you mean \'lr\'?); '
            'allowed keys: betas, decayed_modules, eps, lr, weight_decay') in result.stderr
    assert not (tmp_path / 'experiments').exists() and not (tmp_path / 'datasets').exists()


def test_long_context_clip_lengths_are_evenly_spaced_buckets():
    def lengths(buckets, frames=48):
        return FARTrainer.clip_lengths(SimpleNamespace(window=8, clip_length_buckets=buckets), frames)

    assert lengths(4) == [8, 21, 35, 48] and sum(lengths(4)) / 4 == (8 + 48) / 2  # the mean length is kept
    assert lengths(None) == list(range(8, 49)) and lengths(1) == [48] and lengths(8, frames=10) == [8, 9, 10]


# ---- checkpoint files ----

def test_latest_checkpoint_ignores_unfinished_saves(tmp_path):
    for name in ('checkpoint-20', 'checkpoint-100', '.tmp-checkpoint-200', 'checkpoint-x', 'other'):
        (tmp_path / name).mkdir()
    assert [s for s, _ in list_checkpoints(tmp_path)] == [20, 100]
    assert latest_checkpoint(tmp_path) == tmp_path / 'checkpoint-100'
    assert latest_checkpoint(tmp_path / 'absent') is None


def test_load_weights_from_every_saved_form(scripts, finished_run, tmp_path):
    from far.experiment import load_experiment

    model = load_experiment(str(scripts.demo), scripts.tiny).build_model()
    checkpoint = finished_run / 'experiments' / 'tiny' / 'checkpoints' / 'checkpoint-20'
    assert load_weights(model, checkpoint) == checkpoint / 'ema.safetensors'
    ema = {k: v.clone() for k, v in model.state_dict().items()}
    assert load_weights(model, checkpoint, use_ema=False) == checkpoint / 'model.safetensors'
    assert any(not torch.equal(ema[k], v) for k, v in model.state_dict().items())

    model.save_pretrained(tmp_path / 'pretrained')
    torch.save({f'module.{k}': v for k, v in ema.items()}, tmp_path / 'ddp.pth')  # a wrapped model's state dict
    for source in (tmp_path / 'pretrained', tmp_path / 'ddp.pth'):
        fresh = load_experiment(str(scripts.demo), scripts.tiny).build_model()
        load_weights(fresh, source)
        assert_same(fresh.state_dict(), model.state_dict() if source.is_dir() else ema)

    labelled = load_experiment(str(scripts.demo), [*scripts.tiny, 'model.condition_cfg={type: label, num_classes: 9}'])
    labelled = labelled.build_model()
    with pytest.raises(ValueError, match=r'ddp\.pth does not fit the model built from the YAML `model` block: '
                                         r'missing label_embedder\..*; unexpected none'):
        load_weights(labelled, tmp_path / 'ddp.pth')
    wider = load_experiment(str(scripts.demo), [*scripts.tiny, 'model.num_attention_heads=2']).build_model()
    with pytest.raises(ValueError, match=r'(?s)ddp\.pth does not fit the model .*size mismatch'):
        load_weights(wider, tmp_path / 'ddp.pth')
    with pytest.raises(FileNotFoundError, match='does not exist'):
        resolve_weights(tmp_path / 'absent.pth')
    with pytest.raises(FileNotFoundError, match='neither an experiment checkpoint'):
        resolve_weights(tmp_path)


# ---- faults ----

NAN_SPY = '''
import runpy
import sys

import torch

sys.path.insert(0, {repo!r})
from far.trainers import FARTrainer

train_step = FARTrainer.train_step
weights_before = {{}}  # step -> model and EMA weights when the step starts


def injected(self, batch, step):
    weights_before[step] = [p.detach().clone() for p in [*self.model.parameters(), *self.ema.parameters()]]
    logs = train_step(self, batch, step)
    if step + 1 in {nan_steps!r}:  # counted from 1, as the log counts
        logs['loss'] = logs['loss'] * float('nan')
    return logs


FARTrainer.train_step = injected
sys.argv = ['train.py', *sys.argv[1:]]
try:
    runpy.run_path({train!r}, run_name='__main__')
finally:
    torch.save(weights_before, 'weights_before.pt')
'''


@pytest.mark.slow
def test_non_finite_steps_are_skipped_and_too_many_stop_the_run(scripts, tmp_path):
    script = tmp_path / 'nan_spy.py'
    script.write_text(NAN_SPY.format(repo=str(scripts.repo), train=str(scripts.repo / 'train.py'),
                                     nan_steps={7, 12, 13, 14, 15}))
    result = scripts.run(str(script), '-opt', str(scripts.demo), *scripts.tiny, 'name=nan', cwd=tmp_path)
    assert result.returncode == 1 and 'Traceback' not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        'error: step 15: the loss or gradient norm was not finite 4 steps in a row (more than '
        'trainer.fault.max_nonfinite_steps=3): training stopped; the last finite checkpoint is '
        'experiments/nan/checkpoints/checkpoint-10; lower trainer.optimizer.lr or set trainer.max_grad_norm')
    assert 'step 7: loss nan, gradient norm nan on this process: update skipped (1 in a row, 1 in this run)' \
        in result.stdout
    assert '| 1 non-finite steps skipped |' in result.stdout  # the log line of step 10
    before = torch.load(tmp_path / 'weights_before.pt')
    assert all(torch.equal(a, b) for a, b in zip(before[6], before[7]))  # step 7 changed neither model nor EMA
    assert not all(torch.equal(a, b) for a, b in zip(before[7], before[8]))
    checkpoints = tmp_path / 'experiments' / 'nan' / 'checkpoints'
    assert [step for step, _ in list_checkpoints(checkpoints)] == [10]  # kept; no checkpoint of the streak
    assert checkpoint_problem(checkpoints / 'checkpoint-10') is None
    assert all(torch.isfinite(v).all() for part in weights(checkpoints / 'checkpoint-10') for v in part.values())


@pytest.mark.slow
def test_a_damaged_checkpoint_is_reported_and_set_aside(scripts, finished_run, tmp_path):
    shutil.copytree(finished_run / 'experiments', tmp_path / 'experiments')
    checkpoints = tmp_path / 'experiments' / 'tiny' / 'checkpoints'
    ema_file = checkpoints / 'checkpoint-20' / 'ema.safetensors'
    ema_file.write_bytes(ema_file.read_bytes()[:-4000])

    evaluated = scripts.run('test.py', '-opt', str(scripts.demo), *scripts.tiny, 'name=tiny', cwd=tmp_path)
    assert evaluated.returncode == 1 and 'Traceback' not in evaluated.stderr, evaluated.stderr
    assert evaluated.stderr.strip().splitlines() == [
        f'error: {scripts.demo}: test.checkpoint: experiments/tiny/checkpoints/checkpoint-20/ema.safetensors is damaged '
        f'(ema.safetensors has {ema_file.stat().st_size} bytes, the manifest says {ema_file.stat().st_size + 4000}): '
        f'use another checkpoint']

    resumed = scripts.train(tmp_path)
    warning, = [line for line in resumed.stdout.splitlines() if 'WARNING' in line]
    assert 'experiments/tiny/checkpoints/checkpoint-20 is damaged (ema.safetensors has ' in warning
    assert 'resumed from experiments/tiny/checkpoints/checkpoint-10 (step 10)' in resumed.stdout
    aside, = checkpoints.glob('checkpoint-20.corrupt-*')
    assert (aside / 'model.safetensors').is_file()  # set aside, not deleted
    assert [step for step, _ in list_checkpoints(checkpoints)] == [10, 20]
    for uninterrupted, continued in zip(weights(finished_run / 'experiments/tiny/checkpoints/checkpoint-20'),
                                        weights(checkpoints / 'checkpoint-20')):
        assert_same(uninterrupted, continued)
