"""Several processes: launch checks, even data splits, synchronised training, rank-independent evaluation,
and a rank that dies."""
import json
import re
import shutil
import signal
import time

import pytest
import torch
from safetensors.torch import load_file

from far.utils.checkpoints import latest_checkpoint
from far.utils.distributed import LaunchError, StepBatchSampler, check_launch, split_batches

ACCELERATE = shutil.which('accelerate')
needs_launcher = pytest.mark.skipif(ACCELERATE is None, reason='the accelerate launcher is not on PATH')


def two_processes(scripts) -> tuple:
    """``accelerate launch`` of two synchronised processes, on a free port (other runs may hold 29500)."""
    return ACCELERATE, 'launch', '--multi_gpu', '--num_processes', '2', '--main_process_port', str(scripts.free_port())


# ---- launch checks ----

def test_launch_check():
    check_launch(1, {})
    check_launch(2, {'WORLD_SIZE': '2', 'RANK': '1'})
    # accelerate launch --num_processes 2 without --multi_gpu: one process with a rendezvous address
    with pytest.raises(LaunchError, match='add --multi_gpu'):
        check_launch(1, {'ACCELERATE_USE_CPU': 'True', 'MASTER_ADDR': '127.0.0.1', 'MASTER_PORT': '29500'})
    # ranks started by a launcher that did not join them into one process group
    with pytest.raises(LaunchError, match='started 2 processes but this one sees 1'):
        check_launch(1, {'WORLD_SIZE': '2'})


@pytest.mark.slow
@needs_launcher
def test_launcher_without_multi_gpu_is_refused(scripts, tmp_path):
    result = scripts.run('train.py', '-opt', str(scripts.demo), *scripts.tiny, cwd=tmp_path,
                         launcher=(ACCELERATE, 'launch', '--num_processes', '2'))
    assert result.returncode != 0
    assert 'accelerate launch was asked for several processes but started one; add --multi_gpu' in result.stderr
    assert not (tmp_path / 'experiments').exists()


# ---- work splits ----

def test_training_batches_split_evenly_and_resume_exactly():
    ranks = [StepBatchSampler(26, 4, num_replicas=2, rank=r, seed=3) for r in range(2)]
    assert ranks[0].batches_per_epoch == ranks[1].batches_per_epoch == 3  # 26 // 8: the remainder is dropped
    first = [list(zip(range(6), iter(r))) for r in ranks]
    for step in range(6):
        a, b = first[0][step][1], first[1][step][1]
        assert len(a) == len(b) == 4 and not set(a) & set(b)
    epoch = [i for step in range(3) for r in range(2) for i in first[r][step][1]]
    assert len(set(epoch)) == 24  # each sample at most once per epoch
    assert sorted(epoch) != sorted(i for step in range(3, 6) for r in range(2) for i in first[r][step][1])
    # starting at step 4 gives what steps 4, 5, ... gave
    resumed = StepBatchSampler(26, 4, num_replicas=2, rank=1, seed=3, start_step=4)
    assert [b for _, b in zip(range(2), iter(resumed))] == [first[1][4][1], first[1][5][1]]
    with pytest.raises(ValueError, match='fewer than one global batch'):
        StepBatchSampler(7, 4, num_replicas=2)


def test_evaluation_batches_do_not_depend_on_the_number_of_processes():
    items = list(range(11))
    alone = split_batches(items, 3, num_replicas=1, rank=0)
    shared = sorted(split_batches(items, 3, num_replicas=2, rank=0) + split_batches(items, 3, num_replicas=2, rank=1))
    assert alone == shared == [(0, [0, 1, 2]), (1, [3, 4, 5]), (2, [6, 7, 8]), (3, [9, 10])]


# ---- two processes on CPU ----

SPY = '''
import sys
import torch
sys.path.insert(0, {repo!r})
import train
from far.trainers import FARTrainer

lengths = []
random_clip = FARTrainer._random_clip


def recording(self, batch, step):
    batch = random_clip(self, batch, step)
    lengths.append(batch['video'].shape[1])
    return batch


train_step = FARTrainer.train_step


def poisoned(self, batch, step):
    logs = train_step(self, batch, step)
    if step == 4 and self.accelerator.process_index == 1:  # an infinite loss on rank 1 alone, finite gradients
        logs['loss'] = logs['loss'] + float('inf')
    return logs


FARTrainer._random_clip = recording
FARTrainer.train_step = poisoned
trainer = train.train(train.parse_args(sys.argv[1:]))
model = trainer.accelerator.unwrap_model(trainer.model)
torch.save({{'lengths': lengths, 'model': model.state_dict(), 'ema': trainer.ema.module.state_dict()}},
           f'rank{{trainer.accelerator.process_index}}.pt')
'''


@pytest.mark.slow
@needs_launcher
def test_two_process_long_context_training_stays_in_sync(scripts, tmp_path):
    script = tmp_path / 'spy.py'
    script.write_text(SPY.format(repo=str(scripts.repo)))
    result = scripts.run(str(script), '-opt', str(scripts.demo), *scripts.tiny, 'name=ddp',
                         'datasets.train.source.num_videos=26', 'trainer.objective.training_type=long_context',
                         'model.short_term_ctx_winsize=4', 'trainer.clip_length_buckets=4', cwd=tmp_path,
                         launcher=two_processes(scripts))
    assert result.returncode == 0, result.stdout + result.stderr
    ranks = [torch.load(tmp_path / f'rank{r}.pt') for r in range(2)]
    # every step trained on a clip of 4..8 frames, the same length on both ranks
    assert ranks[0]['lengths'] == ranks[1]['lengths'] and len(ranks[0]['lengths']) == 20
    assert set(ranks[0]['lengths']) <= set(range(4, 9)) and len(set(ranks[0]['lengths'])) > 1
    # different data and noise on each rank, yet the same weights: gradients were averaged, step 5 skipped by both
    for key in ranks[0]['model']:
        assert torch.equal(ranks[0]['model'][key], ranks[1]['model'][key]), key
        assert torch.equal(ranks[0]['ema'][key], ranks[1]['ema'][key]), key
    # one writer: every log line once, one set of checkpoints and samples
    log = (tmp_path / 'experiments' / 'ddp' / 'train.log').read_text()
    # rank 0 skipped step 5 too, although its own loss was finite
    assert re.search(r'step 5: loss [\d.]+, gradient norm [\d.]+ on this process: update skipped', log), log
    assert log.count('step 20/20 |') == 1 and '2 process(es)' in log
    assert (tmp_path / 'experiments/ddp/checkpoints/checkpoint-20/random_states_1.pkl').is_file()
    assert len(list((tmp_path / 'experiments/ddp/samples/step-0000020').glob('*.mp4'))) == 2


@pytest.mark.slow
@needs_launcher
def test_two_process_far_long_training_survives_clips_without_long_term_frames(scripts, tmp_path):
    """A clip as long as the short-term window leaves FAR-Long's long-term stream without gradient: DDP, told so,
    trains on; both ranks end with the same weights."""
    script = tmp_path / 'spy.py'
    script.write_text(SPY.format(repo=str(scripts.repo)))
    tiny = ['model.num_layers=1', 'model.num_attention_heads=1', 'model.attention_head_dim=32',
            'model.axes_dims_rope=[8,12,12]', 'model.short_term_ctx_winsize=4', 'datasets.train.source.window=4',
            'datasets.train.source.num_episodes=8', 'datasets.train.source.episode_length=8',
            'datasets.test.source.window=4', 'datasets.test.source.num_episodes=2',
            'test.protocol.sliding_window_baseline=4', 'test.protocol.context_length=4',
            'test.protocol.unroll_length=4', 'trainer.total_steps=8', 'trainer.batch_size=2', 'trainer.log.every=4',
            'trainer.checkpoint.every=8', 'trainer.clip_length_buckets=2', 'name=ddp_long']
    result = scripts.run(str(script), '-opt', str(scripts.repo / 'options/long_context/far_long_maze_memory.yml'),
                         *tiny, cwd=tmp_path, launcher=two_processes(scripts))
    assert result.returncode == 0, result.stdout + result.stderr
    ranks = [torch.load(tmp_path / f'rank{r}.pt') for r in range(2)]
    assert ranks[0]['lengths'] == ranks[1]['lengths'] and set(ranks[0]['lengths']) == {4, 8}  # 4: no long-term frame
    for key in ranks[0]['model']:
        assert torch.equal(ranks[0]['model'][key], ranks[1]['model'][key]), key


@pytest.mark.slow
@needs_launcher
def test_two_process_evaluation_gives_the_same_results(scripts, tmp_path):
    from far.experiment import load_experiment

    torch.manual_seed(0)
    weights = tmp_path / 'random_far.pth'
    torch.save(load_experiment(str(scripts.demo), scripts.tiny).build_model().state_dict(), weights)
    args = ['-opt', str(scripts.demo), *scripts.tiny, 'name=eval', f'test.checkpoint={weights}']
    results = {}
    for processes, launcher in ((1, ()), (2, two_processes(scripts))):
        out = scripts.run('test.py', *args, cwd=tmp_path, launcher=launcher)
        assert out.returncode == 0, out.stdout + out.stderr
        folder = 'random_far' if processes == 1 else 'random_far-2'  # the second evaluation keeps the first
        results[processes] = json.loads((tmp_path / f'experiments/eval/results/{folder}/results.json').read_text())
    assert results[1]['num_processes'] == 1 and results[2]['num_processes'] == 2
    for key in ('metrics', 'copy_last_frame', 'per_seed'):
        assert results[1][key] == results[2][key]



# ---- a dead rank ----

@pytest.mark.slow
def test_a_killed_rank_stops_the_other_and_both_resume_exactly(scripts, tmp_path):
    options = ('name=tiny', 'trainer.fault.collective_timeout=20')
    reference = tmp_path / 'reference'
    reference.mkdir()
    assert scripts.finished(scripts.start_ranks(reference, scripts.free_port(), *options), reference) == [0, 0]

    ranks = scripts.start_ranks(tmp_path, scripts.free_port(), *options)
    checkpoints = tmp_path / 'experiments' / 'tiny' / 'checkpoints'
    try:
        while latest_checkpoint(checkpoints) is None and ranks[1].poll() is None:
            time.sleep(0.02)
        ranks[1].send_signal(signal.SIGKILL)
        killed = time.monotonic()
        assert ranks[0].wait(timeout=60) == 1
    finally:
        for rank in ranks:
            rank.kill()
            rank.wait()
    assert time.monotonic() - killed < 30
    assert ranks[1].returncode == -signal.SIGKILL, 'rank 1 ended before it could be killed'
    survivor = (tmp_path / 'rank0.err').read_text()
    assert 'Traceback' not in survivor, survivor
    assert re.fullmatch(r'error: process 0 of 2 lost the others \(.+\): one of them died or did not answer within '
                        r'trainer.fault.collective_timeout; start them all again to resume from the newest checkpoint',
                        survivor.strip().splitlines()[-1]), survivor

    assert scripts.finished(scripts.start_ranks(tmp_path, scripts.free_port(), *options), tmp_path) == [0, 0]
    assert 'resumed from experiments/tiny/checkpoints/checkpoint-10 (step 10)' in (tmp_path / 'rank0.out').read_text()
    for name in ('model.safetensors', 'ema.safetensors'):
        expected = load_file(str(reference / 'experiments/tiny/checkpoints/checkpoint-20' / name))
        resumed = load_file(str(checkpoints / 'checkpoint-20' / name))
        assert all(torch.equal(expected[k], resumed[k]) for k in expected), name
