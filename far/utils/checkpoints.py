"""Training checkpoints (atomic save, pruning, resume) and loading model weights from any saved form.

A checkpoint is ``checkpoints/checkpoint-<step>/``: accelerate's state (model, optimizer, lr schedule,
RNG states of every rank), ``ema.safetensors`` (the EMA model) and ``trainer_state.json``. It is written
under a hidden temporary name and renamed when complete, so a run killed while saving never leaves a
``checkpoint-<step>`` that cannot be resumed from.
"""
import json
import logging
import re
import shutil
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch
from safetensors.torch import load_file, load_model, save_model
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

logger = logging.getLogger('far')

_NAME = re.compile(r'^checkpoint-(\d+)$')
TMP_PREFIX = '.tmp-'
STATE_FILE = 'trainer_state.json'
EMA_FILE = 'ema.safetensors'
MODEL_FILE = 'model.safetensors'  # written by accelerator.save_state
PRETRAINED_FILES = ('diffusion_pytorch_model.safetensors', 'diffusion_pytorch_model.bin')
STATE_DICT_SUFFIXES = ('.safetensors', '.pth', '.pt', '.bin', '.ckpt')


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


def save_checkpoint(accelerator, folder, step: int, ema=None, keep: Optional[int] = None) -> Path:
    """Save the training state on every rank (each writes its RNG state), publish it atomically, prune.

    ``ema`` is a ``torch.optim.swa_utils.AveragedModel``; ``keep`` the number of checkpoints to keep.
    """
    folder = Path(folder)
    final, tmp = folder / f'checkpoint-{step}', folder / f'{TMP_PREFIX}checkpoint-{step}'
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)  # left behind by a save that was killed
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    if accelerator.is_main_process:
        if ema is not None:
            save_model(ema.module, str(tmp / EMA_FILE))
        (tmp / STATE_FILE).write_text(json.dumps({'step': step}))
        if final.exists():  # the same step saved again: replace it only once the new one is complete
            shutil.rmtree(final)
        tmp.rename(final)
        for _, old in list_checkpoints(folder)[:-keep] if keep else []:
            shutil.rmtree(old)
        logger.info(f'saved {final}')
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator, path, ema=None) -> int:
    """Restore a training state saved by :func:`save_checkpoint`; return its step."""
    path = Path(path)
    accelerator.load_state(str(path))
    step = json.loads((path / STATE_FILE).read_text())['step']
    if ema is not None:
        if not (path / EMA_FILE).is_file():
            raise FileNotFoundError(f'{path} has no {EMA_FILE}: it was saved without EMA (trainer.ema_decay: null)')
        load_model(ema.module, str(path / EMA_FILE), device=str(next(ema.parameters()).device))
        ema.n_averaged.fill_(step)  # one EMA update per optimiser step
    return step


def read_state_dict(file) -> Dict[str, torch.Tensor]:
    file = Path(file)
    if file.suffix == '.safetensors':
        return load_file(str(file))
    state = torch.load(file, map_location='cpu', weights_only=True)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        keys = ', '.join(list(state)[:5]) if isinstance(state, dict) else type(state).__name__
        raise ValueError(f'{file} is not a plain state dict of tensors (found: {keys})')
    return state


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
