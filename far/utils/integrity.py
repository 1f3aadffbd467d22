"""File integrity: a folder's manifest (size and sha256 of each file) and the checks against it.

A checkpoint writes its manifest last, before it is published, so a file that was truncated, garbled
or lost afterwards is found before anything is loaded from it.
"""
import hashlib
import json
import os
from pathlib import Path
from typing import Dict, Optional

MANIFEST_FILE = 'manifest.json'
_CHUNK = 1 << 22  # bytes read at a time while hashing


def file_sha256(path: Path, *, flush: bool = False) -> str:
    """The file's sha256; ``flush`` also forces its data to disk (a power cut then cannot undo it)."""
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(_CHUNK), b''):
            digest.update(chunk)
        if flush:
            os.fsync(f.fileno())
    return digest.hexdigest()


def write_manifest(folder: Path) -> Dict[str, dict]:
    """Record the size and sha256 of every file under ``folder`` in ``folder/manifest.json``; return the entries."""
    files = sorted(p for p in folder.rglob('*') if p.is_file() and p.name != MANIFEST_FILE)
    entries = {p.relative_to(folder).as_posix(): {'size': p.stat().st_size, 'sha256': file_sha256(p, flush=True)}
               for p in files}
    (folder / MANIFEST_FILE).write_text(json.dumps({'files': entries}, indent=1))
    return entries


def has_manifest(folder: Path) -> bool:
    return (folder / MANIFEST_FILE).is_file()


def read_manifest(folder: Path) -> Dict[str, dict]:
    """The manifest's entries; ValueError when it cannot be read."""
    try:
        return json.loads((folder / MANIFEST_FILE).read_text())['files']
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f'{MANIFEST_FILE} is unreadable ({type(error).__name__}: {error})') from None


def file_problem(folder: Path, name: str, entry: dict) -> Optional[str]:
    """What is wrong with ``folder/name`` against its manifest ``entry`` (None: intact)."""
    path = folder / name
    if not path.is_file():
        return f'{name} is missing'
    size = path.stat().st_size
    if size != entry['size']:
        return f'{name} has {size} bytes, the manifest says {entry["size"]}'
    if file_sha256(path) != entry['sha256']:
        return f'{name} does not match its sha256 in the manifest'
    return None


def folder_problem(folder: Path) -> Optional[str]:
    """The first thing wrong with ``folder`` against its manifest (None: every file intact)."""
    try:
        entries = read_manifest(folder)
    except ValueError as error:
        return str(error)
    return next(filter(None, (file_problem(folder, name, entry) for name, entry in entries.items())), None)
