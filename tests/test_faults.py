"""Faults met in-process: damaged checkpoints, failed writes, non-finite steps, a full log disk, and the
one-line messages."""
import errno
import json
import logging
import re
from types import SimpleNamespace

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

import far.utils.checkpoints as checkpoints
from far.trainers.guards import FaultOptions, NonFiniteGuard
from far.utils.checkpoints import (list_checkpoints, load_checkpoint, load_weights, resume_checkpoint,
                                   save_checkpoint)
from far.utils.faults import CheckpointLoadError, CheckpointWriteError, NonFiniteTraining, fault_message
from far.utils.integrity import MANIFEST_FILE
from far.utils.logger import setup_logging


@pytest.fixture
def state(tmp_path):
    """A small training state on one CPU process: (accelerator, model, ema, checkpoints folder)."""
    AcceleratorState._reset_state(True)
    accelerator = Accelerator(cpu=True)
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 8)
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model, optimizer = accelerator.prepare(model, optimizer)
    model(torch.ones(2, 8)).sum().backward()
    optimizer.step()
    ema.update_parameters(model)
    yield accelerator, model, ema, tmp_path / 'checkpoints'
    AcceleratorState._reset_state(True)


def saved(state, *steps):
    accelerator, _, ema, folder = state
    return [save_checkpoint(accelerator, folder, step, ema, keep=3) for step in steps]


def weights_of(model) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


# ---- damaged checkpoints ----

def test_checkpoints_record_every_file_in_their_manifest(state):
    path, = saved(state, 4)
    files = json.loads((path / MANIFEST_FILE).read_text())['files']
    assert set(files) == {p.name for p in path.iterdir()} - {MANIFEST_FILE}
    assert {'model.safetensors', 'optimizer.bin', 'ema.safetensors', 'trainer_state.json'} <= set(files)
    assert all(entry['size'] == (path / name).stat().st_size for name, entry in files.items())


@pytest.mark.parametrize('damage', ['truncate', 'garble', 'delete'])
def test_a_damaged_newest_checkpoint_is_set_aside_for_the_one_before(state, damage, caplog):
    accelerator, model, ema, folder = state
    older, newest = saved(state, 4, 8)
    expected = weights_of(model)
    weights = newest / 'model.safetensors'
    data = weights.read_bytes()
    if damage == 'truncate':
        weights.write_bytes(data[:len(data) // 2])
    elif damage == 'garble':
        weights.write_bytes(data[:-8] + b'\x00' * 8)
    else:
        weights.unlink()
    with torch.no_grad():
        model.weight.zero_()
    with caplog.at_level(logging.INFO, logger='far'):
        assert resume_checkpoint(accelerator, folder) == older
    warnings = [r.message for r in caplog.records if r.levelname == 'WARNING']
    assert len(warnings) == 1 and f'{newest} is damaged (model.safetensors ' in warnings[0]
    assert [s for s, _ in list_checkpoints(folder)] == [4]  # the damaged one no longer counts
    aside, = folder.glob('checkpoint-8.corrupt-*')
    assert (aside / 'optimizer.bin').is_file()  # kept for inspection
    assert load_checkpoint(accelerator, older, ema) == 4
    assert all(torch.equal(v, expected[k]) for k, v in model.state_dict().items())


def test_checkpoints_without_manifest_load_with_a_note(state, caplog):
    accelerator, _, ema, folder = state
    path, = saved(state, 4)
    (path / MANIFEST_FILE).unlink()  # as saved before manifests existed
    with caplog.at_level(logging.INFO, logger='far'):
        assert resume_checkpoint(accelerator, folder) == path
    assert 'has no manifest.json (saved by an earlier version): resuming from it unchecked' in caplog.text
    assert load_checkpoint(accelerator, path, ema) == 4
    (path / 'optimizer.bin').write_bytes(b'garbage')
    with pytest.raises(CheckpointLoadError, match=r'checkpoint-4 cannot be loaded \(.*\): move it aside'):
        load_checkpoint(accelerator, path, ema)


def test_a_resumed_ema_counts_its_own_updates_not_the_steps(state):
    """The EMA's warm-up reads its update count: steps whose update was skipped do not count."""
    accelerator, _, ema, folder = state  # one update
    path, = saved(state, 4)
    ema.n_averaged.fill_(0)
    assert load_checkpoint(accelerator, path, ema) == 4
    assert ema.n_averaged == 1

def test_a_damaged_weight_file_is_named_in_one_line(state, tmp_path):
    _, model, _, _ = state
    path, = saved(state, 4)
    ema_file = path / 'ema.safetensors'
    ema_file.write_bytes(ema_file.read_bytes()[:100])
    with pytest.raises(ValueError, match=r'ema\.safetensors is damaged \(ema\.safetensors has 100 bytes, the '
                                         r'manifest says \d+\): use another checkpoint'):
        load_weights(torch.nn.Linear(8, 8), path)
    loose = tmp_path / 'loose.safetensors'  # no manifest to check against: the reader's own error, in one line
    loose.write_bytes(ema_file.read_bytes())
    with pytest.raises(ValueError, match=r'loose\.safetensors cannot be read, it is damaged or truncated'):
        load_weights(torch.nn.Linear(8, 8), loose)


# ---- failed writes ----

@pytest.mark.parametrize('code', [errno.ENOSPC, errno.EACCES])
def test_a_failed_write_keeps_the_previous_checkpoint(state, monkeypatch, code):
    accelerator, _, ema, folder = state
    previous, = saved(state, 4)
    before = {p.name: p.read_bytes() for p in previous.iterdir()}

    def failing(*args, **kwargs):
        raise OSError(code, 'injected', str(folder / '.tmp-checkpoint-8' / 'ema.safetensors'))

    monkeypatch.setattr(checkpoints, 'save_model', failing)
    with pytest.raises(CheckpointWriteError) as failure:
        save_checkpoint(accelerator, folder, 8, ema, keep=1)
    message = str(failure.value)
    assert '\n' not in message
    assert message.startswith(f'could not save checkpoint-8 in {folder}: {folder}/.tmp-checkpoint-8/ema.safetensors: '
                              f'injected; it needs about ')
    assert re.search(r'needs about [\d.]+ kB \(as checkpoint-4\), [\d.]+ [kMGT]?B free there;', message)
    assert f'the last good checkpoint, {previous}, is intact' in message
    assert sorted(p.name for p in folder.iterdir()) == ['checkpoint-4']  # no temporary folder, nothing pruned
    assert {p.name: p.read_bytes() for p in previous.iterdir()} == before


def test_a_full_disk_hidden_by_torch_save_is_named(tmp_path):
    from far.utils.faults import write_cause

    unexpected = RuntimeError('[enforce fail at inline_container.cc:672] . unexpected pos 350080 vs 349968')
    assert write_cause(unexpected, free=10, needed=2_000_000).startswith('the disk is full (RuntimeError: [enforce')
    assert write_cause(unexpected, free=10**9, needed=2_000_000).startswith('RuntimeError: [enforce')


def test_write_errors_outside_checkpoints_are_one_line(tmp_path):
    assert fault_message(OSError(errno.EROFS, 'Read-only file system', str(tmp_path / 'options.yml'))) == \
        f'{tmp_path}/options.yml: Read-only file system'
    full = fault_message(OSError(errno.ENOSPC, 'No space left on device', str(tmp_path / 'train.log')))
    assert full.startswith(f'{tmp_path}/train.log: No space left on device (') and full.endswith('B free there)')
    assert fault_message(OSError(errno.ENOENT, 'No such file', 'x')) is None  # not a fault a run expects
    assert fault_message(RuntimeError('a bug')) is None


# ---- non-finite steps ----

def guard(max_in_a_row: int, folder) -> NonFiniteGuard:
    accelerator = SimpleNamespace(num_processes=1, scaler=None)
    return NonFiniteGuard(accelerator, max_in_a_row, folder)


def test_non_finite_steps_are_skipped_then_stop_the_run(tmp_path, caplog):
    (tmp_path / 'checkpoint-10').mkdir()
    g = guard(2, tmp_path)
    finite, nan, inf = torch.tensor(1.0), torch.tensor(float('nan')), torch.tensor(float('inf'))
    with caplog.at_level(logging.WARNING, logger='far'):
        decisions = [g.check(11, finite, finite), g.check(12, nan, finite), g.check(13, finite, inf)]
        assert [bool(d) for d in decisions] == [True, False, False]
        assert not caplog.text and g.skipped == 0  # read only at the review (a log or checkpoint step)
        g.review()
        assert g.in_a_row == 2 and g.skipped == 2
        assert g.check(14, finite, finite) and not g.check(15, nan, nan) and not g.check(16, nan, nan)
        g.review()
        assert g.in_a_row == 2 and g.skipped == 4
    assert 'step 12: loss nan, gradient norm 1 on this process: update skipped (1 in a row, 1 in this run)' \
        in caplog.text
    assert 'step 16: loss nan, gradient norm nan on this process: update skipped (2 in a row, 4 in this run)' \
        in caplog.text
    g.check(17, nan, finite)
    g.check(18, finite, finite)  # a finite step after the limit was passed does not undo the stop
    with pytest.raises(NonFiniteTraining, match=rf'^step 17: the loss or gradient norm was not finite 3 steps in a '
                                                rf'row \(more than trainer.fault.max_nonfinite_steps=2\): training '
                                                rf'stopped; the last finite checkpoint is {tmp_path}/checkpoint-10; '):
        g.review()


def test_non_finite_weights_are_never_saved(tmp_path):
    g = guard(3, tmp_path)
    g.check_weights(5, [torch.ones(3), torch.zeros(2)])
    with pytest.raises(NonFiniteTraining, match=r'^step 5: the weights hold non-finite values and were not saved; the '
                                                r'last finite checkpoint is none \(none was saved\)$'):
        g.check_weights(5, [torch.ones(3), torch.tensor([0.0, float('inf')])])


def test_fault_options_are_checked():
    assert FaultOptions() == FaultOptions(max_nonfinite_steps=3, collective_timeout=600.0)
    with pytest.raises(ValueError, match='max_nonfinite_steps must be >= 0'):
        FaultOptions(max_nonfinite_steps=-1)


def test_an_unwritable_log_file_leaves_the_console(tmp_path, capsys):
    class Full:
        def write(self, text):
            raise OSError(errno.ENOSPC, 'No space left on device')

        def flush(self):
            pass

    logger = setup_logging(tmp_path / 'train.log', is_main_process=True)
    try:
        logger.handlers[-1].stream = Full()
        logger.info('first')
        logger.info('second')
    finally:
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
    out, err = capsys.readouterr()
    assert 'first' in out and 'second' in out
    assert err == f'warning: cannot write {tmp_path}/train.log ([Errno 28] No space left on device); logging to the ' \
                  f'console only\n'
