"""The GPU check: one command that runs the GPU path of far at the paper's sizes and measures it.

    python3 scripts/gpu_check.py [--workloads train,generate,long,demo] [--reference-path /tmp/far_ref]
                                 [--peak-tflops 989] [--out experiments/gpu_check/run.json]
    python3 scripts/gpu_check.py --size tiny --device cpu       # the same code, CPU-sized, in about a minute

Workloads (bf16 on CUDA; float32 on a CPU), with the targets printed beside their figures:
  train     FAR-B (12 layers, width 768) training steps, batch 32 x 16 frames of 8x8x32 latents, bf16 autocast,
            fused AdamW: eager, and with regionally compiled blocks (FlexAttention block masks on CUDA). FLOPs per
            step counted from the model's structure (``far.utils.flops``), model FLOPs utilisation against the
            device's bf16 peak, the loss of both from the same weights. Host syncs per step: of train.py's loop (a
            tiny demo run, ``trainer_host_syncs``), and of the timed step alone.
            Target: the reference's step time over ours >= 2.5 (goal 3).
  generate  FAR-B, 14 frames after 2 context frames, 25 steps, batch 8, KV cache, compiled passes; the eager sampler
            beside it (the largest difference to it); then a smaller batch and other frame counts, untimed, whose
            compilations are counted. Target: <= 1.0 s.
  long      FAR-B-Long, 256 frames from nothing, 25 steps, multi-level cache, batch 1, compiled passes.
            Target: <= 20 s.
  demo      train.py (200 steps) and test.py of the demo config (options/demo/far_moving_shapes.yml) in this
            process, bf16 on CUDA, compiled sampling; test.py twice: the first compiles, the second is timed.
Every workload: zero graphs compiled after warm-up.

What is timed is warm first: each timed call (same shapes, same batch, same frame count) runs once before the timer
(``warm_up_s``, building engines and compiling: ``compile_s`` = warm-up minus steady time), then ``steady_s`` is the
median of the timed calls. Counted per workload: graphs compiled in warm-up and after it, graph breaks and CUDA-graph
skips (``far.utils.compile.count_compilations``), and peak GPU memory.

With ``--reference-path`` (an export of the reference implementation, see scripts/benchmark.py) the reference runs
the train, generate and long workloads on the same weights and inputs in its own process
(``scripts/bench_reference.py``): one warm-up run, then the median of 3; a crash or a timeout is recorded in the
JSON, never fatal. The model FLOPs utilisation takes the peak from ``PEAK_BF16_TFLOPS``, keyed by the exact device
name, or ``--peak-tflops``; an unknown device gets none (a printed note).

The JSON (default ``experiments/gpu_check/<time>_<size>_<device>.json``) is rewritten after every workload, so a run
cut short leaves a valid file that says which workloads are pending.

Estimated time of a default run on one H100 (from ../shared/docs/gpu-device-notes.md: a FAR-B step 0.16 s, the eager
sampler 6.4 s per generation, a first compiled generation 24.5 s, a FAR-B forward ~18 ms when launch bound):
  train     ~1.5 min: two model builds, one block compiled (forward and backward, ~1 min), 2 x 11 steps; two tiny
            train.py runs for the host syncs (~15 s).
  generate  ~1.5 min: eager warm-up and one timed call (~13 s), compiled warm-up (~30 s) and 3 timed calls (~3 s),
            two untimed calls at other shapes (~20 s, their engines included).
  long      ~1.5 min: compiled warm-up at 256 frames (compiling ~40 s, one rollout <= 20 s), one timed rollout.
            Without CUDA graphs a rollout is ~7,000 launch-bound passes of ~18 ms (~2 min): a warm-up over 150 s is
            not followed by a timed rollout (steady_s null), so the workload stays under ~3 min.
  demo      ~1.5 min: train.py (200 steps at ~11 it/s, start-up, validation), test.py twice.
  In all about 6 minutes, 7.5 at worst; the reference adds up to its time boxes (2 + 4 + 7 minutes; it did not finish
  a cached FAR-B generation in the earlier box).
"""
import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

import benchmark
from far.pipelines import FARPipeline
from far.utils.compile import compile_blocks, count_compilations
from far.utils.flops import FLEX_BLOCK, training_step_flops
from far.utils.host_syncs import count_host_syncs

REPO = Path(__file__).resolve().parents[1]
ACTIONS = {'type': 'action', 'num_action_classes': benchmark.NUM_ACTIONS}
FAR_B = dict(patch_size=1, in_channels=32, out_channels=32, num_layers=12, attention_head_dim=64,
             num_attention_heads=12, short_term_ctx_winsize=16, condition_cfg=ACTIONS)
TINY = dict(FAR_B, in_channels=4, out_channels=4, num_layers=1, attention_head_dim=16, num_attention_heads=2,
            axes_dims_rope=[4, 6, 6], short_term_ctx_winsize=4)
SIZES = {
    'paper': dict(model=FAR_B, latent=(32, 8, 8), train=dict(batch=32, frames=16, steps=10),
                  generate=dict(batch=8, context=2, new=14, steps=25, repeats=3),
                  long=dict(frames=256, steps=25, context_patch=4, repeats=1, time_box_s=150),
                  demo=['trainer.total_steps=200'], reference_timeout=dict(train=120, generate=240, long=420)),
    'tiny': dict(model=TINY, latent=(4, 4, 4), train=dict(batch=2, frames=4, steps=3),
                 generate=dict(batch=3, context=2, new=4, steps=2, repeats=3),
                 long=dict(frames=12, steps=2, context_patch=2, repeats=1, time_box_s=120),
                 demo=['model.num_layers=1', 'model.num_attention_heads=1', 'trainer.total_steps=4',
                       'trainer.batch_size=4', 'trainer.validation=null', 'datasets.train.source.num_videos=16',
                       'datasets.test.source.num_videos=2', 'test.protocol.num_videos=2',
                       'test.sampler.num_inference_steps=2', 'test.batch_size=2'],
                 reference_timeout=dict(train=120, generate=120, long=120)),
}
REFERENCE_RUNS = 3  # timed runs of the reference after its warm-up run
DEMO = REPO / 'options' / 'demo' / 'far_moving_shapes.yml'
# train.py's loop at the demo config, tiny: its host syncs per step do not depend on the model's size
TRAINER_SYNC_STEPS = (2, 5)
TRAINER_SYNC_RUN = ['model.num_layers=1', 'trainer.batch_size=4', 'datasets.train.source.num_videos=16',
                    'trainer.log.every=100000', 'trainer.checkpoint.every=100000', 'trainer.validation=null']
# Dense bf16 tensor-core peaks (TFLOP/s) under the exact names torch.cuda.get_device_name() reports.
PEAK_BF16_TFLOPS = {
    'NVIDIA H100 80GB HBM3': 989,   # H100 SXM
    'NVIDIA H100 PCIe': 756,
    'NVIDIA H100 NVL': 835,
    'NVIDIA H200': 989,             # H200 SXM; an H200 NVL (835) may report the same name: --peak-tflops
    'NVIDIA A100-SXM4-80GB': 312,
    'NVIDIA A100-SXM4-40GB': 312,
    'NVIDIA A100 80GB PCIe': 312,
    'NVIDIA A100-PCIE-40GB': 312,
}
TARGETS = {  # the paper-size targets; `met` is only judged at that size
    'train': ('speedup', 2.5, 'reference step / ours >= 2.5 (goal 3)'),
    'generate': ('steady_s', 1.0, '<= 1.0 s'),
    'long': ('steady_s', 20.0, '<= 20 s'),
}
TINY_NOTE = ("tiny size: the models (the demo's included) are untrained 1-layer ones and the TFLOP/s meaningless "
             'on a CPU; the figures check the code, the targets are not judged')


def log(message: str):
    print(message, file=sys.stderr, flush=True)


def peak_memory_gb(device: torch.device) -> Optional[float]:
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == 'cuda' else None


def reset_memory(device: torch.device):
    if device.type == 'cuda':
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest absolute difference over the largest magnitude."""
    return float((a.float() - b.float()).abs().max() / b.float().abs().max().clamp(min=1e-12))


def measure(run: Callable, device: torch.device, repeats: int,
            time_box_s: Optional[float] = None) -> Tuple[list, dict]:
    """``run`` once to warm up (building and compiling for exactly the shapes timed), then ``repeats`` timed calls:
    their outputs and the figures every workload reports. A warm-up longer than ``time_box_s`` is not followed by
    timed calls (the check keeps to its time; ``steady_s`` is then null)."""
    reset_memory(device)
    with count_compilations() as warm_up:
        warm_up_s, first = benchmark.timed(run, device)
    boxed = time_box_s is not None and warm_up_s > time_box_s
    with count_compilations() as later:
        timed = [benchmark.timed(run, device) for _ in range(0 if boxed else repeats)]
    steady_s = statistics.median(seconds for seconds, _ in timed) if timed else None
    figures = {'steady_s': round(steady_s, 4) if timed else None, 'runs_s': [round(seconds, 4) for seconds, _ in timed],
               'warm_up_s': round(warm_up_s, 3),
               'compile_s': round(max(warm_up_s - steady_s, 0.0), 3) if timed else None,
               'graphs_in_warm_up': warm_up['graphs'], 'graphs_after_warm_up': later['graphs'],
               'graph_breaks': warm_up['graph_breaks'] + later['graph_breaks'],
               'cudagraph_skips': warm_up['cudagraph_skips'] + later['cudagraph_skips'],
               'peak_memory_gb': peak_memory_gb(device)}
    if boxed:
        figures['not_timed'] = f'the warm-up took {warm_up_s:.0f} s, over the time box of {time_box_s} s'
    return [first] + [out for _, out in timed], figures


# ----- the reference implementation, in its own process -----

def run_reference(path: Path, setup: dict, timeout: float) -> dict:
    """The reference's step or generation in a child process (``bench_reference.py``): one warm-up run, then the
    median of ``REFERENCE_RUNS``. A crash or a timeout comes back as ``error`` (with the runs done before it)."""
    script = Path(__file__).resolve().parent / 'bench_reference.py'
    threads = torch.get_num_threads()
    requests = [{'op': 'setup', **setup}] + [{'op': 'run', 'save': None}] * (REFERENCE_RUNS + 1) + [{'op': 'quit'}]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    command = [sys.executable, str(script), '--reference-path', str(path), '--threads', str(threads)]
    error = None
    try:
        done = subprocess.run(command, input=''.join(json.dumps(r) + '\n' for r in requests), capture_output=True,
                              text=True, timeout=timeout, env=env)
        output = done.stdout
        if done.returncode != 0:
            error = f'the reference exited with code {done.returncode}: {done.stderr.strip()[-500:]}'
    except subprocess.TimeoutExpired as expired:
        output = expired.stdout.decode() if isinstance(expired.stdout, bytes) else expired.stdout or ''
        error = f'the reference did not finish {REFERENCE_RUNS + 1} runs within {timeout} s'
    replies = [json.loads(line) for line in output.splitlines() if line.strip()]
    failed = next((reply for reply in replies if not reply['ok']), None)
    if failed is not None:  # the first failure is the cause; the requests after it fail for its sake
        error = 'the reference failed: ' + failed['error'].strip().splitlines()[-1]
    seconds = [reply['seconds'] for reply in replies if 'seconds' in reply]
    result = {'warm_up_s': round(seconds[0], 4) if seconds else None,
              'runs_s': [round(s, 4) for s in seconds[1:]],
              'median_s': round(statistics.median(seconds[1:]), 4) if len(seconds) > REFERENCE_RUNS else None}
    return {**result, 'error': error} if error else result


def reference_figures(args, size: dict, name: str, model: torch.nn.Module, config: dict, task: str, inputs: dict,
                      workdir: Path, device: torch.device, dtype: torch.dtype) -> Optional[dict]:
    """The reference on ``model``'s weights and ``inputs`` (None without ``--reference-path``)."""
    if args.reference_path is None:
        return None
    weights = benchmark.save_weights(model, workdir)
    setup = benchmark.reference_setup(weights, config, task, inputs, workdir, device, dtype)
    log(f'{name}: the reference, in its own process ...')
    return run_reference(args.reference_path, setup, size['reference_timeout'][name])


# ----- workloads -----

def training_inputs(spec: dict, latent) -> dict:
    generator = torch.Generator().manual_seed(1)
    shape = (spec['batch'], spec['frames'], *latent)
    timesteps = torch.rand(spec['batch'], spec['frames'], generator=generator) * 1000
    timesteps[:, torch.rand(spec['frames'], generator=generator) < 0.1] = -1  # stochastic clean context frames
    return {'latents': torch.randn(shape, generator=generator), 'timesteps': timesteps,
            'action': torch.randint(0, benchmark.NUM_ACTIONS, shape[:2], generator=generator),
            'target': torch.randn(shape, generator=generator)}


def train_workload(size: dict, device: torch.device, dtype: torch.dtype, args, workdir: Path) -> dict:
    """The timed step eager and compiled from the same weights; FLOPs, MFU and host syncs (train.py's loop)."""
    spec, (_, height, width) = size['train'], size['latent']
    inputs = training_inputs(spec, size['latent'])
    on_device = {k: v.to(device) for k, v in inputs.items()}
    modes = {}
    for mode in ('eager', 'compiled'):
        model = benchmark.build_model(size['model'], device, seed=0).train()
        if mode == 'compiled':
            compile_blocks(model, backend=args.compile_backend)
        # fused AdamW on CUDA, as the trainer's; nothing read on the host (a non-log step)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == 'cuda')
        step = benchmark.training_step(model, optimizer, on_device, device, dtype)
        outs, figures = measure(step, device, spec['steps'])
        losses = [float(F.mse_loss(out.float(), on_device['target'])) for out in outs]  # the loss of each step
        modes[mode] = dict(figures, losses=[round(loss, 5) for loss in losses])
        if mode == 'eager':  # a dispatch mode sees every operator, which compiled blocks hide from it
            with count_host_syncs() as step_syncs:
                step()
    # FlexAttention (CUDA) computes 128-token tiles; SDPA with a mask (CPU) the whole product
    flops = training_step_flops(model, batch=spec['batch'], frames=spec['frames'], height=height, width=width,
                                attention_block=FLEX_BLOCK if device.type == 'cuda' else None)
    for figures in modes.values():
        figures['tflops'] = float(f"{flops / figures['steady_s'] / 1e12:.4g}")
        figures['mfu'] = float(f"{figures['tflops'] / args.peak_tflops:.4g}") if args.peak_tflops else None
    syncs = trainer_host_syncs(device, workdir)
    result = {'setup': {'model': size['model'], **spec}, **modes.pop('compiled'), 'eager': modes['eager'],
              'flops_per_step': flops, 'peak_tflops': args.peak_tflops, 'host_syncs_per_step': syncs['total'],
              'host_syncs': syncs, 'timed_step_host_syncs': dict(step_syncs)}
    result['loss_max_abs_diff_to_eager'] = max(abs(a - b) for a, b in zip(result['losses'], modes['eager']['losses']))
    result['reference'] = reference_figures(args, size, 'train', benchmark.build_model(size['model'], device, seed=0),
                                            size['model'], 'train', inputs, workdir, device, dtype)
    return result


def generation_inputs(batch: int, context: int, new: int, latent, device, dtype) -> dict:
    generator = torch.Generator().manual_seed(2)
    return {'context': torch.randn(batch, context, *latent, generator=generator).to(device, dtype) if context else None,
            'noise': torch.randn(batch, new, *latent, generator=generator).to(device, dtype),
            'action': torch.randint(0, benchmark.NUM_ACTIONS, (batch, context + new), generator=generator).to(device)}


def generation(pipe: FARPipeline, inputs: dict, steps: int, execution: str) -> Callable[[], torch.Tensor]:
    return lambda: pipe.generate_latents(context=inputs['context'], noise=inputs['noise'],
                                         conditions={'action': inputs['action']}, num_inference_steps=steps,
                                         execution=execution)


def reference_generation(spec: dict, inputs: dict) -> dict:
    return dict(inputs, num_inference_steps=spec['steps'], guidance_scale=1.0, use_kv_cache=True,
                multi_level_cache=True)


def generate_workload(size: dict, device: torch.device, dtype: torch.dtype, args, workdir: Path) -> dict:
    spec = size['generate']
    pipe = benchmark.make_pipeline(benchmark.inference_model(size['model'], device, dtype))
    inputs = generation_inputs(spec['batch'], spec['context'], spec['new'], size['latent'], device, dtype)
    eager_out, eager = measure(generation(pipe, inputs, spec['steps'], 'eager'), device, 1)
    outs, result = measure(generation(pipe, inputs, spec['steps'], args.execution), device, spec['repeats'])
    smaller = generation_inputs(max(spec['batch'] - 3, 1), spec['context'], spec['new'] // 2, size['latent'],
                                device, dtype)
    shorter = {**inputs, 'context': inputs['context'][:, :1], 'action': inputs['action'][:, 1:]}
    with count_compilations() as other_shapes:  # the last batch of an evaluation, other frame counts: untimed
        generation(pipe, smaller, spec['steps'], args.execution)()
        generation(pipe, shorter, spec['steps'], args.execution)()
    result.update(setup={'model': size['model'], **spec}, execution=args.execution,
                  eager={k: eager[k] for k in ('steady_s', 'warm_up_s', 'peak_memory_gb')},
                  max_relative_diff_to_eager=relative_difference(outs[-1], eager_out[0]),
                  graphs_for_other_shapes=other_shapes['graphs'])
    result['reference'] = reference_figures(args, size, 'generate', pipe.transformer, size['model'], 'generate',
                                            reference_generation(spec, inputs), workdir, device, dtype)
    return result


def long_workload(size: dict, device: torch.device, dtype: torch.dtype, args, workdir: Path) -> dict:
    spec = size['long']
    config = dict(size['model'], context_patch_size=spec['context_patch'])
    pipe = benchmark.make_pipeline(benchmark.inference_model(config, device, dtype))
    inputs = generation_inputs(1, 0, spec['frames'], size['latent'], device, dtype)
    rollout = generation(pipe, inputs, spec['steps'], args.execution)
    _, result = measure(rollout, device, spec['repeats'], spec['time_box_s'])
    result.update(setup={'model': config, **spec, 'cache': 'multi-level'}, execution=args.execution)
    result['reference'] = reference_figures(args, size, 'long', pipe.transformer, config, 'generate',
                                            reference_generation(spec, inputs), workdir, device, dtype)
    return result


def run_script(name: str, overrides: List[str], workdir: Path, clips: str):
    """train.py or test.py on the demo config with ``overrides``, in this process (so that what it compiles and
    syncs is counted), its experiment and its clips (``workdir/datasets/<clips>``) in ``workdir``: its entry point's
    return value."""
    spec = importlib.util.spec_from_file_location(f'far_script_{name}', REPO / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    roots = [f'datasets.{split}.source.root={workdir / "datasets" / clips}' for split in ('train', 'val', 'test')]
    command = ['-opt', str(DEMO), *roots, *overrides, '--root', str(workdir / 'experiments')]
    return getattr(module, name)(module.parse_args(command))


def precision(device: torch.device) -> str:
    return 'bf16' if device.type == 'cuda' else 'no'


def trainer_host_syncs(device: torch.device, workdir: Path) -> Dict[str, float]:
    """Host syncs of one non-log step of train.py's loop (objective, backward, guard, optimizer, EMA, next batch):
    two short runs that log, checkpoint and validate only at their end, counted whole; their difference over the
    steps between."""
    counts = {}
    for steps in TRAINER_SYNC_STEPS:
        overrides = [f'name=gpu_check_syncs_{steps}', f'mixed_precision={precision(device)}',
                     f'trainer.total_steps={steps}', *TRAINER_SYNC_RUN]
        with count_host_syncs() as counted:
            run_script('train', overrides, workdir, clips='host_syncs')
        counts[steps] = counted
    first, last = TRAINER_SYNC_STEPS
    return {key: round((counts[last][key] - counts[first][key]) / (last - first), 2) for key in counts[last]}


def demo_workload(size: dict, device: torch.device, dtype: torch.dtype, args, workdir: Path) -> dict:
    """train.py then test.py of the demo, as a user runs them but in this process (``run_script``); test.py twice,
    the second timed."""
    overrides = ['name=gpu_check_demo', f'mixed_precision={precision(device)}',
                 f'test.sampler.execution={args.execution}', *size['demo']]
    reset_memory(device)
    train_s = benchmark.timed(lambda: run_script('train', overrides, workdir, clips='demo'), device)[0]
    results, figures = measure(lambda: run_script('test', overrides, workdir, clips='demo'), device, 1)
    return dict(figures, overrides=overrides, train_s=round(train_s, 2), psnr=round(results[-1]['metrics']['psnr'], 3),
                psnr_copy_last_frame=round(results[-1]['copy_last_frame']['psnr'], 3))


WORKLOADS = {'train': train_workload, 'generate': generate_workload, 'long': long_workload, 'demo': demo_workload}


# ----- report -----

def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == 'cuda' else benchmark.processor_name()


def speedup(result: dict) -> Optional[float]:
    """The reference's median time over ours, when both were measured."""
    reference = (result.get('reference') or {}).get('median_s')
    return round(reference / result['steady_s'], 3) if reference and result.get('steady_s') else None


def judge(name: str, result: dict, size: str) -> Optional[dict]:
    """The workload's target and whether its figures meet it (judged at the paper's size only)."""
    if name not in TARGETS:
        return None
    key, bound, text = TARGETS[name]
    value = result.get(key)
    met = None if size != 'paper' or value is None else (value >= bound if key == 'speedup' else value <= bound)
    return {'target': text, 'met': met}


def write_report(report: dict, path: Path):
    """Replace the JSON file whole (a run killed while writing leaves the previous version)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + '.partial')
    partial.write_text(json.dumps(report, indent=2, default=str))
    os.replace(partial, path)


def ours_cell(name: str, r: dict) -> str:
    """Our figures of a workload, in words for the table."""
    if r['steady_s'] is None:
        return f"not timed: {r['not_timed']}"
    if name == 'train':
        mfu = f", MFU {r['mfu']:.1%}" if r['mfu'] is not None else ', MFU –'
        return (f"{r['steady_s']} s ({r['tflops']} TFLOP/s{mfu}; eager {r['eager']['steady_s']} s; "
                f"{r['host_syncs_per_step']} host syncs a step)")
    if name == 'generate':
        return f"{r['steady_s']} s (eager {r['eager']['steady_s']} s; diff {r['max_relative_diff_to_eager']:.1e})"
    if name == 'demo':
        return (f"test.py {r['steady_s']} s, train.py {r['train_s']} s; PSNR {r['psnr']} "
                f"(copy-last {r['psnr_copy_last_frame']})")
    return f"{r['steady_s']} s"


def reference_cell(r: dict) -> str:
    ref = r.get('reference')
    if not ref:
        return '–'
    return f"{ref['median_s']} s ({r['speedup']}x)" if ref['median_s'] is not None else f"none: {ref['error'][:60]}"


def table(report: dict) -> str:
    """The measured figures as a markdown table, targets beside them."""
    rows = ['| workload | ours (steady) | compile | graphs after warm-up | CUDA-graph skips | peak memory | '
            'reference | target |', '|---|---|---|---|---|---|---|---|']
    for name in report['workloads']:
        r = report.get(name)
        if r is None:
            error = report['errors'].get(name)
            rows.append(f"| {name} | {'failed: ' + error.splitlines()[0][:80] if error else 'not run'} | | | | | | |")
            continue
        goal = r['target'] or {}
        met = {True: ' (met)', False: ' (missed)'}.get(goal.get('met'), '')
        rows.append(f"| {name} | {ours_cell(name, r)} | {r['compile_s']} s | {r['graphs_after_warm_up']} (target 0) | "
                    f"{r['cudagraph_skips']} | {r['peak_memory_gb']} | {reference_cell(r)} | "
                    f"{goal.get('target', '–')}{met} |")
    return '\n'.join(rows)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--size', choices=sorted(SIZES), default='paper')
    parser.add_argument('--device', choices=('cpu', 'cuda'), default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--workloads', default=','.join(WORKLOADS), help=f'subset of {",".join(WORKLOADS)}')
    parser.add_argument('--execution', choices=('eager', 'compiled'), default=None,
                        help='sampling of the generate, long and demo workloads (default: compiled on CUDA; eager on '
                             'a CPU, where Inductor spends minutes compiling C++)')
    parser.add_argument('--compile-backend', default='inductor',
                        help='torch.compile backend of the compiled training step (aot_eager: traced, no code made)')
    parser.add_argument('--reference-path', type=Path, help='an export of the reference implementation')
    parser.add_argument('--peak-tflops', type=float,
                        help='the device\'s dense bf16 peak for the MFU (default: by its exact name, from '
                             f'{", ".join(sorted(PEAK_BF16_TFLOPS))})')
    parser.add_argument('--out', type=Path, help='the JSON file (default: experiments/gpu_check/<time>_<size>_'
                                                 '<device>.json)')
    args = parser.parse_args(argv)
    args.workloads = [w.strip() for w in args.workloads.split(',') if w.strip()]
    if not args.workloads or set(args.workloads) - set(WORKLOADS):
        parser.error(f'--workloads: choose from {",".join(WORKLOADS)}, got {args.workloads}')
    if args.device == 'cuda' and not torch.cuda.is_available():
        parser.error('--device cuda: no CUDA device is available')
    if args.reference_path is not None and not (args.reference_path / 'far' / 'models' / 'far_model.py').is_file():
        parser.error(f'--reference-path {args.reference_path}: no far/models/far_model.py there; export the '
                     'reference as scripts/benchmark.py says')
    if args.peak_tflops is not None and args.peak_tflops <= 0:
        parser.error(f'--peak-tflops must be > 0, got {args.peak_tflops}')
    args.execution = args.execution or ('compiled' if args.device == 'cuda' else 'eager')
    if args.out is None:
        stamp = datetime.now(timezone.utc).strftime('%Y%m%d-%H%M%S')
        args.out = Path('experiments') / 'gpu_check' / f'{stamp}_{args.size}_{args.device}.json'
    return args


def environment(args, device: torch.device, dtype: torch.dtype) -> Tuple[dict, List[str]]:
    """What the figures were measured on, and the notes a reader needs (no peak known, tiny size)."""
    name = device_name(device)
    notes = [TINY_NOTE] if args.size == 'tiny' else []
    if args.peak_tflops is None:
        notes.append(f"no bf16 peak known for '{name}': MFU is null (pass --peak-tflops)")
    return {'device': name, 'torch': torch.__version__, 'python': platform.python_version(),
            'dtype': str(dtype).replace('torch.', ''), 'size': args.size, 'execution': args.execution,
            'peak_tflops': args.peak_tflops, 'reference_path': str(args.reference_path or '') or None}, notes


def main(argv=None):
    args = parse_args(argv)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == 'cuda' else torch.float32  # bf16 matmuls are slow on CPUs
    size = SIZES[args.size]
    if args.peak_tflops is None and device.type == 'cuda':
        args.peak_tflops = PEAK_BF16_TFLOPS.get(torch.cuda.get_device_name(device))
    env, notes = environment(args, device, dtype)
    report = {'environment': env, 'notes': notes, 'workloads': args.workloads, 'pending': list(args.workloads),
              'complete': False, 'errors': {}, 'tracebacks': {}}
    for note in notes:
        print(f'note: {note}')
    write_report(report, args.out)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix='far_gpu_check_') as workdir:
        for name in args.workloads:
            log(f'{name} ...')
            try:
                result = WORKLOADS[name](size, device, dtype, args, Path(workdir))
                result['speedup'] = speedup(result)
                result['target'] = judge(name, result, args.size)
                report[name] = result
            except Exception as error:  # one failing workload must not hide the others' figures
                report['errors'][name] = f'{type(error).__name__}: {error}'
                report['tracebacks'][name] = traceback.format_exc()
                log(f'{name} failed:\n{traceback.format_exc()}')
            report['pending'].remove(name)
            report['wall_s'] = round(time.perf_counter() - start, 1)
            write_report(report, args.out)
    report['complete'] = True
    write_report(report, args.out)
    print(f"{env['device']}, torch {torch.__version__}, {env['dtype']}, {report['wall_s']} s in all; {args.out}")
    print(table(report))
    return 1 if report['errors'] else 0


if __name__ == '__main__':
    sys.exit(main())
