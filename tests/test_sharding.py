"""Sharded training (``trainer.parallel``: zero1, fsdp): the weights DDP reaches with two CPU processes, exact
resume after a kill, resuming under another process count, two machines, the checkpoint test.py reads, the
refusals, and the paper configs that name a sharded strategy, shrunk."""
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from safetensors.torch import load_file

from far.experiment import load_experiment
from far.options import OptionError
from far.trainers.parallel import ParallelOptions, check_launch
from far.trainers.strategies import build_strategy
from far.utils.checkpoints import latest_checkpoint, load_checkpoint, load_weights, resume_checkpoint, save_checkpoint
from far.utils.faults import CheckpointLoadError

ACCELERATE = shutil.which('accelerate')
needs_launcher = pytest.mark.skipif(ACCELERATE is None, reason='the accelerate launcher is not on PATH')
OPTIONS = Path(__file__).resolve().parents[1] / 'options'


def sharded_settings() -> dict:
    """What the training configs that name a sharded strategy run with, each setting once: (family, strategy,
    precision, gradient checkpointing) -> the configs (cpu_offload needs a GPU)."""
    found = {}
    for path in sorted((OPTIONS / 'train').rglob('*.yml')):
        options = load_experiment(str(path))
        parallel = options.trainer.get('parallel', ParallelOptions())
        if parallel.strategy != 'ddp':
            setting = ('nbp' if options.trainer['type'] == 'NBPTrainer' else 'far', parallel.strategy,
                       options.mixed_precision, options.trainer.get('gradient_checkpointing', False))
            found.setdefault(setting, []).append(path.stem)
    return found


SHARDED_SETTINGS = sharded_settings()


def final_weights(root: Path, name: str, file: str = 'model.safetensors') -> dict:
    return load_file(str(root / 'experiments' / name / 'checkpoints' / 'checkpoint-20' / file))


def assert_close(found: dict, expected: dict, rtol: float):
    assert found.keys() == expected.keys()
    for key, value in expected.items():
        assert (found[key] - value).norm() <= rtol * value.norm() + 1e-12, key


def launch(scripts, cwd: Path, *args: str, machines: int = 1, rank: int = 0, port: int) -> list:
    """``accelerate launch`` of train.py on the tiny demo: 2 processes on one machine, or one per machine."""
    where = (['--num_machines', '2', '--machine_rank', str(rank), '--main_process_ip', '127.0.0.1']
             if machines == 2 else [])
    return [ACCELERATE, 'launch', '--multi_gpu', '--num_processes', '2', *where, '--main_process_port', str(port),
            str(scripts.repo / 'train.py'), '-opt', str(scripts.demo), *scripts.tiny, *args]


def start(command: list, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'HF_HUB_OFFLINE': '1', 'WANDB_MODE': 'offline'}
    return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # its own process group: killed whole, as kill -9 of a job


def finish(process: subprocess.Popen) -> str:
    out, _ = process.communicate(timeout=300)
    assert process.returncode == 0, out
    return out


@pytest.mark.slow
@needs_launcher
def test_sharded_training_reaches_ddp_weights_resumes_and_spans_machines(scripts, tmp_path):
    for strategy in ('ddp', 'zero1'):
        finish(start(launch(scripts, tmp_path, f'name={strategy}', f'trainer.parallel.strategy={strategy}',
                            port=scripts.free_port()), tmp_path))
    # fsdp on two machines of one process each
    port = scripts.free_port()
    machines = [start(launch(scripts, tmp_path, 'name=nodes', 'trainer.parallel.strategy=fsdp', machines=2, rank=r,
                             port=port), tmp_path) for r in range(2)]
    [finish(machine) for machine in machines]
    # fsdp, both processes killed (-9) once the first checkpoint is saved, then started again
    args = ('name=killed', 'trainer.parallel.strategy=fsdp')
    ranks = scripts.start_ranks(tmp_path, scripts.free_port(), *args)
    checkpoints = tmp_path / 'experiments' / 'killed' / 'checkpoints'
    while latest_checkpoint(checkpoints) is None and ranks[0].poll() is None:
        time.sleep(0.02)
    for rank in ranks:
        rank.send_signal(signal.SIGKILL)
    assert [rank.wait() for rank in ranks] == [-signal.SIGKILL] * 2, 'a rank ended before it could be killed'
    assert scripts.finished(scripts.start_ranks(tmp_path, scripts.free_port(), *args), tmp_path) == [0, 0]
    assert 'resumed from experiments/killed/checkpoints/checkpoint-10' in (checkpoints.parent / 'train.log').read_text()

    for file in ('model.safetensors', 'ema.safetensors'):
        ddp = final_weights(tmp_path, 'ddp', file)
        assert_close(final_weights(tmp_path, 'zero1', file), ddp, rtol=1e-5)
        assert_close(final_weights(tmp_path, 'nodes', file), ddp, rtol=1e-5)
        # the killed run ends where the uninterrupted one did
        assert_close(final_weights(tmp_path, 'killed', file), final_weights(tmp_path, 'nodes', file), rtol=1e-6)
    optimizer = checkpoints / 'checkpoint-20' / 'optimizer'
    assert sorted(p.name for p in optimizer.iterdir()) == ['.metadata', '__0_0.distcp', '__1_0.distcp']

    # what test.py loads: the names of a DDP checkpoint, EMA and trained weights
    model = load_experiment(str(scripts.demo), scripts.tiny).build_model()
    assert load_weights(model, checkpoints / 'checkpoint-20').name == 'ema.safetensors'
    assert load_weights(model, checkpoints / 'checkpoint-20', use_ema=False).name == 'model.safetensors'

    # the shards of 2 processes resumed by 1 (zero1's optimizer state is gathered: it is DDP's)
    alone = tmp_path / 'alone'
    shutil.copytree(tmp_path / 'experiments' / 'nodes' / 'checkpoints' / 'checkpoint-10',
                    alone / 'experiments' / 'alone' / 'checkpoints' / 'checkpoint-10')
    scripts.train(alone, 'trainer.parallel.strategy=fsdp', name='alone')
    log = (alone / 'experiments' / 'alone' / 'train.log').read_text()
    assert 'resumed from experiments/alone/checkpoints/checkpoint-10 (step 10)' in log and 'step 20/20' in log


@pytest.mark.slow
@needs_launcher
@pytest.mark.parametrize('setting', SHARDED_SETTINGS, ids=lambda setting: '+'.join(SHARDED_SETTINGS[setting]))
def test_sharded_paper_configs_train_at_tiny_width(setting, scripts, tmp_path, tokenizer_file):
    """The strategy, precision and activation checkpointing of the configs on their family's demo (tiny model,
    demo data), a few steps with two processes."""
    family, strategy, precision, checkpointing = setting
    flag = {True: 'true', False: 'false'}
    command = [ACCELERATE, 'launch', '--multi_gpu', '--num_processes', '2', '--main_process_port',
               str(scripts.free_port()), str(scripts.repo / 'train.py'), '-opt',
               str(scripts.repo / 'options' / 'demo' / f'{family}_moving_shapes.yml'),
               *(scripts.tiny_nbp(tokenizer_file) if family == 'nbp' else scripts.tiny), 'name=tiny',
               'trainer.total_steps=4', 'trainer.checkpoint.every=4', 'trainer.validation.every=4',
               f'mixed_precision={precision}', f'trainer.parallel.strategy={strategy}',
               f'trainer.gradient_checkpointing={flag[checkpointing]}']
    out = finish(start(command, tmp_path))
    assert (tmp_path / 'experiments' / 'tiny' / 'checkpoints' / 'checkpoint-4').is_dir(), out


# ---- refusals, in one process ----

def test_bad_parallel_options_stop_with_one_line(scripts, fresh_accelerator_state):
    with pytest.raises(OptionError, match=r"trainer.parallel.strategy: got 'zero3', allowed: 'ddp', 'zero1', 'fsdp'"):
        load_experiment(str(scripts.demo), ['trainer.parallel.strategy=zero3'])
    with pytest.raises(OptionError, match='cpu_offload needs strategy fsdp'):
        load_experiment(str(scripts.demo), ['trainer.parallel.cpu_offload=true'])
    accelerator = Accelerator(cpu=True)
    with pytest.raises(ValueError, match=r'trainer.parallel.world_size is 16 but 1 process\(es\) were launched: launch '
                                         r'16 \(accelerate launch --num_processes 16 ...\) or set '
                                         r'trainer.parallel.world_size=1'):
        check_launch(ParallelOptions(world_size=16), accelerator)
    with pytest.raises(ValueError, match='this run has no GPU: set trainer.parallel.cpu_offload=false'):
        check_launch(ParallelOptions(strategy='fsdp', cpu_offload=True), accelerator)
    with pytest.raises(ValueError, match=r'strategy fsdp shards a model per transformer block and Linear names none '
                                         r'\(_no_split_modules\): use strategy ddp or zero1'):
        build_strategy(ParallelOptions(strategy='fsdp'), accelerator, torch.nn.Linear(2, 2))


@pytest.mark.slow
def test_world_size_mismatch_stops_train_py_before_anything_is_written(scripts, tmp_path):
    result = scripts.run('train.py', '-opt', str(scripts.demo), *scripts.tiny, 'trainer.parallel.world_size=2',
                         cwd=tmp_path)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].endswith('or set trainer.parallel.world_size=1')
    assert not (tmp_path / 'experiments').exists()


def sharded_state(tiny_far):
    """A one-process fsdp training state of a tiny FAR after one step: (accelerator, strategy, model, optimizer)."""
    accelerator = Accelerator(cpu=True)
    model = tiny_far().train()
    strategy = build_strategy(ParallelOptions(strategy='fsdp'), accelerator, model)
    strategy.shard(model, None)
    optimizer = strategy.optimizer([{'params': list(model.parameters())}], lr=1e-3)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    model, optimizer, _ = strategy.prepare(model, optimizer, schedule)
    latents = torch.randn(1, 2, 4, 2, 2)
    model(latents, timestep=torch.zeros(1, 2)).sample.square().mean().backward()
    optimizer.step()
    return accelerator, strategy, model, optimizer


def test_a_missing_shard_sets_the_checkpoint_aside_and_loading_one_without_manifest_says_why(
        tiny_far, tmp_path, fresh_accelerator_state):
    accelerator, strategy, model, optimizer = sharded_state(tiny_far)
    folder = tmp_path / 'checkpoints'
    first, second = (save_checkpoint(accelerator, folder, step, parallel=strategy) for step in (1, 2))
    saved = {k: v.clone() for k, v in optimizer.state_dict()['state'][0].items()}

    _, fresh_strategy, _, fresh_optimizer = sharded_state(tiny_far)
    assert load_checkpoint(accelerator, first, parallel=fresh_strategy) == 1
    assert all(torch.equal(fresh_optimizer.state_dict()['state'][0][k], v) for k, v in saved.items())

    (second / 'optimizer' / '__0_0.distcp').unlink()
    assert resume_checkpoint(accelerator, folder) == first
    assert [p.name.startswith('checkpoint-2.corrupt-') for p in folder.iterdir()].count(True) == 1  # kept
    (first / 'manifest.json').unlink()
    (first / 'optimizer' / '__0_0.distcp').unlink()
    with pytest.raises(CheckpointLoadError, match=r'checkpoint-1 cannot be loaded \(.*__0_0.distcp.*\): move it aside'):
        load_checkpoint(accelerator, first, parallel=fresh_strategy)


def test_accelerate_configs_start_one_process_per_gpu():
    from accelerate.commands.config.config_args import load_config_from_file

    found = {path.stem: load_config_from_file(str(path)) for path in (OPTIONS / 'accelerate').glob('*.yaml')}
    assert set(found) == {'ddp_1x8', 'fsdp_2x8', 'zero1_8x8'}
    for name, config in found.items():  # the experiment's trainer.parallel shards; accelerate starts processes
        assert config.distributed_type.value == 'MULTI_GPU' and config.num_processes == 8 * config.num_machines, name
        assert config.mixed_precision == 'no', name  # the experiment file sets it


def test_memory_plan_divides_what_each_strategy_shards(scripts, capsys):
    result = scripts.module('scripts/memory_plan.py').main(['-opt', str(scripts.demo), '--gpus', '4',
                                                            '--gpu-memory-gb', '1'])
    rows, params = result['strategies'], result['parameters']
    assert (rows['ddp']['optimizer'], rows['zero1']['optimizer'], rows['fsdp']['optimizer']) == (8 * params,
                                                                                                 2 * params, 2 * params)
    assert rows['zero1']['weights'] == rows['ddp']['weights'] == 4 * params and rows['fsdp']['EMA'] == params
    assert rows['ddp']['activations'] == rows['fsdp']['activations'] > 0
    assert rows['ddp']['total'] > rows['zero1']['total'] > rows['fsdp']['total']
    assert 'fits: ddp, zero1, fsdp' in capsys.readouterr().out


def test_zero1_checkpoints_the_whole_optimizer_state_and_reads_it_back(tmp_path, fresh_accelerator_state):
    """A gloo group of one process stands in for the many: the saved state is DDP's (every parameter's moments)."""
    from far.trainers.zero1 import OPTIMIZER_FILE, ZeroOne

    torch.distributed.init_process_group('gloo', store=torch.distributed.HashStore(), rank=0, world_size=1)
    try:
        accelerator = Accelerator(cpu=True)

        def trained(steps: int):
            torch.manual_seed(0)
            model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))
            strategy = ZeroOne(ParallelOptions(strategy='zero1'), accelerator, model)
            optimizer = strategy.optimizer([{'params': list(model.parameters())}], lr=1e-2)
            schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
            model, optimizer, _ = strategy.prepare(model, optimizer, schedule)
            for _ in range(steps):
                model(torch.randn(3, 4)).square().mean().backward()
                optimizer.step()
                optimizer.zero_grad()
            return strategy

        saved = trained(3)
        saved.save(tmp_path)
        state = torch.load(tmp_path / OPTIMIZER_FILE)
        assert sorted(state['state']) == [0, 1, 2, 3] and float(state['state'][0]['step']) == 3
        resumed = trained(0)
        resumed.load(tmp_path)
        for key, value in saved.fused_optimizer().state_dict()['state'][0].items():
            assert torch.equal(resumed.fused_optimizer().state_dict()['state'][0][key], value), key
    finally:
        torch.distributed.destroy_process_group()
