"""Plots: per-frame metrics of an evaluation, and the training curves with the metrics log they are drawn from."""
import json

from PIL import Image

from far.plots import DPI, PANEL, per_frame_figure, save_figure, training_curves_figure
from far.trainers import curves as curves_module
from far.trainers.curves import CURVES_FILE, METRICS_FILE, REDRAW_SECONDS, TrainingCurves, read_metrics


def results(protocol='mcvd', baselines=('copy_last_frame',), categories=()):
    """A results.json of 2 context frames and 3 predicted frames, scored with PSNR and SSIM."""
    per_frame = {'frames': [2, 3, 4]}
    for key in ('metrics', *baselines):
        per_frame[key] = {'psnr': [20.0, 18.0, 17.0], 'ssim': [0.6, 0.5, 0.4]}
        for category in categories:
            per_frame[key].update({f'psnr_{category}': [None, 18.0, 17.0], f'ssim_{category}': [None, 0.5, 0.4]})
    return {'name': 'demo', 'baselines': list(baselines), 'per_frame': per_frame,
            'protocol': {'protocol': protocol, 'metrics': ['mse', 'psnr', 'ssim'], 'context_frames': 2,
                         'num_videos': 8, 'seeds': [0]}}


def legend_texts(figure):
    return [text.get_text() for legend in figure.legends for text in legend.get_texts()]


def test_per_frame_plot_has_a_panel_per_metric_and_a_curve_per_result(tmp_path):
    figure = per_frame_figure(results())
    axes = [ax for ax in figure.axes if ax.get_visible()]
    assert [ax.get_title() for ax in axes] == ['PSNR (dB), higher is better', 'SSIM, higher is better']  # no mse
    assert legend_texts(figure) == ['model', 'copy last frame']
    assert [list(line.get_xdata()) for line in axes[0].get_lines()] == [[2, 3, 4]] * 2
    assert axes[0].get_xlabel() == 'frame (0-1 are the context)'
    save_figure(figure, tmp_path / 'plot.png')
    with Image.open(tmp_path / 'plot.png') as image:
        assert image.size == (round(2 * PANEL[0] * DPI), round(PANEL[1] * DPI))


def test_a_ground_truth_statistic_is_drawn_in_its_metric_panel():
    values = results()
    values['protocol']['metrics'] += ['mean_intensity', 'mean_intensity_gt']
    for key in ('metrics', 'copy_last_frame'):
        values['per_frame'][key].update(mean_intensity=[0.1, 0.08, 0.05], mean_intensity_gt=[0.1, 0.1, 0.1])
    figure = per_frame_figure(values)
    axes = [ax for ax in figure.axes if ax.get_visible()]
    assert axes[-1].get_title() == 'mean intensity, as the ground truth is better' and len(axes) == 3
    assert [list(line.get_ydata()) for line in axes[-1].get_lines()][-1] == [0.1, 0.1, 0.1]
    assert legend_texts(figure) == ['model', 'copy last frame', 'ground truth']


def test_memory_plots_mark_revisits_and_first_visits():
    figure = per_frame_figure(results('memory', ('sliding_window', 'copy_last_frame'), ('revisit', 'first_visit')))
    assert legend_texts(figure) == ['model', 'sliding window', 'copy last frame', 'revisit frames',
                                    'first-visit frames']
    marks = figure.axes[0].collections  # per result, its revisit and first-visit frames
    assert len(marks) == 6 and [len(m.get_offsets()) for m in marks] == [2] * 6


def test_training_curves_have_a_panel_per_logged_value():
    series = {'val/psnr': [(10, 15.0), (20, 16.0)], 'train/lr': [(5, 1e-3), (10, 5e-4)],
              'train/loss': [(5, 1.0), (10, 0.5)], 'train/grad_norm': [(5, 2.0), (10, 1.0)],
              'train/loss_rec': [(5, 0.3), (10, 0.2)]}
    figure = training_curves_figure(series, title='run')
    titles = [ax.get_title() for ax in figure.axes if ax.get_visible()]
    assert titles == ['training loss', 'loss rec', 'learning rate', 'gradient norm', 'validation psnr']
    assert figure.get_suptitle() == 'run' and len(figure.axes) == 6  # 2 rows of 3, the last one hidden


def test_the_metrics_log_survives_a_resume_and_a_cut_line(tmp_path, monkeypatch):
    drawn = []
    monkeypatch.setattr(TrainingCurves, 'draw', lambda self: drawn.append(self.series()))
    first = TrainingCurves(tmp_path)
    for step in (5, 10, 15):
        first.record(step, {'train/loss': 1.0 / step})
    assert len(drawn) == 1  # later log steps wait for REDRAW_SECONDS
    first.record(15, {'val/psnr': 12.0}, redraw=True)
    assert len(drawn) == 2
    with (tmp_path / METRICS_FILE).open('a') as file:
        file.write('{"step": 20, "train/lo')  # killed while writing step 20

    # resumed from the checkpoint of step 10: steps 15 and 20 are logged again
    resumed = TrainingCurves(tmp_path)
    resumed.record(15, {'train/loss': 0.5})
    resumed.record(20, {'train/loss': 0.25})
    expected = {'train/loss': [(5, 0.2), (10, 0.1), (15, 0.5), (20, 0.25)], 'val/psnr': [(15, 12.0)]}
    assert resumed.series() == expected
    assert {name: sorted(values.items()) for name, values in read_metrics(tmp_path / METRICS_FILE).items()} == expected
    lines = (tmp_path / METRICS_FILE).read_text().splitlines()
    assert json.loads(lines[-1]) == {'step': 20, 'train/loss': 0.25}


def test_the_curves_are_redrawn_when_the_last_drawing_is_old(tmp_path, monkeypatch):
    now = [0.0]
    monkeypatch.setattr(curves_module.time, 'monotonic', lambda: now[0])
    log = TrainingCurves(tmp_path)
    log.record(1, {'train/loss': 1.0})  # the first drawing
    (tmp_path / CURVES_FILE).unlink()
    now[0] = REDRAW_SECONDS / 2
    log.record(2, {'train/loss': 0.5})
    assert not (tmp_path / CURVES_FILE).exists()
    now[0] = REDRAW_SECONDS
    log.record(3, {'train/loss': 0.4})
    with Image.open(tmp_path / CURVES_FILE) as image:
        assert image.size == (round(PANEL[0] * DPI), round(PANEL[1] * DPI))
