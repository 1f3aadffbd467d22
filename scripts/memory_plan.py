"""Memory per GPU of an experiment's training under each parallel strategy, and which of them fit.

    python3 scripts/memory_plan.py -opt CONFIG [--gpus 8] [--gpu-memory-gb 80] [key.path=value ...]

Per GPU, for ``ddp``, ``zero1`` and ``fsdp`` (see ``far/trainers/parallel.py``), with P trained parameters over
N GPUs: fp32 weights 4P, fp32 gradients 4P, AdamW moments 8P, the fp32 EMA 4P (when the trainer keeps one);
``zero1`` divides the moments by N, ``fsdp`` all four, plus the two blocks it holds gathered at a time (the one
computing, the next prefetched: their weights in the compute dtype and fp32 gradients).

The CPU's attention keeps each attention matrix for the backward pass where the GPUs' fused kernels recompute it,
so the activations measured here are an upper bound of a GPU's.

Activations are measured, not modelled: the model is built at the config's width with 1 and with 2 blocks, and one
training loss at the config's clip length (its longest, for ``long_context``) and batch 1 runs forward on the CPU
under the config's precision; the bytes of every tensor autograd keeps for the backward pass are counted (each
storage once). The difference is one block's share, the rest what lies outside the blocks; activations per GPU
are (outside + blocks x per block) x the per-process batch. Not counted: the CUDA context and allocator slack (a
strategy fits when its total is at most 90% of the card), the frozen autoencoder and the data.
"""
import inspect
import sys
from pathlib import Path
from typing import Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from far.experiment import load_experiment  # noqa: E402
from far.registry import AUTOENCODERS, MODELS  # noqa: E402
from far.run import command_line  # noqa: E402
from far.trainers import Trainer  # noqa: E402
from far.utils.compile import repeated_blocks  # noqa: E402

GB = 1024 ** 3
USABLE = 0.9  # of a card's memory, the rest for the CUDA context and the allocator
STRATEGIES = ('ddp', 'zero1', 'fsdp')
COMPUTE_BYTES = {'bf16': 2, 'fp16': 2, 'no': 4}


def parse_args(argv=None):
    parser = command_line(__doc__.split('\n')[0])
    parser.add_argument('--gpus', type=int, default=8, help='GPUs (processes) the run spreads over')
    parser.add_argument('--gpu-memory-gb', type=float, default=80.0, help='memory of one GPU')
    parser.add_argument('--frame-size', type=int, help='frame size in pixels where the training data does not say it '
                        '(pre-extracted latents: 128 for Minecraft)')
    return parser.parse_args(argv)


def saved_bytes(loss_of) -> int:
    """Bytes of the tensors autograd saves for the backward pass of ``loss_of()`` (each storage once)."""
    storages = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss_of()
    return sum(storages.values())


def training_loss(options, model: torch.nn.Module, autoencoder, frame_size: Optional[int]):
    """A function computing one training loss of ``model`` on random inputs of the config's shapes, batch 1."""
    from far.objectives import FlowMatchingObjective, NextBlockObjective

    dataset = options.datasets['train']
    read = dataset.get('read')
    frames = getattr(read, 'num_frames', None) or getattr(dataset['source'], 'num_frames')
    torch.manual_seed(0)
    condition = getattr(model, 'condition', None)
    if autoencoder.content == 'tokens':
        size = autoencoder.latent_size
        tokens = torch.randint(autoencoder.codebook_size, (1, autoencoder.latent_frames(frames), size, size))
        cond = None if condition is None else condition.from_batch({condition.field: torch.zeros(1, dtype=torch.long),
                                                                    })[condition.kind]
        return lambda: NextBlockObjective()(model, model, tokens, cond)
    size = (getattr(read, 'resolution', None) or getattr(dataset['source'], 'resolution', None) or frame_size)
    if size is None:
        raise SystemExit(f'error: {options.name}: the training data does not say its frame size: pass --frame-size')
    size //= autoencoder.spatial_compression
    latents = torch.randn(1, frames, autoencoder.latent_channels, size, size)
    field = None if condition is None else condition.field
    conditions = None if condition is None else condition.from_batch(
        {field: torch.zeros((1, frames) if condition.per_frame else (1,), dtype=torch.long)})
    objective = options.trainer.get('objective') or FlowMatchingObjective()
    return lambda: objective(model, latents, model.config.short_term_ctx_winsize, conditions)


def shallow_model(block: dict, depth: int) -> torch.nn.Module:
    """The model of the YAML ``block`` (a size variant included) with ``depth`` blocks."""
    factory = MODELS.get(block['type'])
    arguments = {**getattr(factory, 'fixed_kwargs', {}), **{k: v for k, v in block.items() if k != 'type'}}
    return MODELS.entry_class(block['type'])(**{**arguments, 'num_layers': depth})


def activations_per_item(options, frame_size: Optional[int]) -> tuple:
    """(bytes outside the blocks, bytes per block) of one item's forward pass, measured (module docstring)."""
    with torch.device('meta'):
        block = options.autoencoder  # its weights are not needed, only its shapes
        autoencoder = AUTOENCODERS.build({**block, **({'checkpoint': None} if 'checkpoint' in block else {})})
    dtype = {'bf16': torch.bfloat16, 'fp16': torch.float16}.get(options.mixed_precision)
    measured = []
    for depth in (1, 2):
        model = shallow_model(options.model, depth).train()
        with torch.autocast('cpu', dtype=dtype or torch.float32, enabled=dtype is not None):
            measured.append(saved_bytes(training_loss(options, model, autoencoder, frame_size)))
    per_block = measured[1] - measured[0]
    return measured[0] - per_block, per_block


def plan(options, gpus: int, frame_size: Optional[int] = None) -> dict:
    """Bytes per GPU of each part under each strategy."""
    with torch.device('meta'):
        model = options.build_model()
    blocks = repeated_blocks(model)
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    block_params = max(sum(p.numel() for p in block.parameters()) for block in blocks)
    outside, per_block = activations_per_item(options, frame_size)
    batch = options.trainer['batch_size']
    activations = (outside + len(blocks) * per_block) * batch
    gathered = 2 * block_params * (COMPUTE_BYTES[options.mixed_precision] + 4)
    ema = options.trainer.get('ema_decay', inspect.signature(Trainer).parameters['ema_decay'].default) is not None
    full = {'weights': 4 * params, 'gradients': 4 * params, 'optimizer': 8 * params, 'EMA': 4 * params * ema}
    rows = {'ddp': dict(full),
            'zero1': {**full, 'optimizer': full['optimizer'] / gpus},
            'fsdp': {**{k: v / gpus for k, v in full.items()}}}
    rows['fsdp']['weights'] += gathered
    for row in rows.values():
        row['activations'] = activations
        row['total'] = sum(row.values())
    return {'parameters': params, 'blocks': len(blocks), 'batch': batch, 'strategies': rows}


def main(argv=None):
    args = parse_args(argv)
    options = load_experiment(args.opt, args.overrides)
    result = plan(options, args.gpus, args.frame_size)
    print(f'{args.opt}: {result["parameters"] / 1e6:.1f}M trained parameters, {result["blocks"]} blocks, batch '
          f'{result["batch"]} per GPU, {args.gpus} GPUs of {args.gpu_memory_gb:g} GB (GB per GPU)')
    parts = ('weights', 'gradients', 'optimizer', 'EMA', 'activations', 'total')
    print(f'{"strategy":<9}' + ''.join(f'{part:>12}' for part in parts) + '   fits')
    fitting = []
    for name, row in result['strategies'].items():
        fits = row['total'] <= USABLE * args.gpu_memory_gb * GB
        fitting += [name] if fits else []
        print(f'{name:<9}' + ''.join(f'{row[part] / GB:>12.1f}' for part in parts) + f'   {"yes" if fits else "no"}')
    print(f'fits: {", ".join(fitting) or "none (lower trainer.batch_size or set trainer.gradient_checkpointing)"}')
    return result


if __name__ == '__main__':
    main()
