"""Training checkpoints (atomic save, pruning, resume) and loading model weights from any saved form.

A checkpoint is ``checkpoints/checkpoint-<step>/``: accelerate's state (model, optimizer, lr schedule,
RNG states of every rank), ``ema.safetensors`` (the EMA model), ``trainer_state.json`` and, written last,
``manifest.json`` (size and sha256 of every file). It is written under a hidden temporary name and
renamed when complete, so a run killed while saving never leaves a ``checkpoint-<step>`` that cannot be
resumed from; a failed write removes the temporary folder and stops the run with one line. Resuming
checks the manifest and sets a damaged checkpoint aside (renamed, never deleted) for the one before it.
"""
import json
import logging
import pickle
import re
import shutil
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import torch
from accelerate.utils import broadcast_object_list, gather_object
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_model
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

from far.utils.faults import (CheckpointLoadError, CheckpointWriteError, drop_frames, first_line, free_space, size_text,
                              write_cause)
from far.utils.files import find_file
from far.utils.integrity import MANIFEST_FILE, file_problem, folder_problem, has_manifest, read_manifest, write_manifest

logger = logging.getLogger('far')

_NAME = re.compile(r'^checkpoint-(\d+)$')
TMP_PREFIX = '.tmp-'
STATE_FILE = 'trainer_state.json'
EMA_FILE = 'ema.safetensors'
MODEL_FILE = 'model.safetensors'  # written by accelerator.save_state
PRETRAINED_FILES = ('diffusion_pytorch_model.safetensors', 'diffusion_pytorch_model.bin')
STATE_DICT_SUFFIXES = ('.safetensors', '.pth', '.pt', '.bin', '.ckpt')
PACKAGE_KEY = 'model_state_dict'  # a torch.save package holding the weights next to other entries (magvit2_*.pt)
# The autoencoder trainer's network holds the autoencoder's weights under this prefix, next to its discriminator.
AUTOENCODER_PREFIX = 'autoencoder.'
# What writing a checkpoint raises on a full or unwritable disk (torch.save says RuntimeError).
WRITE_ERRORS = (OSError, RuntimeError, SafetensorError)
# What reading a damaged weight or state file raises.
READ_ERRORS = (OSError, RuntimeError, ValueError, EOFError, KeyError, pickle.UnpicklingError, SafetensorError)


def list_checkpoints(folder) -> List[Tuple[int, Path]]:
    """Complete checkpoints in ``folder`` as ``(step, path)``, oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if p.is_dir() and (m := _NAME.match(p.name))]
    return sorted(found)


def latest_checkpoint(folder) -> Optional[Path]:
    found = list_checkpoints(folder)
    return found[-1][1] if found else None


def checkpoint_size(path: Optional[Path]) -> Optional[int]:
    """Bytes of a checkpoint folder (what the next one will need, about); None without one."""
    return None if path is None else sum(p.stat().st_size for p in path.rglob('*') if p.is_file())


def save_checkpoint(accelerator, folder, step: int, ema=None, keep: Optional[int] = None, parallel=None) -> Path:
    """Save the training state on every rank (each writes its RNG state), publish it atomically, prune.

    ``ema`` is the trainer's ``EMA``; ``keep`` the number of checkpoints to keep; ``parallel`` the training's
    strategy (``far.trainers.parallel``), which writes what accelerate's state leaves out (None: DDP's).
    A failed write on any rank stops every rank with :class:`CheckpointWriteError`; the previous
    checkpoints stay as they were.
    """
    folder = Path(folder)
    final, tmp = folder / f'checkpoint-{step}', folder / f'{TMP_PREFIX}checkpoint-{step}'
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)  # left behind by a save that was killed
    accelerator.wait_for_everyone()
    _write_everywhere(accelerator, tmp, lambda: _write_state(accelerator, tmp, step, ema, parallel))
    _write_everywhere(accelerator, tmp, lambda: _publish(accelerator, tmp, final))
    if accelerator.is_main_process:
        for _, old in list_checkpoints(folder)[:-keep] if keep else []:
            shutil.rmtree(old)
        logger.info(f'saved {final}')
    accelerator.wait_for_everyone()
    return final


def _write_state(accelerator, tmp: Path, step: int, ema, parallel):
    accelerator.save_state(str(tmp))
    if parallel is not None:
        parallel.save(tmp)
        if ema is not None:
            parallel.save_module(ema.module, tmp / EMA_FILE)
    elif ema is not None and accelerator.is_main_process:
        save_model(ema.module, str(tmp / EMA_FILE))
    if accelerator.is_main_process:
        state = {'step': step}
        if ema is not None:
            state['ema_updates'] = int(ema.n_averaged)  # fewer than the steps when some were skipped
        (tmp / STATE_FILE).write_text(json.dumps(state))


def _publish(accelerator, tmp: Path, final: Path):
    """The manifest, written once every rank has written its files, then the atomic rename."""
    if accelerator.is_main_process:
        write_manifest(tmp)
        if final.exists():  # the same step saved again: replace it only once the new one is complete
            shutil.rmtree(final)
        tmp.rename(final)


def _write_everywhere(accelerator, tmp: Path, write: Callable[[], None]):
    """Run ``write`` on every rank; when it fails on any, remove ``tmp`` and stop every rank with one line."""
    try:
        write()
        failure = None
    except WRITE_ERRORS as error:
        failure = drop_frames(error)
    failures = [f for f in gather_object([failure]) if f is not None]  # also waits for every rank's files
    if not failures:
        return
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)  # never a partial checkpoint, and the space back
    accelerator.wait_for_everyone()
    raise CheckpointWriteError(write_failure(failures[0], tmp))


def write_failure(error: BaseException, tmp: Path) -> str:
    """The line for a checkpoint that could not be written to ``tmp``: why, the space it needs and has, and
    the checkpoint that is still there."""
    last = latest_checkpoint(tmp.parent)
    needed, free = checkpoint_size(last), free_space(tmp.parent)
    name = tmp.name[len(TMP_PREFIX):]
    space = f'; it needs about {size_text(needed)} (as {last.name}), ' if needed is not None else '; '
    kept = f'the last good checkpoint, {last}, is intact' if last else 'no earlier checkpoint was saved'
    return (f'could not save {name} in {tmp.parent}: {write_cause(error, free=free, needed=needed)}{space}'
            f'{size_text(free)} free there; {kept}: free space or fix the folder\'s permissions, then start the run '
            f'again to resume')


def resume_checkpoint(accelerator, folder) -> Optional[Path]:
    """The newest checkpoint in ``folder`` that passes its manifest check, the same on every rank.

    The main process checks them newest first; one that fails is renamed ``<name>.corrupt-<time>`` (kept for
    inspection, no longer listed) with a warning. One without a manifest, saved by an earlier version of
    this code, is used unchecked, with a note.
    """
    found = _newest_intact(Path(folder)) if accelerator.is_main_process else None
    return broadcast_object_list([found])[0]


def _newest_intact(folder: Path) -> Optional[Path]:
    for _, path in reversed(list_checkpoints(folder)):
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        aside = path.with_name(f'{path.name}.corrupt-{time.strftime("%Y%m%d-%H%M%S")}')
        path.rename(aside)
        logger.warning(f'{path} is damaged ({problem}): moved to {aside.name}; trying the checkpoint before it')
    return None


def checkpoint_problem(path: Path) -> Optional[str]:
    """What makes a checkpoint unusable (None: it passes)."""
    if has_manifest(path):
        return folder_problem(path)
    if not (path / STATE_FILE).is_file():
        return f'{STATE_FILE} and {MANIFEST_FILE} are missing'
    logger.info(f'{path} has no {MANIFEST_FILE} (saved by an earlier version): resuming from it unchecked')
    return None


def load_checkpoint(accelerator, path, ema=None, parallel=None) -> int:
    """Restore a training state saved by :func:`save_checkpoint`; return its step."""
    path = Path(path)
    try:
        return _load_state(accelerator, path, ema, parallel)
    except READ_ERRORS as error:
        raise CheckpointLoadError(f'{path} cannot be loaded ({first_line(error)}): move it aside (for example to '
                                  f'{path.name}.bad) to resume from the checkpoint before it') from error


def _load_state(accelerator, path: Path, ema, parallel) -> int:
    accelerator.load_state(str(path))
    if parallel is not None:
        parallel.load(path)
    state = json.loads((path / STATE_FILE).read_text())
    step = state['step']
    if ema is not None:
        if not (path / EMA_FILE).is_file():
            raise FileNotFoundError(f'{path} has no {EMA_FILE}: it was saved without EMA (trainer.ema_decay: null)')
        if parallel is not None:
            parallel.load_module(ema.module, path / EMA_FILE)
        else:
            load_model(ema.module, str(path / EMA_FILE), device=str(next(ema.parameters()).device))
        ema.n_averaged.fill_(state.get('ema_updates', step))  # older checkpoints: one update per optimiser step
    return step


def read_state_dict(file) -> Dict[str, torch.Tensor]:
    """The tensors of a weight file (of its ``model_state_dict`` when it is a package); ValueError naming the file
    when it is damaged (checked against the manifest of its checkpoint when it has one)."""
    file = Path(file)
    problem = manifest_problem(file)
    if problem is not None:
        raise ValueError(f'{file} is damaged ({problem}): use another checkpoint')
    try:
        if file.suffix == '.safetensors':
            return load_file(str(file))
        state = torch.load(file, map_location='cpu', weights_only=True)
    except READ_ERRORS as error:
        raise ValueError(f'{file} cannot be read, it is damaged or truncated ({first_line(error)})') from None
    if isinstance(state, dict) and isinstance(state.get(PACKAGE_KEY), dict):
        state = state[PACKAGE_KEY]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        keys = ', '.join(list(state)[:5]) if isinstance(state, dict) else type(state).__name__
        raise ValueError(f'{file} is not a plain state dict of tensors (found: {keys})')
    return state


def manifest_problem(file: Path) -> Optional[str]:
    """What is wrong with ``file`` according to the manifest next to it (None: intact, or nothing to check)."""
    if not has_manifest(file.parent):
        return None
    try:
        entry = read_manifest(file.parent).get(file.name)
    except ValueError as error:
        return str(error)
    return None if entry is None else file_problem(file.parent, file.name, entry)


def resolve_weights(source, use_ema: bool = True) -> Path:
    """The weight file behind ``source``: an experiment checkpoint (its EMA weights when ``use_ema``), a
    ``save_pretrained`` folder, or a raw state dict file (.safetensors/.pth/.pt/.bin/.ckpt)."""
    path = Path(source)
    if path.is_dir():
        if (path / STATE_FILE).is_file():
            if use_ema and (path / EMA_FILE).is_file():
                return path / EMA_FILE
            if use_ema:
                logger.warning(f'{path} has no EMA weights (trained with ema_decay: null): using the trained weights')
            return path / MODEL_FILE
        for name in PRETRAINED_FILES:
            if (path / name).is_file():
                return path / name
        raise FileNotFoundError(f'{path} is neither an experiment checkpoint ({STATE_FILE}) nor a save_pretrained '
                                f'folder ({" or ".join(PRETRAINED_FILES)})')
    if path.is_file() and path.suffix in STATE_DICT_SUFFIXES:
        return path
    if path.is_file():
        raise ValueError(f'{path}: unknown weight format; expected one of {", ".join(STATE_DICT_SUFFIXES)} '
                         'or a folder')
    raise FileNotFoundError(f'{path} does not exist')


def load_weights(model: torch.nn.Module, source, use_ema: bool = True) -> Path:
    """Strictly load ``model``'s weights from ``source`` (see :func:`resolve_weights`); return the file used."""
    file = resolve_weights(source, use_ema)
    state = read_state_dict(file)
    consume_prefix_in_state_dict_if_present(state, 'module.')  # saved from a DistributedDataParallel wrapper
    problem = f'{file} does not fit the model built from the YAML `model` block'
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as error:  # shapes differ
        raise ValueError(f'{problem}: {error}') from None
    if result.missing_keys or result.unexpected_keys:
        def show(keys):
            return ', '.join(keys[:5]) + (f' (+{len(keys) - 5} more)' if len(keys) > 5 else '')
        raise ValueError(f'{problem}: missing {show(result.missing_keys) or "none"}; '
                         f'unexpected {show(result.unexpected_keys) or "none"}')
    return file


def read_autoencoder_weights(checkpoint: str, missing: str) -> Tuple[Path, Dict[str, torch.Tensor]]:
    """The weight file and state dict behind an autoencoder block's ``checkpoint``: a state dict file (a released
    package's ``model_state_dict``), a ``save_pretrained`` folder, a checkpoint of the autoencoder trainer (its EMA
    weights) or its ``checkpoints`` folder (the newest one); without the ``module.`` prefix of a
    DistributedDataParallel save and the trainer's ``autoencoder.`` prefix. ``missing`` says how to get one."""
    found = find_file(checkpoint)
    if found is None:
        raise FileNotFoundError(f"autoencoder checkpoint '{checkpoint}' (autoencoder key `checkpoint`) does not "
                                f'exist: {missing}')
    file = resolve_weights(latest_checkpoint(found) or found)
    state = read_state_dict(file)
    consume_prefix_in_state_dict_if_present(state, 'module.')
    if any(key.startswith(AUTOENCODER_PREFIX) for key in state):  # the trainer's network: leave its discriminator
        state = {key[len(AUTOENCODER_PREFIX):]: value for key, value in state.items()
                 if key.startswith(AUTOENCODER_PREFIX)}
    return file, state
