"""scripts/gpu_check.py at tiny size on a CPU: every workload's figures, a run cut short, a reference that crashes."""
import json
import os
import subprocess
import sys
import time

import pytest

REQUIRED = ('steady_s', 'compile_s', 'graphs_after_warm_up', 'cudagraph_skips', 'peak_memory_gb')


def check_command(scripts, *args):
    return [sys.executable, str(scripts.repo / 'scripts' / 'gpu_check.py'), '--size', 'tiny', '--device', 'cpu',
            '--compile-backend', 'aot_eager', *args]


def run_check(scripts, cwd, *args) -> subprocess.CompletedProcess:
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'TMPDIR': str(cwd)}
    done = subprocess.run(check_command(scripts, *args), cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


@pytest.mark.slow
def test_a_tiny_run_reports_every_workloads_figures(scripts, tmp_path):
    done = run_check(scripts, tmp_path, '--peak-tflops', '0.001')
    written = list((tmp_path / 'experiments' / 'gpu_check').glob('*_tiny_cpu.json'))
    assert len(written) == 1  # the default place, under experiments/
    report = json.loads(written[0].read_text())
    assert report['complete'] and report['pending'] == [] and report['errors'] == {}
    assert report['workloads'] == ['train', 'generate', 'long', 'demo']
    assert report['environment']['peak_tflops'] == 0.001
    assert 'untrained' in done.stdout and 'meaningless on a CPU' in done.stdout
    for name in report['workloads']:
        result = report[name]
        assert set(REQUIRED) <= set(result), name
        assert result['steady_s'] > 0 and result['compile_s'] >= 0 and result['peak_memory_gb'] is None, name
        assert result['graphs_after_warm_up'] == 0 and result['cudagraph_skips'] == 0, name
        assert f'| {name} |' in done.stdout

    train = report['train']
    assert train['graphs_in_warm_up'] >= 1 and train['eager']['graphs_in_warm_up'] == 0  # the block compiled once
    assert train['flops_per_step'] > 0 and train['tflops'] == pytest.approx(
        train['flops_per_step'] / train['steady_s'] / 1e12, rel=1e-3)
    assert train['mfu'] == pytest.approx(train['tflops'] / 0.001, rel=1e-3)
    # AdamW (not fused on a CPU) reads its step counters; the model and loss wait on nothing
    assert train['host_syncs']['data_dependent'] == 0 and train['host_syncs']['to_host'] == 0
    assert train['host_syncs_per_step'] == train['host_syncs']['total']
    assert len(train['losses']) == 4 and train['losses'][-1] < train['losses'][0]
    assert train['loss_max_abs_diff_to_eager'] <= 1e-4 * abs(train['losses'][0])
    assert train['target'] == {'target': 'reference step / ours >= 2.5 (goal 3)', 'met': None}

    generate, long, demo = report['generate'], report['long'], report['demo']
    assert generate['max_relative_diff_to_eager'] < 1e-4 and generate['graphs_for_other_shapes'] == 0
    assert generate['execution'] == 'eager' and len(generate['runs_s']) == 3
    assert long['setup']['frames'] == 12 and long['target']['target'] == '<= 20 s'
    assert 0 < demo['psnr'] < 100 and demo['train_s'] > 0


def fake_reference(root):
    """An export of the reference whose model module cannot be imported."""
    for file in ('models/far_model.py', 'models/far_long_model.py', 'pipelines/pipeline_far.py', 'utils/registry.py'):
        path = root / 'far' / file
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("raise ImportError('broken on purpose')\n" if file == 'models/far_model.py' else '')
    return root


@pytest.mark.slow
def test_a_crashing_reference_is_recorded_and_our_figures_kept(scripts, tmp_path):
    out = tmp_path / 'check.json'
    export = fake_reference(tmp_path / 'ref')
    done = run_check(scripts, tmp_path, '--workloads', 'long', '--reference-path', str(export), '--out', str(out))
    report = json.loads(out.read_text())
    assert report['workloads'] == ['long'] and not {'train', 'generate', 'demo'} & set(report)
    assert report['complete'] and report['errors'] == {}
    reference = report['long']['reference']
    assert 'broken on purpose' in reference['error'] and reference['median_s'] is None
    assert report['long']['steady_s'] > 0 and report['long']['graphs_after_warm_up'] == 0
    assert "MFU is null" in done.stdout  # no peak known for a CPU


def test_a_run_cut_short_leaves_a_valid_file_of_the_workloads_done(scripts, tmp_path):
    out = tmp_path / 'check.json'
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'TMPDIR': str(tmp_path)}
    process = subprocess.Popen(check_command(scripts, '--workloads', 'long,demo', '--out', str(out)), cwd=tmp_path,
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        report, deadline = {}, time.monotonic() + 300
        while report.get('pending') != ['demo'] and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
            report = json.loads(out.read_text()) if out.exists() else {}  # replaced whole: never half-written
    finally:
        process.kill()
        process.wait()
    assert report.get('pending') == ['demo'], 'the file never showed the long workload done and the demo pending'
    report = json.loads(out.read_text())
    assert not report['complete'] and report['pending'] == ['demo'] and 'demo' not in report
    assert report['long']['steady_s'] > 0
