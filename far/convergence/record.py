"""A study's record, ``points.json``: what each experiment's training cost and every evaluated point, each with
the key of the options it was computed with, so that a study started again skips what is done. Rewritten whole
after every change through a temporary file and a rename: a kill never leaves half a record."""
import json
import os
from pathlib import Path
from typing import Optional, Set


class StudyRecord:

    def __init__(self, path: Path):
        self.path = Path(path)
        self.data = json.loads(self.path.read_text()) if self.path.is_file() else {}
        self.data.setdefault('contenders', {})   # label -> parameters, FLOPs, key of what was measured
        self.data.setdefault('trainings', {})    # experiment name -> key of its options, wall and CPU seconds
        self.data.setdefault('points', [])       # one entry per (contender, evaluation, step)

    def contender(self, label: str, key: str) -> Optional[dict]:
        entry = self.data['contenders'].get(label)
        return entry if entry is not None and entry['key'] == key else None

    def training(self, name: str, key: str) -> Optional[dict]:
        entry = self.data['trainings'].get(name)
        return entry if entry is not None and entry['key'] == key else None

    def point(self, label: str, evaluation: str, step: int, key: str) -> Optional[dict]:
        return next((p for p in self.data['points'] if (p['contender'], p['evaluation'], p['step'], p['key'])
                     == (label, evaluation, step, key)), None)

    def points(self, label: str, evaluation: str) -> list:
        return sorted((p for p in self.data['points'] if (p['contender'], p['evaluation']) == (label, evaluation)),
                      key=lambda p: p['step'])

    def set_contender(self, label: str, entry: dict):
        self.data['contenders'][label] = entry
        self.save()

    def begin_training(self, name: str, key: str) -> bool:
        """Note that ``name`` trains with options ``key`` (before its launch, so that a killed launch resumes);
        return whether it was trained before with other options, whose run must then make way for a new one."""
        replaced = name in self.data['trainings'] and self.training(name, key) is None
        if replaced or name not in self.data['trainings']:
            self.data['trainings'][name] = {'key': key, 'seconds': 0.0, 'cpu_seconds': 0.0, 'done': False}
            self.save()
        return replaced

    def add_training_time(self, name: str, seconds: float, cpu_seconds: float, done: bool):
        """Add one train.py launch's wall and CPU seconds to the experiment's."""
        entry = self.data['trainings'][name]
        entry.update(seconds=entry['seconds'] + seconds, cpu_seconds=entry['cpu_seconds'] + cpu_seconds, done=done)
        self.save()

    def add_point(self, point: dict):
        """Record ``point``, replacing an entry of the same contender, evaluation and step (older options)."""
        same = (point['contender'], point['evaluation'], point['step'])
        self.data['points'] = [p for p in self.data['points']
                               if (p['contender'], p['evaluation'], p['step']) != same] + [point]
        self.save()

    def drop_stale_points(self, label: str, keys: Set[str]):
        """Forget the points of ``label`` scored with options other than ``keys`` (the study's current ones)."""
        kept = [p for p in self.data['points'] if p['contender'] != label or p['key'] in keys]
        if len(kept) != len(self.data['points']):
            self.data['points'] = kept
            self.save()

    def save(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(f'.{self.path.name}.tmp')
        temporary.write_text(json.dumps(self.data, indent=1))
        os.replace(temporary, self.path)
