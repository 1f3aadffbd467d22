"""Runs the FAR reference implementation (showlab/FAR) for ``scripts/benchmark.py``, in its own process.

The reference lives in a folder outside this project (its own package is also called ``far``), so it runs
in a child process that never imports ours. ``benchmark.py`` starts it, sends one JSON request per line on
stdin and reads one JSON reply per line; weights and inputs travel as ``torch.save`` files that both
implementations load, so both compute on exactly the same numbers.

Requests:
  {"op": "setup", "model": "FAR" | "FAR_Long", "config": {...}, "weights": PATH, "inputs": PATH,
   "task": "train" | "generate", "device": "cpu" | "cuda", "dtype": "float32" | "bfloat16"}
  {"op": "run", "save": PATH | null}   -> {"ok": true, "seconds": S}; the output goes to ``save`` when given
  {"op": "quit"}
Every reply has ``ok``; a failed request answers ``{"ok": false, "error": TRACEBACK}``.
"""
import argparse
import importlib.util
import json
import os
import sys
import time
import traceback
import types
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import FlowMatchEulerDiscreteScheduler

EXPORT_HINT = ('export it with: mkdir -p {path} && git -C <showlab/FAR clone> archive HEAD far options '
               '| tar -x -C {path}')


def load_reference(root: Path):
    """The reference's model and pipeline modules, loaded by file (its package ``__init__`` files import
    training-only dependencies). Only ``far.utils.registry``, which they import, resolves by package."""
    files = {name: root / 'far' / sub for name, sub in [
        ('far_model', 'models/far_model.py'),
        ('far_long_model', 'models/far_long_model.py'),
        ('pipeline_far', 'pipelines/pipeline_far.py'),
        ('registry', 'utils/registry.py'),
    ]}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(f'reference implementation incomplete, missing {missing}; '
                                + EXPORT_HINT.format(path=root))
    if 'far' in sys.modules:
        raise RuntimeError('a package named far is already imported; the reference must run in its own process')
    package = types.ModuleType('far')
    package.__path__ = [str(root / 'far')]
    sys.modules['far'] = package

    modules = {}
    for name in ('far_model', 'far_long_model', 'pipeline_far'):
        spec = importlib.util.spec_from_file_location(f'far_reference_{name}', files[name])
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        modules[name] = module
    return modules


class ReferenceRunner:
    """One case at a time: a reference model (and optimizer or pipeline) with its inputs, run on request."""

    def __init__(self, modules):
        self.modules = modules
        self.case = None

    def setup(self, model, config, weights, inputs, task, device, dtype):
        cls = {'FAR': self.modules['far_model'].FAR, 'FAR_Long': self.modules['far_long_model'].FAR_Long}[model]
        config = dict(config)
        if 'axes_dims_rope' in config:
            config['axes_dims_rope'] = tuple(config['axes_dims_rope'])
        net = cls(**config)
        net.load_state_dict(torch.load(weights, map_location='cpu', weights_only=True))
        # Condition dropout swaps ids for the null id at random; off, so that outputs compare exactly.
        for name in ('label_embedder', 'action_embedder'):
            if hasattr(net, name):
                getattr(net, name).dropout_prob = 0.0
        device = torch.device(device)
        dtype = getattr(torch, dtype)
        data = torch.load(inputs, map_location=device, weights_only=True)
        case = types.SimpleNamespace(task=task, net=net, data=data, device=device, dtype=dtype)
        if task == 'train':
            # Mixed precision as accelerate does it: fp32 master weights, bf16 autocast on the GPU.
            net.to(device).train()
            case.optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)
        else:
            net.to(device).eval().requires_grad_(False)
            if dtype != torch.float32:
                net.to(dtype=dtype)
            scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000)
            pipe = self.modules['pipeline_far'].FARPipeline(transformer=net, vae=None, scheduler=scheduler)
            pipe.execution_device = device
            pipe.set_progress_bar_config(disable=True)
            case.pipe = pipe
        self.case = case

    def _train_step(self):
        case, d = self.case, self.case.data
        with torch.autocast(case.device.type, dtype=case.dtype, enabled=case.dtype != torch.float32):
            out = case.net(d['latents'], timestep=d['timesteps'], conditions={'action': d['action']}).sample
            loss = F.mse_loss(out.float(), d['target'])
        loss.backward()
        case.optimizer.step()
        case.optimizer.zero_grad(set_to_none=True)
        return out.detach()

    def _generate(self):
        """The reference pipeline's ``generate`` loop in latent space (no autoencoder)."""
        case, d = self.case, self.case.data
        context = d.get('context')
        noise = d['noise'].to(case.dtype)
        context = None if context is None else context.to(case.dtype)
        num_context = 0 if context is None else context.shape[1]
        cache = {'is_cache_step': True, 'kv_cache': {} if d['use_kv_cache'] else None,
                 'cached_seqlen': 0, 'multi_level_cache_init': False}
        latents = context
        with torch.no_grad():
            for step in range(num_context, num_context + noise.shape[1]):
                i = step - num_context
                if not d.get('multi_level_cache', True):
                    # The reference only has the multi-level cache; resetting it before every frame makes
                    # each window slide re-encode the whole context: a single-level cache.
                    cache['multi_level_cache_init'] = False
                # A fresh dict per frame: the reference slices the actions inside it in place.
                frame, cache = case.pipe(
                    vision_context=latents, latents=noise[:, i:i + 1], conditions={'action': d['action'][:, :step + 1]},
                    context_cache=cache, guidance_scale=float(d['guidance_scale']),
                    num_inference_steps=int(d['num_inference_steps']))
                latents = frame if latents is None else torch.cat([latents, frame], dim=1)
        return latents

    def run(self, save):
        if self.case is None:
            raise RuntimeError('run before setup')
        sync = torch.cuda.synchronize if self.case.device.type == 'cuda' else (lambda: None)
        sync()
        start = time.perf_counter()
        out = self._train_step() if self.case.task == 'train' else self._generate()
        sync()
        seconds = time.perf_counter() - start
        if save:
            torch.save(out.float().cpu(), save)
        return seconds


def serve(runner, requests, replies):
    for line in requests:
        request = json.loads(line)
        op = request.pop('op')
        try:
            if op == 'quit':
                return
            if op == 'setup':
                runner.setup(**request)
                reply = {'ok': True}
            elif op == 'run':
                reply = {'ok': True, 'seconds': runner.run(request.get('save'))}
            else:
                raise ValueError(f'unknown op {op!r}')
        except Exception:
            reply = {'ok': False, 'error': traceback.format_exc()}
        replies.write(json.dumps(reply) + '\n')
        replies.flush()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--reference-path', type=Path, required=True,
                        help='folder holding the exported reference package (far/models/far_model.py, ...)')
    parser.add_argument('--threads', type=int, default=1)
    args = parser.parse_args()

    # Replies own the real stdout; anything the reference prints goes to stderr.
    replies = os.fdopen(os.dup(sys.stdout.fileno()), 'w')
    sys.stdout = sys.stderr
    torch.set_num_threads(args.threads)
    warnings.filterwarnings('ignore', message='.*FluxPosEmbed', category=FutureWarning)
    try:
        modules = load_reference(args.reference_path.resolve())
    except Exception:
        replies.write(json.dumps({'ok': False, 'error': traceback.format_exc()}) + '\n')
        replies.flush()
        raise SystemExit(1)
    replies.write(json.dumps({'ok': True, 'ready': True}) + '\n')
    replies.flush()
    serve(ReferenceRunner(modules), sys.stdin, replies)


if __name__ == '__main__':
    main()
