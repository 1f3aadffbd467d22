"""Speed of FAR training and sampling, optionally side by side with the reference implementation.

    python scripts/benchmark.py [--suite train,generate,long] [--reference-path /tmp/far_ref]
                                [--device cpu|cuda] [--repeats N] [--threads 1]

Suites (sizes as in the project's speed targets):
  train     one training step (forward, backward, AdamW) of FAR at FAR-B width (768, 12 heads) with
            4 layers, on 16 frames of 8x8x32 latents, batch 1, action-conditioned.
  generate  14 frames after 2 context frames, 10 Euler steps, action-conditioned, same model, without
            and with the KV cache.
  long      rollouts of 64, 128 and 256 frames from nothing, with no cache, a single-level cache and the
            multi-level cache, of a small FAR-Long (1 layer, 1 head of 64, short-term window 16, 4x4
            long-term patches, 4 steps: about 4 CPU-minutes for both implementations), or with
            ``--long-model base`` of FAR-B-Long at 25 steps (for a GPU).

The reference implementation (showlab/FAR) runs from a folder outside the project, in a child process
(``scripts/bench_reference.py``): export it with
``mkdir -p /tmp/far_ref && git -C <showlab/FAR clone> archive HEAD far options | tar -x -C /tmp/far_ref``.
Both implementations get the same weights (ours, saved and loaded strictly into the reference) and the
same inputs; the script first checks that they compute the same outputs (``max_abs_diff``), then times
them in alternation, one repeat each in turn, so that machine noise hits both alike.

Output: JSON on stdout with the per-case median seconds (a warm-up run excluded), every timed run, and
``speedup`` = reference median / our median. Progress goes to stderr. On CUDA the models run in bf16
(autocast for training) and our attention uses FlexAttention's block masks (no dense mask).
"""
import argparse
import json
import os
import platform
import select
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, List, Optional

import torch
import torch.nn.functional as F
from diffusers import FlowMatchEulerDiscreteScheduler

from far.models import FAR, FAR_Long
from far.pipelines import FARPipeline

SUITES = ('train', 'generate', 'long')
NUM_ACTIONS = 4
LATENT = dict(channels=32, height=8, width=8)  # DC-AE latents of a 64x64 frame: 8x8 tokens of 32 channels

# FAR-B width with 4 layers; condition dropout off so that both implementations see the same ids.
SHORT_MODEL = dict(patch_size=1, in_channels=32, out_channels=32, num_layers=4, attention_head_dim=64,
                   num_attention_heads=12, short_term_ctx_winsize=16,
                   condition_cfg={'type': 'action', 'num_action_classes': NUM_ACTIONS})
TRAIN = dict(batch_size=1, num_frames=16, optimizer='AdamW(lr=1e-4)', target_speedup=1.4)
GENERATE = dict(batch_size=1, context_frames=2, generated_frames=14, num_inference_steps=10, guidance_scale=1.0,
                target_speedups={'no_kv_cache': None, 'kv_cache': 1.5})
# Long rollouts: a FAR-Long small enough for a CPU (the whole table takes a few minutes), or FAR-B-Long.
LONG_MODELS = {
    'small': dict(model=dict(SHORT_MODEL, num_layers=1, num_attention_heads=1, context_patch_size=4),
                  num_inference_steps=4),
    'base': dict(model=dict(SHORT_MODEL, num_layers=12, num_attention_heads=12, context_patch_size=4),
                 num_inference_steps=25),
}
LONG = dict(batch_size=1, frames=(64, 128, 256), guidance_scale=1.0, parity_frames=24,
            modes={'no_cache': dict(use_kv_cache=False, multi_level_cache=False),
                   'single_level_cache': dict(use_kv_cache=True, multi_level_cache=False),
                   'multi_level_cache': dict(use_kv_cache=True, multi_level_cache=True)})


def log(message: str):
    print(message, file=sys.stderr, flush=True)


# ----- the reference implementation, in its own process -----

class Reference:
    """Client of ``bench_reference.py``: one request per line on its stdin, one JSON reply per line."""

    def __init__(self, path: Path, threads: int):
        script = Path(__file__).resolve().parent / 'bench_reference.py'
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        self.process = subprocess.Popen(
            [sys.executable, str(script), '--reference-path', str(path), '--threads', str(threads)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True)
        self._reply()  # ready, or the reason it cannot load

    def _reply(self, timeout: Optional[float] = None) -> dict:
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        if not ready:  # still computing after `timeout` seconds: stop it (a later request starts it again)
            self.process.kill()
            raise TimeoutError(f'the reference did not answer within {timeout} s')
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f'the reference process exited (code {self.process.wait()}); see its stderr above')
        reply = json.loads(line)
        if not reply['ok']:
            raise RuntimeError(f"reference implementation failed:\n{reply['error']}")
        return reply

    def request(self, timeout: Optional[float] = None, **request) -> dict:
        self.process.stdin.write(json.dumps(request) + '\n')
        self.process.stdin.flush()
        return self._reply(timeout)

    def close(self):
        if self.process.poll() is None:
            self.process.stdin.write(json.dumps({'op': 'quit'}) + '\n')
            self.process.stdin.close()
            self.process.wait(timeout=60)


# ----- timing -----

def synchronize(device: torch.device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def timed(fn: Callable, device: torch.device):
    synchronize(device)
    start = time.perf_counter()
    out = fn()
    synchronize(device)
    return time.perf_counter() - start, out


def summary(times: List[float]) -> dict:
    return {'median_s': round(statistics.median(times), 4), 'runs_s': [round(t, 4) for t in times]}


def compare(ours: Callable, reference: Optional[Reference], workdir: Path, device: torch.device) -> Optional[float]:
    """One untimed run of each (the warm-up); the largest absolute difference of their outputs."""
    our_out = timed(ours, device)[1]
    if reference is None:
        return None
    saved = workdir / 'reference_out.pt'
    reference.request(op='run', save=str(saved))
    return float((our_out.float().cpu() - torch.load(saved, weights_only=True)).abs().max())


def measure(name: str, ours: Callable, reference: Optional[Reference], reference_setup: Optional[dict],
            workdir: Path, device: torch.device, repeats: int, warmup: bool = True,
            target: Optional[float] = None) -> dict:
    """Warm-up (whose outputs are compared), then ``repeats`` timed runs of each, alternating who goes first."""
    if reference is not None:
        reference.request(op='setup', **reference_setup)
    result = {}
    if warmup:
        result['max_abs_diff'] = compare(ours, reference, workdir, device)
    ours_times, ref_times = [], []
    for repeat in range(repeats):
        order = ('ours', 'reference') if repeat % 2 == 0 else ('reference', 'ours')
        for who in order:
            if who == 'ours':
                ours_times.append(timed(ours, device)[0])
            elif reference is not None:
                ref_times.append(reference.request(op='run', save=None)['seconds'])
    result['ours'] = summary(ours_times)
    if reference is not None:
        result['reference'] = summary(ref_times)
        result['speedup'] = round(result['reference']['median_s'] / result['ours']['median_s'], 3)
        if target is not None:
            result['target_speedup'] = target
            result['meets_target'] = result['speedup'] >= target
    log(f"{name}: ours {result['ours']['median_s']} s"
        + (f", reference {result['reference']['median_s']} s, speedup {result['speedup']}" if reference else '')
        + (f", max_abs_diff {result['max_abs_diff']:.2e}" if result.get('max_abs_diff') is not None else ''))
    return result


def profile(enabled: bool, name: str, ours: Callable):
    """``--profile``: one extra, untimed run of ours under torch.profiler; its hottest operators go to stderr."""
    if not enabled:
        return
    from torch.profiler import ProfilerActivity
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with torch.profiler.profile(activities=activities, record_shapes=True) as prof:
        ours()
    log(f'--- profile of ours: {name} ---')
    log(prof.key_averages(group_by_input_shape=True).table(sort_by='self_cpu_time_total', row_limit=25))


# ----- models and inputs -----

def build_model(config: dict, device: torch.device, seed: int) -> torch.nn.Module:
    """Our model with random weights everywhere (the zero-initialised adaLN and output layers included,
    so that outputs are not trivially zero and the comparison means something)."""
    cls = FAR_Long if 'context_patch_size' in config else FAR
    torch.manual_seed(seed)
    model = cls(**config, condition_dropout=0.0)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.02 * torch.randn(parameter.shape, generator=generator))
    return model.to(device)


def save_weights(model: torch.nn.Module, workdir: Path) -> Path:
    """Our state dict, under the parameter names of the published checkpoints, for the reference to load."""
    path = workdir / 'weights.pt'
    torch.save({k: v.detach().float().cpu() for k, v in model.state_dict().items()}, path)
    return path


def reference_setup(weights: Path, config: dict, task: str, inputs: dict, workdir: Path,
                    device: torch.device, dtype: torch.dtype) -> dict:
    data = workdir / 'inputs.pt'
    torch.save({k: v.cpu() if torch.is_tensor(v) else v for k, v in inputs.items()}, data)
    return dict(model='FAR_Long' if 'context_patch_size' in config else 'FAR', config=config, weights=str(weights),
                inputs=str(data), task=task, device=device.type, dtype=str(dtype).replace('torch.', ''))


def inference_model(config: dict, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    model = build_model(config, device, seed=0).eval().requires_grad_(False)
    return model if dtype == torch.float32 else model.to(dtype=dtype)


def make_pipeline(model: torch.nn.Module) -> FARPipeline:
    pipe = FARPipeline(transformer=model, vae=None, scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generation_inputs(batch: int, context_frames: int, new_frames: int, device: torch.device,
                      dtype: torch.dtype, seed: int) -> dict:
    generator = torch.Generator().manual_seed(seed)
    shape = (LATENT['channels'], LATENT['height'], LATENT['width'])
    context = torch.randn(batch, context_frames, *shape, generator=generator) if context_frames else None
    return {
        'context': None if context is None else context.to(device, dtype),
        'noise': torch.randn(batch, new_frames, *shape, generator=generator).to(device, dtype),
        'action': torch.randint(0, NUM_ACTIONS, (batch, context_frames + new_frames), generator=generator).to(device),
    }


def our_generation(pipe: FARPipeline, inputs: dict) -> Callable[[], torch.Tensor]:
    return lambda: pipe.generate_latents(
        inputs['context'], inputs['noise'], conditions={'action': inputs['action']},
        num_inference_steps=inputs['num_inference_steps'], guidance_scale=inputs['guidance_scale'],
        use_kv_cache=inputs['use_kv_cache'], multi_level_cache=inputs['multi_level_cache'])


# ----- suites -----

def training_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, inputs: dict, device: torch.device,
                  dtype: torch.dtype) -> Callable[[], torch.Tensor]:
    """The training step both implementations run: forward, MSE loss, backward, optimizer step; returns the
    model's output."""

    def step():
        # fp32 master weights; bf16 autocast on the GPU, as accelerate's mixed precision does
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            out = model(inputs['latents'], timestep=inputs['timesteps'], conditions={'action': inputs['action']}).sample
            loss = F.mse_loss(out.float(), inputs['target'])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return out.detach()

    return step


def train_suite(args, reference, workdir, device, dtype) -> dict:
    model = build_model(SHORT_MODEL, device, seed=0).train()
    weights = save_weights(model, workdir)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    generator = torch.Generator().manual_seed(1)
    batch, frames = TRAIN['batch_size'], TRAIN['num_frames']
    shape = (batch, frames, LATENT['channels'], LATENT['height'], LATENT['width'])
    timesteps = torch.rand(batch, frames, generator=generator) * 1000
    timesteps[:, torch.rand(frames, generator=generator) < 0.1] = -1  # stochastic clean context frames
    inputs = {'latents': torch.randn(shape, generator=generator), 'timesteps': timesteps,
              'action': torch.randint(0, NUM_ACTIONS, (batch, frames), generator=generator),
              'target': torch.randn(shape, generator=generator)}
    setup = reference_setup(weights, SHORT_MODEL, 'train', inputs, workdir, device, dtype) if reference else None
    step = training_step(model, optimizer, {k: v.to(device) for k, v in inputs.items()}, device, dtype)
    case = measure('train_step', step, reference, setup, workdir, device, args.repeats, target=TRAIN['target_speedup'])
    profile(args.profile, 'train_step', step)
    return {'setup': {'model': SHORT_MODEL, **{k: v for k, v in TRAIN.items() if k != 'target_speedup'}},
            'cases': {'train_step': case}}


def generate_suite(args, reference, workdir, device, dtype) -> dict:
    model = inference_model(SHORT_MODEL, device, dtype)
    weights = save_weights(model, workdir)
    pipe = make_pipeline(model)
    cases = {}
    for name, use_kv_cache in (('no_kv_cache', False), ('kv_cache', True)):
        inputs = generation_inputs(GENERATE['batch_size'], GENERATE['context_frames'], GENERATE['generated_frames'],
                                   device, dtype, seed=2)
        inputs.update(num_inference_steps=GENERATE['num_inference_steps'], guidance_scale=GENERATE['guidance_scale'],
                      use_kv_cache=use_kv_cache, multi_level_cache=True)
        setup = reference_setup(weights, SHORT_MODEL, 'generate', inputs, workdir, device, dtype) if reference else None
        ours = our_generation(pipe, inputs)
        cases[name] = measure(f'generate {name}', ours, reference, setup, workdir, device, args.repeats,
                              target=GENERATE['target_speedups'][name])
        profile(args.profile, f'generate {name}', ours)
    setup = {k: v for k, v in GENERATE.items() if k != 'target_speedups'}
    return {'setup': {'model': SHORT_MODEL, **setup}, 'cases': cases}


def long_suite(args, reference, workdir, device, dtype) -> dict:
    spec = LONG_MODELS[args.long_model]
    config, steps = spec['model'], spec['num_inference_steps']
    model = inference_model(config, device, dtype)
    weights = save_weights(model, workdir)
    pipe = make_pipeline(model)

    def rollout(num_frames: int, flags: dict):
        """Our rollout of ``num_frames`` frames from nothing, and the reference's setup for the same."""
        inputs = generation_inputs(LONG['batch_size'], 0, num_frames, device, dtype, seed=3)
        inputs.update(num_inference_steps=steps, guidance_scale=LONG['guidance_scale'], **flags)
        setup = reference_setup(weights, config, 'generate', inputs, workdir, device, dtype) if reference else None
        return our_generation(pipe, inputs), setup

    cases = {}
    for mode, flags in LONG['modes'].items():
        # warm-up and output comparison on a short rollout that already slides the window
        ours, setup = rollout(LONG['parity_frames'], flags)
        if reference is not None:
            reference.request(op='setup', **setup)
        difference = compare(ours, reference, workdir, device)
        for num_frames in args.long_frames:
            ours, setup = rollout(num_frames, flags)
            name = f'{num_frames}_frames/{mode}'
            result = measure(f'long {name}', ours, reference, setup, workdir, device, args.long_repeats, warmup=False)
            cases[name] = dict(result, max_abs_diff_at_parity_frames=difference)
            profile(args.profile, f'long {name}', ours)
    return {'setup': {'model_size': args.long_model, 'model': config, 'num_inference_steps': steps,
                      'batch_size': LONG['batch_size'], 'context_frames': 0, 'guidance_scale': LONG['guidance_scale'],
                      'repeats': args.long_repeats, 'parity_frames': LONG['parity_frames'],
                      'note': 'single_level_cache re-encodes the whole context whenever the short-term window '
                              'slides; multi_level_cache keeps long-term frames cached and re-encodes the window'},
            'cases': cases}


# ----- command line -----

def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--suite', default=','.join(SUITES), help=f'comma-separated subset of {",".join(SUITES)}')
    parser.add_argument('--reference-path', type=Path,
                        help='exported reference implementation (folder with far/models/far_model.py); '
                             'absent: only our numbers')
    parser.add_argument('--device', choices=('cpu', 'cuda'), default='cpu')
    parser.add_argument('--repeats', type=int, default=5, help='timed runs per case and implementation (default 5)')
    parser.add_argument('--threads', type=int, default=1, help='intra-op threads of both implementations (default 1)')
    parser.add_argument('--long-model', choices=sorted(LONG_MODELS), default='small',
                        help='small: a CPU-sized FAR-Long at 4 steps; base: FAR-B-Long at 25 steps (GPU)')
    parser.add_argument('--long-frames', default=','.join(map(str, LONG['frames'])),
                        help='rollout lengths of the long suite')
    parser.add_argument('--long-repeats', type=int, default=1, help='timed runs per long rollout (default 1)')
    parser.add_argument('--profile', action='store_true', help='print our side\'s operator profile to stderr')
    args = parser.parse_args(argv)

    suites = [s.strip() for s in args.suite.split(',') if s.strip()]
    unknown = sorted(set(suites) - set(SUITES))
    if unknown or not suites:
        parser.error(f'--suite: unknown {unknown}; choose from {",".join(SUITES)}')
    args.suites = [s for s in SUITES if s in suites]
    try:
        args.long_frames = [int(f) for f in args.long_frames.split(',')]
    except ValueError:
        parser.error(f'--long-frames must be comma-separated integers, got {args.long_frames!r}')
    if min(args.long_frames + [args.repeats, args.long_repeats, args.threads]) < 1:
        parser.error('--long-frames, --repeats, --long-repeats and --threads must be >= 1')
    if args.reference_path is not None and not (args.reference_path / 'far' / 'models' / 'far_model.py').is_file():
        parser.error(f'--reference-path {args.reference_path}: no far/models/far_model.py there; export the '
                     'reference with: mkdir -p /tmp/far_ref && git -C <showlab/FAR clone> archive HEAD far options '
                     '| tar -x -C /tmp/far_ref')
    if args.device == 'cuda' and not torch.cuda.is_available():
        parser.error('--device cuda: no CUDA device is available')
    return args


def processor_name() -> str:
    cpuinfo = Path('/proc/cpuinfo')
    lines = cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []
    names = [line.split(':', 1)[1].strip() for line in lines if line.startswith('model name')]
    return names[0] if names else platform.processor() or platform.machine()


def main(argv=None):
    args = parse_args(argv)
    os.environ['OMP_NUM_THREADS'] = str(args.threads)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == 'cuda' else torch.float32  # bf16 matmuls are slow on CPU

    report = {
        'environment': {
            'device': torch.cuda.get_device_name(device) if device.type == 'cuda' else processor_name(),
            'cpu_count': os.cpu_count(), 'threads': args.threads, 'dtype': str(dtype).replace('torch.', ''),
            'attention_backend': 'flex' if device.type == 'cuda' else 'sdpa',
            'torch': torch.__version__, 'python': platform.python_version(),
            'diffusers': __import__('diffusers').__version__,
        },
        'repeats': args.repeats,
        'reference_path': str(args.reference_path) if args.reference_path else None,
    }
    suites = {'train': train_suite, 'generate': generate_suite, 'long': long_suite}
    reference = Reference(args.reference_path, args.threads) if args.reference_path else None
    try:
        with tempfile.TemporaryDirectory(prefix='far_bench_') as workdir:
            for suite in args.suites:
                report[suite] = suites[suite](args, reference, Path(workdir), device, dtype)
    finally:
        if reference is not None:
            reference.close()
    print(json.dumps(report, indent=2))


if __name__ == '__main__':
    main()
