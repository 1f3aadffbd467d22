"""Time NBP's block sampling (k tokens per step) against token-by-token sampling (k = 1) on one machine, in one run.

    python3 scripts/nbp_speed.py                                   # NBP-base, UCF-101 layout, 17 frames at 128x128
    python3 scripts/nbp_speed.py --num-layers 4 --ks 16 4 1        # a shallower model of the same width

Each k gets its own model of the same size and layout (the UCF-101 hybrid layout, text-conditioned; random weights:
the time of a step does not depend on them) and samples the same number of tokens, ``latent frames x (size / 8)^2``
(1280 for 17 frames at 128x128), with the paper's top-k 16000 and top-p 0.9, from the same seed and condition. The
KV cache makes every step feed only the tokens drawn at the step before, so the two differ in the number of forward
passes (95 against 1280) and in how many tokens each one carries (16 against 1). Prints, per k, the steps and the
seconds per video (the best of ``--repeats``), and the speed-up over the last k.
"""
import argparse
import json
import time

import torch

from far.conditions import read_class_text_ids
from far.models import NBPTransformer
from far.models.nbp import UCF101_TEXT_CONDITION
from far.pipelines import NBPPipeline, NBPSampling
from far.registry import MODELS

TEMPORAL, SPATIAL = 4, 8  # the NBP tokenizer's compression


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--model', default='NBP_base', help='NBP_base, NBP_xl or NBP_3b (the width and heads)')
    parser.add_argument('--num-layers', type=int, help='fewer layers than the size has, for a quicker run')
    parser.add_argument('--frames', type=int, default=17, help='video frames, 1 + 4 m')
    parser.add_argument('--image-size', type=int, default=128, help='frame height = width in pixels')
    parser.add_argument('--ks', type=int, nargs='+', default=[16, 1], help='tokens per step to compare')
    parser.add_argument('--repeats', type=int, default=1, help='videos sampled per k; the fastest counts')
    parser.add_argument('--threads', type=int, default=1, help='torch intra-op threads')
    args = parser.parse_args(argv)
    if (args.frames - 1) % TEMPORAL or args.image_size % SPATIAL or args.repeats < 1:
        parser.error(f'--frames must be 1 + {TEMPORAL} m, --image-size a multiple of {SPATIAL}, --repeats >= 1')
    tokens = ((args.frames - 1) // TEMPORAL + 1) * (args.image_size // SPATIAL) ** 2
    if any(k < 1 or tokens % k for k in args.ks):
        parser.error(f'every k must divide the {tokens} tokens of the video')
    return args, tokens


def time_sampling(args, k: int, tokens: int) -> dict:
    """Steps and the best wall time of sampling one video with blocks of ``k`` tokens."""
    sizes = dict(MODELS.get(args.model).fixed_kwargs)
    if args.num_layers is not None:
        sizes['num_layers'] = args.num_layers
    torch.manual_seed(0)
    model = NBPTransformer(**sizes, hybrid=True, token_number_per_step=k, condition_cfg=UCF101_TEXT_CONDITION,
                           max_positions=tokens + 8 + k).eval()
    pipe = NBPPipeline(transformer=model, options=NBPSampling(top_k=16000, top_p=0.9))
    pipe.set_progress_bar_config(disable=True)
    cond_ids = read_class_text_ids(UCF101_TEXT_CONDITION['class_text_ids'])[:1]
    pipe.generate_indices(num_tokens=2 * k, cond_ids=cond_ids, generator=torch.Generator().manual_seed(0))  # warm-up
    seconds = []
    for repeat in range(args.repeats):
        start = time.perf_counter()
        pipe.generate_indices(num_tokens=tokens, cond_ids=cond_ids, generator=torch.Generator().manual_seed(repeat))
        seconds.append(time.perf_counter() - start)
    parameters = sum(p.numel() for p in model.parameters())
    return {'k': k, 'steps': pipe.num_steps(tokens), 'seconds_per_video': min(seconds), 'parameters': parameters}


def main(argv=None):
    args, tokens = parse_args(argv)
    torch.set_num_threads(args.threads)
    layers = f', {args.num_layers} layers' if args.num_layers else ''
    print(f'{args.model}{layers}: {tokens} tokens ({args.frames} frames at {args.image_size}x{args.image_size}), '
          f'{args.threads} thread(s)')
    results = [time_sampling(args, k, tokens) for k in args.ks]
    baseline = results[-1]['seconds_per_video']
    for result in results:
        result['speedup'] = baseline / result['seconds_per_video']
        print(f"k = {result['k']:>3}: {result['steps']:>5} steps, {result['seconds_per_video']:8.1f} s per video, "
              f"{tokens / result['seconds_per_video']:7.1f} tokens/s, {result['speedup']:.2f}x "
              f"({result['parameters'] / 1e6:.0f}M parameters)")
    print(json.dumps(results))


if __name__ == '__main__':
    main()
