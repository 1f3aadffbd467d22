"""Several processes: launch checks, even data splits, synchronised training and rank-independent evaluation."""
import json
import shutil
import socket

import pytest
import torch

from far.utils.distributed import LaunchError, StepBatchSampler, check_launch, split_batches

ACCELERATE = shutil.which('accelerate')
needs_launcher = pytest.mark.skipif(ACCELERATE is None, reason='the accelerate launcher is not on PATH')


def two_processes() -> tuple:
    """``accelerate launch`` of two synchronised processes, on a free port (other runs may hold 29500)."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    return ACCELERATE, 'launch', '--multi_gpu', '--num_processes', '2', '--main_process_port', str(port)


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


def recording(self, batch):
    batch = random_clip(self, batch)
    lengths.append(batch['video'].shape[1])
    return batch


FARTrainer._random_clip = recording
trainer = train.train(train.parse_args(sys.argv[1:]))
model = trainer.accelerator.unwrap_model(trainer.model)
torch.save({{'lengths': lengths, 'model': model.state_dict(), 'ema': trainer.ema.module.state_dict()}},
           f'rank{{trainer.accelerator.process_index}}.pt')
'''


@needs_launcher
def test_two_process_long_context_training_stays_in_sync(scripts, tmp_path):
    script = tmp_path / 'spy.py'
    script.write_text(SPY.format(repo=str(scripts.repo)))
    result = scripts.run(str(script), '-opt', str(scripts.demo), *scripts.tiny, 'name=ddp', 'datasets.train.num_videos=26',
                 'trainer.objective.training_type=long_context', 'model.short_term_ctx_winsize=4',
                 cwd=tmp_path, launcher=two_processes())
    assert result.returncode == 0, result.stdout + result.stderr
    ranks = [torch.load(tmp_path / f'rank{r}.pt') for r in range(2)]
    # every step trained on a clip of 4..8 frames, the same length on both ranks
    assert ranks[0]['lengths'] == ranks[1]['lengths'] and len(ranks[0]['lengths']) == 20
    assert set(ranks[0]['lengths']) <= set(range(4, 9)) and len(set(ranks[0]['lengths'])) > 1
    # different data and noise on each rank, yet the same weights: gradients were averaged
    for key in ranks[0]['model']:
        assert torch.equal(ranks[0]['model'][key], ranks[1]['model'][key]), key
        assert torch.equal(ranks[0]['ema'][key], ranks[1]['ema'][key]), key
    # one writer: every log line once, one set of checkpoints and samples
    log = (tmp_path / 'experiments' / 'ddp' / 'train.log').read_text()
    assert log.count('step 20/20 |') == 1 and '2 process(es)' in log
    assert (tmp_path / 'experiments/ddp/checkpoints/checkpoint-20/random_states_1.pkl').is_file()
    assert len(list((tmp_path / 'experiments/ddp/samples/step-0000020').glob('*.mp4'))) == 2


@needs_launcher
def test_two_process_evaluation_gives_the_same_results(scripts, tmp_path):
    from far.experiment import load_experiment

    torch.manual_seed(0)
    weights = tmp_path / 'random_far.pth'
    torch.save(load_experiment(str(scripts.demo), scripts.tiny).build_model().state_dict(), weights)
    args = ['-opt', str(scripts.demo), *scripts.tiny, 'name=eval', f'test.checkpoint={weights}']
    results = {}
    for processes, launcher in ((1, ()), (2, two_processes())):
        out = scripts.run('test.py', *args, cwd=tmp_path, launcher=launcher)
        assert out.returncode == 0, out.stdout + out.stderr
        folder = 'random_far' if processes == 1 else 'random_far-2'  # the second evaluation keeps the first
        results[processes] = json.loads((tmp_path / f'experiments/eval/results/{folder}/results.json').read_text())
    assert results[1]['num_processes'] == 1 and results[2]['num_processes'] == 2
    for key in ('metrics', 'copy_last_frame', 'per_seed'):
        assert results[1][key] == results[2][key]

