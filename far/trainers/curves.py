"""The record of a training run, kept in its experiment folder so that the run can be judged without wandb.

``metrics.jsonl`` holds one JSON object per log or validation step, ``{"step": 25, "train/loss": 0.41, ...}``,
appended by the main process; ``training_curves.png`` is drawn from it (``far.plots``). A resumed run reads the
file back and appends to it: a step logged again (after a resume from an earlier checkpoint) keeps its newest
values, and a line cut short by a kill is skipped.

Drawing takes about a second on a busy CPU, so the picture is redrawn at a log step only when the last drawing
is ``REDRAW_SECONDS`` old, and always at a validation and at the last step.
"""
import json
import time
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Tuple

METRICS_FILE = 'metrics.jsonl'
CURVES_FILE = 'training_curves.png'
REDRAW_SECONDS = 30.0


def read_metrics(path: Path) -> Dict[str, Dict[int, float]]:
    """``{name: {step: value}}`` of a metrics file (empty when there is none), newest value per step."""
    series: Dict[str, Dict[int, float]] = {}
    lines = path.read_text().splitlines() if path.is_file() else []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # the last line of a killed run
            continue
        step = record.pop('step')
        for name, value in record.items():
            series.setdefault(name, {})[step] = value
    return series


class TrainingCurves:
    """``metrics.jsonl`` and ``training_curves.png`` of the experiment folder ``folder`` (main process only)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self._series: Optional[Dict[str, Dict[int, float]]] = None
        self._drawn_at = float('-inf')

    def record(self, step: int, values: Mapping[str, float], *, redraw: bool = False):
        """Append ``values`` logged at ``step``; redraw the curves when ``redraw`` or when the drawing is old."""
        path = self.folder / METRICS_FILE
        if self._series is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._series = read_metrics(path)
            self._end_cut_line(path)
        with path.open('a') as file:
            file.write(json.dumps({'step': step, **values}) + '\n')
        for name, value in values.items():
            self._series.setdefault(name, {})[step] = value
        if redraw or time.monotonic() - self._drawn_at >= REDRAW_SECONDS:
            self.draw()
            self._drawn_at = time.monotonic()

    def series(self) -> Dict[str, List[Tuple[int, float]]]:
        """``{name: [(step, value), ...]}`` in step order."""
        return {name: sorted(values.items()) for name, values in (self._series or {}).items()}

    def draw(self):
        from far.plots import write_training_curves

        write_training_curves(self.series(), self.folder / CURVES_FILE, title=self.folder.name)

    @staticmethod
    def _end_cut_line(path: Path):
        """Close a line a kill left unfinished, so that the next record starts on a line of its own."""
        if path.is_file() and path.stat().st_size and not path.read_bytes().endswith(b'\n'):
            with path.open('a') as file:
                file.write('\n')
