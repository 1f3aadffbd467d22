"""Line plots of metrics, drawn with matplotlib's headless Agg canvas: the per-frame metrics of an evaluation
(``results.json``'s ``per_frame``) and the training curves of a run (``metrics.jsonl``).

matplotlib is imported by the functions that draw: importing this module loads nothing heavy.
Each ``*_figure`` function returns the figure before it is saved, so its titles and legends can be read.
"""
from pathlib import Path
from typing import Dict, List, Mapping, Sequence, Tuple

DPI = 100
PANEL = (4.2, 3.2)  # inches per panel
CURVE_COLUMNS = 3   # training-curve panels per row
METRIC_TITLES = {'psnr': 'PSNR (dB), higher is better', 'ssim': 'SSIM, higher is better',
                 'lpips': 'LPIPS, lower is better', 'mse': 'MSE, lower is better',
                 'mean_intensity': 'mean intensity, as the ground truth is better'}
GROUND_TRUTH_SUFFIX = '_gt'  # `<metric>_gt`: the ground truth's value of `<metric>`, drawn in its panel
CATEGORY_MARKERS = {'revisit': ('o', 'revisit frames'), 'first_visit': ('x', 'first-visit frames')}
SERIES_TITLES = {'train/loss': 'training loss', 'train/lr': 'learning rate', 'train/grad_norm': 'gradient norm'}


def _figure(rows: int, columns: int):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(PANEL[0] * columns, PANEL[1] * rows), dpi=DPI, layout='constrained')
    FigureCanvasAgg(figure)  # headless: no display, no pyplot state
    return figure


def _style(ax):
    """Whole numbers on the x axis (frames, steps) and a light grid."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)


def save_figure(figure, path) -> Path:
    """``figure`` as a PNG at ``path``, written whole or not at all (a reader never sees half a file)."""
    path = Path(path)
    partial = path.with_name(f'.{path.name}.partial')
    figure.savefig(partial, format='png', dpi=DPI)
    partial.replace(path)
    return path


# ----------------------------------------------------------------------------------------------------------
# Per-frame metrics of an evaluation
# ----------------------------------------------------------------------------------------------------------

def per_frame_figure(results: dict):
    """One panel per frame metric of ``results`` (test.py's results.json): the model and each baseline against
    the predicted frame's index, and the ground truth where a ``<metric>_gt`` gives its value; the memory protocol's
    revisit and first-visit frames marked on each curve."""
    from far.evaluation import row_label

    per_frame, protocol = results['per_frame'], results['protocol']
    scored = [m for m in protocol['metrics'] if m in per_frame['metrics']]
    truths = {m for m in scored if m.endswith(GROUND_TRUTH_SUFFIX) and m.removesuffix(GROUND_TRUTH_SUFFIX) in scored}
    metrics = [m for m in scored if m not in truths]
    figure = _figure(1, max(len(metrics), 2))  # room for the legend and the title under one panel too
    axes = figure.subplots(1, len(metrics), squeeze=False)[0]
    marked = set()
    for ax, metric in zip(axes, metrics):
        for key in ('metrics', *results['baselines']):
            marked |= _draw_curve(ax, per_frame['frames'], per_frame[key], metric,
                                  row_label('' if key == 'metrics' else key))
        if metric + GROUND_TRUTH_SUFFIX in truths:
            ax.plot(per_frame['frames'], per_frame['metrics'][metric + GROUND_TRUTH_SUFFIX], color='black',
                    linestyle='--', label='ground truth')
        ax.set_title(METRIC_TITLES.get(metric, metric))
        ax.set_xlabel(f'frame (0-{protocol["context_frames"] - 1} are the context)'
                      if protocol['context_frames'] else 'generated frame')
        _style(ax)
    curves = {label: handle for ax in axes for handle, label in zip(*ax.get_legend_handles_labels())}
    handles = list(curves.values()) + _category_keys(marked)
    figure.legend(handles=handles, loc='outside lower center', ncols=min(len(handles), 2 * max(len(metrics), 2)))
    figure.suptitle(f'{results["name"]}: {protocol["protocol"]} protocol, {protocol["num_videos"] or "all"} videos, '
                    f'seeds {protocol["seeds"]}')
    return figure


def _draw_curve(ax, frames: Sequence[int], curves: Mapping[str, list], metric: str, label: str) -> set:
    """The curve of ``metric``, its frames of each category marked (at the category's mean there); returns the
    categories marked."""
    (line,) = ax.plot(frames, curves[metric], marker='.' if len(frames) <= 64 else None, label=label)
    marked = set()
    for category, (symbol, _) in CATEGORY_MARKERS.items():
        points = [(f, v) for f, v in zip(frames, curves.get(f'{metric}_{category}', ())) if v is not None]
        if points:
            ax.scatter(*zip(*points), marker=symbol, s=40, color=line.get_color(),
                       facecolors='none' if symbol == 'o' else None)
            marked.add(category)
    return marked


def _category_keys(categories: set) -> list:
    """Legend entries for the marked categories (grey: the marks take each curve's colour)."""
    from matplotlib.lines import Line2D

    return [Line2D([], [], marker=symbol, linestyle='', color='grey', markerfacecolor='none', label=name)
            for category, (symbol, name) in CATEGORY_MARKERS.items() if category in categories]


def write_per_frame_plot(results: dict, path) -> Path:
    return save_figure(per_frame_figure(results), path)


# ----------------------------------------------------------------------------------------------------------
# Training curves
# ----------------------------------------------------------------------------------------------------------

def _series_order(names: Sequence[str]) -> List[str]:
    """The loss first, then the other training values, learning rate and gradient norm, then validation."""
    rank = {'train/loss': 0, 'train/lr': 2, 'train/grad_norm': 3}
    return sorted(names, key=lambda n: (rank.get(n, 1 if n.startswith('train/') else 4), n))


def _series_title(name: str) -> str:
    group, _, value = name.partition('/')
    return SERIES_TITLES.get(name, f'validation {value}' if group == 'val' else value.replace('_', ' '))


def training_curves_figure(series: Mapping[str, Sequence[Tuple[int, float]]], *, title: str):
    """One panel per logged value (``{name: [(step, value), ...]}``, e.g. ``train/loss``, ``val/psnr``) against
    the training step."""
    names = _series_order(list(series))
    rows = -(-len(names) // CURVE_COLUMNS)
    columns = min(len(names), CURVE_COLUMNS)
    figure = _figure(rows, columns)
    axes = figure.subplots(rows, columns, squeeze=False).flatten()
    for ax, name in zip(axes, names):
        steps, values = zip(*series[name])
        ax.plot(steps, values, marker='o' if name.startswith('val/') else None, markersize=4)
        ax.set_title(_series_title(name))
        ax.set_xlabel('step')
        _style(ax)
    for ax in axes[len(names):]:
        ax.set_visible(False)
    figure.suptitle(title)
    return figure


def write_training_curves(series: Dict[str, list], path, *, title: str) -> Path:
    return save_figure(training_curves_figure(series, title=title), path)
