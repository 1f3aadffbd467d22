"""A study's report from its record: ``report.md`` (the contenders' size and cost, each plotted metric at every
evaluated step, the roll-outs' scores per bucket of frames) and ``convergence.png`` (each metric against training
FLOPs, one line per contender, and the roll-outs' PSNR along the predicted frames)."""
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from far.convergence.options import CONVERGENCE, StudyOptions
from far.convergence.record import StudyRecord
from far.convergence.runs import Evaluation, PreparedRun
from far.metrics.scores import BUCKETS

BASELINE = 'copy_last_frame'
ROLLOUT_METRIC = 'psnr'  # what the roll-out panel and table show


def buckets(metrics: dict, metric: str) -> List[Tuple[int, int, float]]:
    """``(first, last, value)`` of ``metric`` in every bucket of frames of ``metrics`` (``far.metrics.scores``)."""
    return [(*bucket['frames'], bucket[metric]) for bucket in metrics.get(BUCKETS, []) if metric in bucket]


def _row(cells: Sequence) -> str:
    return '| ' + ' | '.join(str(cell) for cell in cells) + ' |'


def _table(header: Sequence, rows: Sequence[Sequence]) -> List[str]:
    return [_row(header), _row(['---'] * len(header)), *(_row(row) for row in rows)]


def _value(value) -> str:
    return '' if value is None else f'{value:.4g}'


def _minutes(seconds: float) -> str:
    return f'{int(seconds // 60)}:{round(seconds % 60):02d}'


def markdown(record: StudyRecord, study: StudyOptions, runs: Sequence[PreparedRun],
             evaluations: Sequence[Evaluation]) -> str:
    budget = study.training
    lines = [f'# Convergence study `{study.name}`', '',
             f'Every contender: {budget.total_steps} steps of {budget.batch_size} clips per process x '
             f'{budget.processes} process(es); scored every {budget.evaluate_every} steps, and rolled out at the last '
             f'step. Training FLOPs are counted on one step (forward and backward).', '']
    notes = [f'* {e.note} ({e.name})' for e in evaluations if e.note]
    lines += notes + [''] * bool(notes)
    rows = []
    for run in runs:
        cost = record.data['contenders'].get(run.label, {})
        training = record.training(run.options.name, run.training_key) or {}
        flops = cost.get('flops_per_step')
        rows.append([run.label, f"{cost.get('parameters', 0):,}", _value(flops),
                     _value(flops and flops * budget.total_steps), _minutes(training.get('seconds', 0)),
                     _minutes(training.get('cpu_seconds', 0)), run.file])
    header = ['contender', 'trained parameters', 'training FLOPs per step', 'training FLOPs', 'training wall time',
              'training CPU time', 'experiment']
    lines += _table(header, rows) + ['']
    for metric in study.evaluation.metrics:
        lines += [f'## {metric} at each evaluated step', '']
        lines += _table(['contender', *budget.steps()], _metric_rows(record, runs, metric, budget.steps())) + ['']
    lines += _rollout_section(record, runs, evaluations)
    return '\n'.join(lines)


def _metric_rows(record: StudyRecord, runs: Sequence[PreparedRun], metric: str, steps: Sequence[int]) -> List[list]:
    """One row per contender with ``metric`` at each of ``steps`` (blank where not scored yet), and the baseline's."""
    rows, baseline = [], None
    for run in runs:
        points = {p['step']: p for p in record.points(run.label, CONVERGENCE)}
        rows.append([run.label, *(_value(points[s]['metrics'].get(metric)) if s in points else '' for s in steps)])
        baseline = next((p['baselines'][BASELINE].get(metric) for p in points.values() if BASELINE in p['baselines']),
                        baseline)
    if baseline is not None:
        rows.append(['copying the last context frame', *([_value(baseline)] * len(steps))])
    return rows


def _final_points(record: StudyRecord, run: PreparedRun, evaluations: Sequence[Evaluation]) -> Dict[str, dict]:
    """Each evaluation's point at the last step of ``run``'s training (when scored)."""
    last = run.options.trainer['total_steps']
    return {e.name: p for e in evaluations for p in record.points(run.label, e.name) if p['step'] == last}


def _longest(points: Dict[str, dict]) -> Optional[Tuple[str, dict]]:
    """The ``(evaluation, point)`` of ``points`` with the most buckets of frames (the longest roll-out), if any."""
    ranked = [(len(buckets(point['metrics'], ROLLOUT_METRIC)), name, point) for name, point in points.items()]
    count, name, point = max(ranked, default=(0, None, None), key=lambda entry: entry[0])
    return (name, point) if count else None


def _rollout_section(record: StudyRecord, runs: Sequence[PreparedRun], evaluations: Sequence[Evaluation]) -> List[str]:
    rows, longest = [], None
    for run in runs:
        points = _final_points(record, run, evaluations)
        for name, point in points.items():
            scored = buckets(point['metrics'], ROLLOUT_METRIC)
            if scored:
                rows.append([run.label, name, *(_value(v) for _, _, v in scored)])
        longest = longest or _longest(points)
    if longest is None:
        return []
    name, point = longest
    scored = buckets(point['baselines'].get(BASELINE, {}), ROLLOUT_METRIC)
    if scored:
        rows.append(['copying the last context frame', name, *(_value(v) for _, _, v in scored)])
    header = ['contender', 'evaluation', *(f'frames {first}-{last}'
                                         for first, last, _ in buckets(point['metrics'], ROLLOUT_METRIC))]
    return [f'## Length generalisation: {ROLLOUT_METRIC} per bucket of predicted frames (final weights)', '',
            *_table(header, [row + [''] * (len(header) - len(row)) for row in rows]), '']


def plot(record: StudyRecord, study: StudyOptions, runs: Sequence[PreparedRun], evaluations: Sequence[Evaluation],
         path: Path) -> Path:
    import matplotlib
    matplotlib.use('Agg')  # files only, no display
    import matplotlib.pyplot as plt

    metrics = list(study.evaluation.metrics)
    figure, axes = plt.subplots(1, len(metrics) + 1, figsize=(5 * (len(metrics) + 1), 4), squeeze=False)
    for axis, metric in zip(axes[0], metrics):
        for run in runs:
            points = record.points(run.label, CONVERGENCE)
            if points:
                axis.plot([p['training_flops'] for p in points], [p['metrics'].get(metric) for p in points],
                          marker='o', label=run.label)
        baselines = [p['baselines'][BASELINE][metric] for run in runs for p in record.points(run.label, CONVERGENCE)
                     if metric in p['baselines'].get(BASELINE, {})]
        if baselines:
            axis.axhline(baselines[0], color='grey', linestyle='--', label='copy last frame')
        axis.set(xlabel='training FLOPs', ylabel=metric, title=f'{metric} on held-out clips')
        axis.legend()
    _plot_rollouts(axes[0][-1], record, runs, evaluations)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def _plot_rollouts(axis, record: StudyRecord, runs: Sequence[PreparedRun], evaluations: Sequence[Evaluation]):
    """Each contender's longest roll-out, and copying the last context frame on the same clips."""
    baseline = None
    for run in runs:
        longest = _longest(_final_points(record, run, evaluations))
        if longest is not None:
            name, point = longest
            scored = buckets(point['metrics'], ROLLOUT_METRIC)
            axis.plot([(first + last) / 2 for first, last, _ in scored], [v for _, _, v in scored], marker='.',
                      label=f'{run.label} ({name})')
            baseline = baseline or buckets(point['baselines'].get(BASELINE, {}), ROLLOUT_METRIC)
    if baseline:
        axis.plot([(first + last) / 2 for first, last, _ in baseline], [v for _, _, v in baseline], color='grey',
                  linestyle='--', label='copy last frame')
    axis.set(xlabel='frame index', ylabel=ROLLOUT_METRIC, title=f'{ROLLOUT_METRIC} along the roll-out (final weights)')
    axis.legend()


def write_report(record: StudyRecord, study: StudyOptions, runs: Sequence[PreparedRun],
                 evaluations: Sequence[Evaluation], folder: Path) -> Tuple[Path, Path]:
    report = folder / 'report.md'
    report.write_text(markdown(record, study, runs, evaluations) + '\n')
    return report, plot(record, study, runs, evaluations, folder / 'convergence.png')
