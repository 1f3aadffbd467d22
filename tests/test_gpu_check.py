"""scripts/gpu_check.py, CPU-sized: every workload runs, reports its figures and compiles nothing after warm-up."""
import json
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_the_gpu_check_runs_its_workloads_at_tiny_size(scripts, tmp_path):
    out = tmp_path / 'check.json'
    done = subprocess.run([sys.executable, str(scripts.repo / 'scripts' / 'gpu_check.py'), '--size', 'tiny',
                           '--device', 'cpu', '--workloads', 'train,generate,long', '--compile-backend', 'aot_eager',
                           '--out', str(out)], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(out.read_text())
    assert report['errors'] == {} and report['environment']['torch'].startswith('2.')
    train, generate, long = report['train'], report['generate'], report['long']
    assert train['compiled']['graphs_after_warm_up'] == 0 and train['loss_curve_max_abs_diff'] < 1e-4
    assert len(train['eager']['losses']) == 3 and train['eager']['losses'][-1] < train['eager']['losses'][0]
    assert generate['graphs_after_warm_up'] == 0 and generate['max_relative_diff_to_eager'] < 1e-4
    assert long['graphs_after_warm_up'] == 0 and long['setup']['frames'] == 12
    assert '| generate (static) |' in done.stdout and '| train step (compiled) |' in done.stdout
