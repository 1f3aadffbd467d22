"""The GPU check: one command that runs the GPU path of far at the paper's sizes and measures it.

    python3 scripts/gpu_check.py [--reference-path /tmp/far_ref] [--out gpu_check.json]
    python3 scripts/gpu_check.py --size tiny --device cpu       # the same logic, CPU-sized, in about a minute

Workloads (bf16 on CUDA; float32 on a CPU):
  train     FAR-B (12 layers, width 768) training steps, batch 32 x 16 frames of 8x8x32 latents, bf16 autocast,
            fused AdamW: eager and with regionally compiled blocks (FlexAttention block masks on CUDA). Step time,
            model FLOPs utilisation, and the loss curve of a short run, compiled vs eager, from the same weights.
  generate  FAR-B, 14 frames after 2 context frames, 25 steps, batch 8, KV cache: the eager (dynamic-shape)
            sampler and the compiled static passes (CUDA graphs): warm-up, steady time, the largest difference
            to eager, and the graphs compiled after warm-up over a smaller batch and other frame counts.
  long      FAR-B-Long, 256 frames from nothing, 25 steps, multi-level cache, batch 1, compiled static passes.
  demo      train.py and test.py of the demo config (options/demo/far_moving_shapes.yml) in bf16, compiled sampling.

With ``--reference-path`` (an export of the reference implementation, see scripts/benchmark.py) the reference runs
the train, generate and long workloads on the same weights and inputs, each within a time box. Every figure comes
with the device and torch version; peak GPU memory per workload. Writes one JSON file and prints a table.
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F

import benchmark
from far.pipelines import FARPipeline, FARSampling
from far.utils.compile import compile_blocks, count_compilations

REPO = Path(__file__).resolve().parents[1]
ACTIONS = {'type': 'action', 'num_action_classes': benchmark.NUM_ACTIONS}
FAR_B = dict(patch_size=1, in_channels=32, out_channels=32, num_layers=12, attention_head_dim=64,
             num_attention_heads=12, short_term_ctx_winsize=16, condition_cfg=ACTIONS)
TINY = dict(FAR_B, in_channels=4, out_channels=4, num_layers=1, attention_head_dim=16, num_attention_heads=2,
            axes_dims_rope=[4, 6, 6], short_term_ctx_winsize=4)
SIZES = {
    'paper': dict(model=FAR_B, latent=(32, 8, 8), train=dict(batch=32, frames=16, steps=20),
                  generate=dict(batch=8, context=2, new=14, steps=25), long=dict(frames=256, steps=25, context_patch=4),
                  demo=['trainer.total_steps=200'], reference_timeout=300),
    'tiny': dict(model=TINY, latent=(4, 4, 4), train=dict(batch=2, frames=4, steps=3),
                 generate=dict(batch=3, context=2, new=4, steps=2), long=dict(frames=12, steps=2, context_patch=2),
                 demo=['model.num_layers=1', 'model.num_attention_heads=1', 'trainer.total_steps=4',
                       'trainer.batch_size=4', 'trainer.validation=null', 'datasets.train.source.num_videos=16',
                       'datasets.test.source.num_videos=4', 'test.protocol.num_videos=4',
                       'test.sampler.num_inference_steps=2', 'test.batch_size=2'],
                 reference_timeout=120),
}
PEAK_BF16_FLOPS = {'H100': 989e12, 'H200': 989e12, 'A100': 312e12}  # dense bf16 tensor-core peaks


def log(message: str):
    print(message, file=sys.stderr, flush=True)


def peak_memory_gb(device: torch.device) -> Optional[float]:
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == 'cuda' else None


def reset_memory(device: torch.device):
    if device.type == 'cuda':
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def median_time(fn: Callable, device: torch.device, repeats: int) -> float:
    return round(statistics.median(benchmark.timed(fn, device)[0] for _ in range(repeats)), 4)


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest absolute difference over the largest magnitude."""
    return float((a.float() - b.float()).abs().max() / b.float().abs().max().clamp(min=1e-12))


def run_reference(reference_path: Optional[Path], setup: dict, repeats: int, timeout: float) -> Optional[dict]:
    """The reference's median time on the same weights and inputs, or why there is none."""
    if reference_path is None:
        return None
    reference = benchmark.Reference(reference_path, threads=os.cpu_count())
    try:
        reference.request(op='setup', **setup)
        times = [reference.request(op='run', save=None, timeout=timeout)['seconds'] for _ in range(repeats)]
        return {'median_s': round(statistics.median(times), 4), 'runs_s': [round(t, 4) for t in times]}
    except TimeoutError as error:
        return {'median_s': None, 'note': str(error)}
    finally:
        reference.close() if reference.process.poll() is None else None


# ----- workloads -----

def training_flops(model: torch.nn.Module, batch: int, frames: int, tokens: int) -> float:
    """Model FLOPs of one training step: 6 per parameter and token (forward and backward of the linear layers)
    plus the frame-causal attention (QK and AV: 4 * width FLOPs per visible query-key pair, times 3)."""
    params = sum(p.numel() for name, p in model.named_parameters() if 'embedder' not in name)
    width = model.config.num_attention_heads * model.config.attention_head_dim
    pairs = tokens * tokens * frames * (frames + 1) / 2
    return 6 * params * batch * frames * tokens + 3 * 4 * width * pairs * batch * model.config.num_layers


def train_workload(size: dict, device: torch.device, dtype: torch.dtype, args, workdir: Path) -> dict:
    spec, (channels, height, width) = size['train'], size['latent']
    generator = torch.Generator().manual_seed(1)
    shape = (spec['batch'], spec['frames'], channels, height, width)
    timesteps = torch.rand(spec['batch'], spec['frames'], generator=generator) * 1000
    timesteps[:, torch.rand(spec['frames'], generator=generator) < 0.1] = -1  # stochastic clean context frames
    inputs = {'latents': torch.randn(shape, generator=generator), 'timesteps': timesteps,
              'action': torch.randint(0, benchmark.NUM_ACTIONS, shape[:2], generator=generator),
              'target': torch.randn(shape, generator=generator)}
    on_device = {k: v.to(device) for k, v in inputs.items()}
    result = {'setup': {'model': size['model'], **spec}}
    for mode in ('eager', 'compiled'):
        reset_memory(device)
        model = benchmark.build_model(size['model'], device, seed=0).train()
        if mode == 'compiled':
            compile_blocks(model, backend=args.compile_backend)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == 'cuda')

        def step():
            with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                out = model(on_device['latents'], timestep=on_device['timesteps'],
                            conditions={'action': on_device['action']}).sample
                loss = F.mse_loss(out.float(), on_device['target'])
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return loss.detach()

        warm_up, first = benchmark.timed(step, device)
        with count_compilations() as compiled_later:
            losses = [first] + [step() for _ in range(spec['steps'] - 1)]
            step_s = median_time(step, device, 3)
        tokens_per_s = spec['batch'] * spec['frames'] * height * width / step_s
        flops = training_flops(model, spec['batch'], spec['frames'], height * width)
        result[mode] = {'warm_up_s': round(warm_up, 2), 'step_s': step_s, 'tokens_per_s': round(tokens_per_s),
                        'tflops': round(flops / step_s / 1e12, 2), 'graphs_after_warm_up': compiled_later['graphs'],
                        'losses': [round(float(loss), 5) for loss in losses], 'peak_memory_gb': peak_memory_gb(device)}
    peak = next((v for k, v in PEAK_BF16_FLOPS.items() if k in result_device_name(device)), None)
    for mode in ('eager', 'compiled'):
        result[mode]['model_flops_utilisation'] = round(result[mode]['tflops'] * 1e12 / peak, 3) if peak else None
    result['loss_curve_max_abs_diff'] = max(abs(a - b) for a, b in zip(result['eager']['losses'],
                                                                       result['compiled']['losses']))
    if args.reference_path is not None:
        weights = benchmark.save_weights(benchmark.build_model(size['model'], device, seed=0), workdir)
        setup = benchmark.reference_setup(weights, size['model'], 'train', inputs, workdir, device, dtype)
        result['reference'] = run_reference(args.reference_path, setup, 3, size['reference_timeout'])
    return result


def generation_inputs(batch: int, context: int, new: int, latent, device, dtype) -> dict:
    generator = torch.Generator().manual_seed(2)
    return {'context': torch.randn(batch, context, *latent, generator=generator).to(device, dtype) if context else None,
            'noise': torch.randn(batch, new, *latent, generator=generator).to(device, dtype),
            'action': torch.randint(0, benchmark.NUM_ACTIONS, (batch, context + new), generator=generator).to(device)}


def sampler(config: dict, device: torch.device, dtype: torch.dtype, steps: int) -> FARPipeline:
    pipe = FARPipeline(transformer=benchmark.inference_model(config, device, dtype),
                       options=FARSampling(num_inference_steps=steps))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(pipe: FARPipeline, inputs: dict, **options) -> torch.Tensor:
    return pipe.generate_latents(inputs['context'], inputs['noise'], {'action': inputs['action']}, **options)


def generate_workload(size: dict, device: torch.device, dtype: torch.dtype, args, workdir: Path) -> dict:
    spec = size['generate']
    pipe = sampler(size['model'], device, dtype, spec['steps'])
    inputs = generation_inputs(spec['batch'], spec['context'], spec['new'], size['latent'], device, dtype)
    reset_memory(device)
    eager = generate(pipe, inputs)
    eager_s = median_time(lambda: generate(pipe, inputs), device, 3)
    result = {'setup': {'model': size['model'], **spec}, 'eager_s': eager_s}
    warm_up, compiled = benchmark.timed(lambda: generate(pipe, inputs, execution=args.execution), device)
    result.update(warm_up_s=round(warm_up, 2), max_relative_diff_to_eager=relative_difference(compiled, eager))
    result['compiled_s'] = median_time(lambda: generate(pipe, inputs, execution=args.execution), device, 3)
    smaller = generation_inputs(max(spec['batch'] - 3, 1), spec['context'], spec['new'] // 2, size['latent'],
                                device, dtype)
    with count_compilations() as later:  # the last batch of an evaluation, other frame counts
        generate(pipe, smaller, execution=args.execution)
        generate(pipe, {**inputs, 'context': inputs['context'][:, :1], 'action': inputs['action'][:, 1:]},
                 execution=args.execution)
    result.update(graphs_after_warm_up=later['graphs'], peak_memory_gb=peak_memory_gb(device),
                  execution=args.execution)
    if args.reference_path is not None:
        weights = benchmark.save_weights(pipe.transformer, workdir)
        setup = benchmark.reference_setup(
            weights, size['model'], 'generate', dict(inputs, num_inference_steps=spec['steps'], guidance_scale=1.0,
                                                     use_kv_cache=True, multi_level_cache=True),
            workdir, device, dtype)
        result['reference'] = run_reference(args.reference_path, setup, 1, size['reference_timeout'])
    return result


def long_workload(size: dict, device: torch.device, dtype: torch.dtype, args, workdir: Path) -> dict:
    spec = size['long']
    config = dict(size['model'], context_patch_size=spec['context_patch'])
    pipe = sampler(config, device, dtype, spec['steps'])
    window = config['short_term_ctx_winsize']
    reset_memory(device)
    warm_up_inputs = generation_inputs(1, 0, window + 2, size['latent'], device, dtype)  # slides: every pass
    warm_up = benchmark.timed(lambda: generate(pipe, warm_up_inputs, execution=args.execution), device)[0]
    inputs = generation_inputs(1, 0, spec['frames'], size['latent'], device, dtype)
    with count_compilations() as later:
        seconds = benchmark.timed(lambda: generate(pipe, inputs, execution=args.execution), device)[0]
    result = {'setup': {'model': config, **spec, 'cache': 'multi-level'}, 'warm_up_s': round(warm_up, 2),
              'compiled_s': round(seconds, 2), 'graphs_after_warm_up': later['graphs'],
              'peak_memory_gb': peak_memory_gb(device), 'execution': args.execution}
    if args.reference_path is not None:
        weights = benchmark.save_weights(pipe.transformer, workdir)
        setup = benchmark.reference_setup(
            weights, config, 'generate', dict(inputs, num_inference_steps=spec['steps'], guidance_scale=1.0,
                                              use_kv_cache=True, multi_level_cache=True),
            workdir, device, dtype)
        result['reference'] = run_reference(args.reference_path, setup, 1, size['reference_timeout'])
    return result


def demo_workload(size: dict, device: torch.device, dtype: torch.dtype, args, workdir: Path) -> dict:
    """train.py then test.py of the demo, as a user runs them, in bf16 (float32 on a CPU), compiled sampling."""
    precision = 'bf16' if device.type == 'cuda' else 'no'
    overrides = ['name=gpu_check_demo', f'mixed_precision={precision}',
                 f'test.sampler.execution={args.execution}', *size['demo']]
    result = {'overrides': overrides}
    demo = str(REPO / 'options/demo/far_moving_shapes.yml')
    for script in ('train.py', 'test.py'):
        start = time.perf_counter()
        done = subprocess.run([sys.executable, str(REPO / script), '-opt', demo, *overrides,
                               '--root', str(workdir / 'experiments')], cwd=workdir, capture_output=True, text=True)
        result[f'{script}_s'] = round(time.perf_counter() - start, 1)
        if done.returncode != 0:
            raise RuntimeError(f'{script} failed:\n{done.stderr[-3000:]}')
    found = sorted((workdir / 'experiments' / 'gpu_check_demo' / 'results').glob('*/results.json'))
    results = json.loads(found[-1].read_text())
    result.update(psnr=round(results['metrics']['psnr'], 3),
                  psnr_copy_last_frame=round(results['copy_last_frame']['psnr'], 3))
    return result


WORKLOADS = {'train': train_workload, 'generate': generate_workload, 'long': long_workload, 'demo': demo_workload}


# ----- report -----

def result_device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == 'cuda' else benchmark.processor_name()


def table(report: dict) -> str:
    """The measured figures as a markdown table."""
    rows = ['| workload | ours | reference | warm-up | graphs after warm-up | peak memory |',
            '|---|---|---|---|---|---|']

    def reference(result: dict) -> str:
        ref = result.get('reference')
        if ref is None:
            return '–'
        return f"{ref['median_s']} s" if ref.get('median_s') is not None else 'timed out'

    train = report.get('train', {})
    if 'compiled' in train:
        for mode in ('eager', 'compiled'):
            r = train[mode]
            mfu = f", MFU {r['model_flops_utilisation']:.0%}" if r['model_flops_utilisation'] else ''
            rows.append(f"| train step ({mode}) | {r['step_s']} s ({r['tflops']} TFLOP/s{mfu}) | "
                        f"{reference(train) if mode == 'compiled' else ''} | {r['warm_up_s']} s | "
                        f"{r['graphs_after_warm_up']} | {r['peak_memory_gb']} |")
    for name in ('generate', 'long'):
        r = report.get(name, {})
        if 'compiled_s' in r:
            eager = f" (eager {r['eager_s']} s)" if 'eager_s' in r else ''
            rows.append(f"| {name} ({r['execution']}) | {r['compiled_s']} s{eager} | {reference(r)} | "
                        f"{r['warm_up_s']} s | {r['graphs_after_warm_up']} | {r['peak_memory_gb']} |")
    demo = report.get('demo', {})
    if 'psnr' in demo:
        rows.append(f"| demo train.py + test.py | {demo['train.py_s']} s + {demo['test.py_s']} s, PSNR {demo['psnr']} "
                    f"(copy-last {demo['psnr_copy_last_frame']}) | – | – | – | – |")
    for name, error in report.get('errors', {}).items():
        rows.append(f'| {name} | failed: {error.splitlines()[0][:80]} | | | | |')
    return '\n'.join(rows)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--size', choices=sorted(SIZES), default='paper')
    parser.add_argument('--device', choices=('cpu', 'cuda'), default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--workloads', default=','.join(WORKLOADS), help=f'subset of {",".join(WORKLOADS)}')
    parser.add_argument('--execution', choices=('static', 'compiled'), default=None,
                        help='sampling of the generate/long/demo workloads (default: compiled on CUDA, static on CPU)')
    parser.add_argument('--compile-backend', default='inductor',
                        help='torch.compile backend of the compiled training step (aot_eager: traced, no code made)')
    parser.add_argument('--reference-path', type=Path, help='an export of the reference implementation')
    parser.add_argument('--out', type=Path, default=Path('gpu_check.json'))
    args = parser.parse_args(argv)
    args.workloads = [w.strip() for w in args.workloads.split(',') if w.strip()]
    if not args.workloads or set(args.workloads) - set(WORKLOADS):
        parser.error(f'--workloads: choose from {",".join(WORKLOADS)}, got {args.workloads}')
    if args.device == 'cuda' and not torch.cuda.is_available():
        parser.error('--device cuda: no CUDA device is available')
    args.execution = args.execution or ('compiled' if args.device == 'cuda' else 'static')
    return args


def main(argv=None):
    args = parse_args(argv)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == 'cuda' else torch.float32  # bf16 matmuls are slow on CPUs
    size = SIZES[args.size]
    report = {'environment': {'device': result_device_name(device), 'torch': torch.__version__,
                              'python': platform.python_version(), 'dtype': str(dtype).replace('torch.', ''),
                              'size': args.size},
              'errors': {}}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix='far_gpu_check_') as workdir:
        for name in args.workloads:
            log(f'{name} ...')
            try:
                report[name] = WORKLOADS[name](size, device, dtype, args, Path(workdir))
            except Exception as error:  # one failing workload must not hide the others' figures
                report['errors'][name] = f'{type(error).__name__}: {error}'
                log(f'{name} failed: {error}')
    report['wall_s'] = round(time.perf_counter() - start, 1)
    args.out.write_text(json.dumps(report, indent=2, default=str))
    print(f"{report['environment']['device']}, torch {torch.__version__}, {report['environment']['dtype']}, "
          f"{report['wall_s']} s in all; {args.out}")
    print(table(report))
    return 1 if report['errors'] else 0


if __name__ == '__main__':
    sys.exit(main())
