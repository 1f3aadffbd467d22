"""The experiment folder ``experiments/<name>/``: resolved options, log, checkpoints, samples.

Starting a run whose folder exists resumes it when the resolved options are the same (the `test`
section aside, and the settings that do not alter the steps already taken: the step budget, logging,
checkpointing, validation), and stops otherwise: an earlier run is never overwritten. ``force_new`` archives the old
folder under a timestamped name (never deletes it) and starts afresh.
"""
import time
from pathlib import Path
from typing import Iterator, List, Tuple

import yaml

OPTIONS_FILE = 'options.yml'
IGNORED = ('test',)  # test.py settings: changing them does not change the training run
# Settings a resumed run may change: none alters the steps already taken (every step's randomness is a
# function of the seed and the step, and logging, checkpointing and validation draw none of it).
RESUMABLE = ('trainer.total_steps', 'trainer.log.', 'trainer.checkpoint.', 'trainer.validation')


class ExperimentExists(RuntimeError):
    """The experiment folder holds a run with different options."""


def _flatten(node, prefix: str = '') -> Iterator[Tuple[str, object]]:
    if isinstance(node, dict) and node:
        for key, value in node.items():
            yield from _flatten(value, f'{prefix}.{key}' if prefix else str(key))
    else:
        yield prefix, node


def option_differences(old: dict, new: dict) -> List[Tuple[str, str]]:
    """``(key, 'key: old -> new')`` for every leaf that differs."""
    old, new = dict(_flatten(old)), dict(_flatten(new))
    missing = '<absent>'
    return [(key, f'{key}: {old.get(key, missing)!r} -> {new.get(key, missing)!r}')
            for key in sorted(old.keys() | new.keys()) if old.get(key, missing) != new.get(key, missing)]


def resumable(key: str) -> bool:
    return key.startswith(RESUMABLE)


def prepare_experiment_dir(root, name: str, options: dict, force_new: bool, accelerator) -> Tuple[Path, List[str]]:
    """Create or reuse ``root/name`` for a training run with resolved ``options``; return the folder and the
    settings changed since the run was started (``RESUMABLE`` ones, e.g. a larger ``trainer.total_steps``).

    Other changes stop the run. The options are not recorded yet (``record_options`` does it once the run's parts
    are built), so a run that fails before its first step does not block a rerun with corrected options. Every
    rank makes the same decision from what is on disk before the main process changes anything, so a refusal
    stops all ranks instead of leaving some waiting.
    """
    folder = Path(root) / name
    saved_file = folder / OPTIONS_FILE
    archive, changes = None, []
    if folder.exists() and force_new:
        archive = folder.with_name(f'{name}_archived_{time.strftime("%Y%m%d_%H%M%S")}')
    elif saved_file.is_file():
        saved = yaml.safe_load(saved_file.read_text())
        options = yaml.safe_load(yaml.safe_dump(options))  # compare what a YAML round trip keeps
        differences = option_differences(*({k: v for k, v in o.items() if k not in IGNORED} for o in (saved, options)))
        refused = [text for key, text in differences if not resumable(key)]
        if refused:
            shown = '\n  '.join(refused[:20]) + ('\n  ...' if len(refused) > 20 else '')
            raise ExperimentExists(
                f'{folder} holds a run with other options (saved -> now):\n  {shown}\n'
                f'Use another `name`, restore the options to resume that run, or pass --force-new to archive '
                f'it (renamed with a timestamp) and start a new one. (A resumed run may change '
                f'{", ".join(k.rstrip(".") for k in RESUMABLE)}.)')
        changes = [text for _, text in differences]
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if archive is not None:
            folder.rename(archive)
        folder.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    return folder, changes


def record_options(folder: Path, options: dict, changed: bool, accelerator):
    """Write ``options`` into ``folder`` as the run's own; when ``changed``, the previous file is kept as
    ``options.<time>.yml``."""
    saved_file = folder / OPTIONS_FILE
    if accelerator.is_main_process:
        if changed:
            saved_file.rename(folder / f'options.{time.strftime("%Y%m%d_%H%M%S")}.yml')
        saved_file.write_text(yaml.safe_dump(options))
    accelerator.wait_for_everyone()
