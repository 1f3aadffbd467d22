"""Host syncs: what count_host_syncs counts on a CPU, and a training step that waits on the host only at log,
checkpoint and validation steps, with nothing changed by a skipped step (a real tiny FAR run through train.py and
the demo YAML file, its host syncs counted step by step); the EMA and the lr schedule, which count on the device."""
import pytest
import torch
from diffusers.training_utils import EMAModel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from far.trainers.ema import EMA
from far.trainers.lr_schedule import AppliedStepsSchedule, LRScheduleOptions
from far.utils.host_syncs import count_host_syncs

SYNC_SPY = '''
import sys

import torch

sys.path.insert(0, {repo!r})
import train
from far.trainers import FARTrainer
from far.trainers.base import Trainer
from far.utils.host_syncs import count_host_syncs

train_step, update = FARTrainer.train_step, Trainer._update
syncs_before = {{}}  # step -> host syncs counted when the step starts
states = []  # (weights, EMA, optimizer state, lr) before and after every update


def counted(self, batch, step):
    syncs_before[step] = sum(found.values())
    logs = train_step(self, batch, step)
    if step + 1 in {nan_steps!r}:
        logs['loss'] = logs['loss'] * float('nan')
    return logs


def state(self, optimizer, schedule):
    moments = [{{k: v.clone() for k, v in s.items()}} for s in optimizer.optimizer.state.values()]
    return ([p.detach().clone() for p in self.model.parameters()], [p.clone() for p in self.ema.parameters()],
            moments, schedule.table.index_select(0, schedule.applied).clone(), self.ema.n_averaged.clone())


def recorded(self, optimizer, schedule, applied):
    before = state(self, optimizer, schedule)
    update(self, optimizer, schedule, applied)
    states.append((before, state(self, optimizer, schedule)))


FARTrainer.train_step, Trainer._update = counted, recorded
with count_host_syncs() as found:
    train.train(train.parse_args(sys.argv[1:]))
torch.save({{'syncs_before': syncs_before, 'states': states}}, 'spy.pt')
'''


def same(a, b) -> bool:
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return torch.equal(a, b)


def test_training_steps_wait_on_the_host_only_to_log_save_and_validate(scripts, tmp_path):
    script = tmp_path / 'sync_spy.py'
    script.write_text(SYNC_SPY.format(repo=str(scripts.repo), nan_steps={6}))
    result = scripts.run(str(script), '-opt', str(scripts.demo), *scripts.tiny, 'name=syncs', 'trainer.total_steps=12',
                         'trainer.log.every=4', 'trainer.checkpoint.every=8', 'trainer.validation.every=8',
                         cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    spy = torch.load(tmp_path / 'spy.pt')
    before = spy['syncs_before']
    per_step = {step + 1: before[step + 1] - before[step] for step in range(11)}  # counted from 1, as the log counts
    waiting = {4, 8}  # log steps 4 and 8 (checkpoint and validation at 8): they read, no other step does
    assert {step: n for step, n in per_step.items() if n} == {step: per_step[step] for step in waiting}
    assert 'step 6: loss nan, gradient norm nan on this process: update skipped (1 in a row, 1 in this run)' \
        in result.stdout

    for step, (prior, after) in list(enumerate(spy['states'], start=1))[1:]:  # the warmup's first lr is 0
        # weights, EMA, AdamW's moments and step counts, the lr schedule and the EMA's count: all kept at step 6
        kept = [same(a, b) for a, b in zip(prior, after)]
        assert kept == [step == 6] * 5, step


def test_the_ema_averages_as_torchs_averaged_model_and_keeps_still_on_skipped_steps():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 3)
    ema, reference = EMA(model, decay=0.9, warmup=False), AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9))
    for applied in (False, True, True, False, True):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        with count_host_syncs() as syncs:
            ema.update_parameters(model, torch.tensor(applied))
        assert syncs['total'] == 0
        if applied:
            reference.update_parameters(model)
        assert same(ema.state_dict(), reference.state_dict())  # the same state: checkpoints load either way
    assert ema.n_averaged == 3



def test_the_ema_warmup_grows_the_decay_as_diffusers_ema_model_on_the_device():
    model = torch.nn.Linear(2, 2)
    ema, reference = EMA(model, decay=0.999, warmup=True), EMAModel(model.parameters(), decay=0.999)
    for n in range(1, 3000):  # past 991 updates the decay reaches 0.999; the first update copies in both
        ema.n_averaged.fill_(n)
        # diffusers counts its updates from 1: its k-th follows k - 1 averaged ones
        assert float(ema.current_decay()) == pytest.approx(reference.get_decay(n + 1), rel=1e-6)
    with count_host_syncs() as syncs:
        ema.update_parameters(model, torch.tensor(True))
    assert syncs['total'] == 0


@pytest.mark.parametrize('warmup, lag', [(True, (0.05, 0.15)), (False, (0.95, 1.0))])
def test_a_short_runs_ema_follows_the_weights_with_warmup_only(warmup, lag):
    """200 updates of weights that drift steadily: with warm-up the EMA lags them by about a tenth of the way
    (diffusers' decay averages over the last ~10% of the steps), without it stays near where they started."""
    model = torch.nn.Linear(4, 4)
    start = model.weight.detach().clone()
    ema = EMA(model, decay=0.9999, warmup=warmup)
    for _ in range(200):
        with torch.no_grad():
            model.weight.add_(1.0)
        ema.update_parameters(model, torch.tensor(True))
    behind = (model.weight - ema.module.weight) / (model.weight - start)
    assert lag[0] < behind.min() and behind.max() < lag[1]


@pytest.mark.filterwarnings('ignore:Detected call of:UserWarning')  # the reference steps no optimizer
@pytest.mark.parametrize('name', ['constant', 'cosine', 'timm_cosine'])
def test_the_lr_schedule_advances_on_applied_steps_only_and_resumes(name):
    options, model = LRScheduleOptions(name=name, warmup_steps=3), torch.nn.Linear(2, 2)
    reference = options.build(torch.optim.AdamW(model.parameters(), lr=0.1), 10)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    schedule = AppliedStepsSchedule(options.build(optimizer, 10), optimizer, total_steps=10, device='cpu')
    for applied in (True, False, True, True, False, True, True):
        assert schedule.last_lr() == pytest.approx(reference.get_last_lr()[0], rel=1e-6)
        with count_host_syncs() as syncs:
            schedule.advance(torch.tensor(applied))
        assert syncs['total'] == 0
        if applied:
            reference.step()
    schedule.sync()
    assert schedule.schedule.last_epoch == reference.last_epoch == 5
    resumed_optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    resumed = options.build(resumed_optimizer, 10)
    resumed.load_state_dict(schedule.schedule.state_dict())
    resumed_optimizer.load_state_dict(optimizer.state_dict())
    resumed = AppliedStepsSchedule(resumed, resumed_optimizer, total_steps=10, device='cpu')
    assert resumed.last_lr() == schedule.last_lr() == pytest.approx(reference.get_last_lr()[0], rel=1e-6)


def test_scalar_reads_and_data_dependent_shapes_are_counted():
    x = torch.arange(6.0)
    with count_host_syncs() as found:
        x.sum().item()
        bool(x.max() > 2)
        x[x > 2]
        torch.nonzero(x)
    assert found == {'scalar_reads': 2, 'data_dependent': 2, 'to_host': 0, 'total': 4}


def test_device_side_work_is_not_a_sync():
    x = torch.randn(4, 4)
    with count_host_syncs() as found:
        torch.where(x > 0, x, 0.0).softmax(-1) @ x
    assert found['total'] == 0
