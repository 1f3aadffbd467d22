"""Sampling evaluation videos across processes and scoring them with an evaluation protocol.

Videos are cut into batches before they are shared out over the ranks, and every (video, trajectory)
draws its noise from its own generator: the samples, and so the metrics, do not depend on the number
of processes. Samples are gathered once, to the main process, which computes the metrics.
"""
import functools
import logging
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch.utils.data import default_collate

from far.utils.distributed import gather_to_main, generator_for, split_batches
from far.utils.logger import Progress
from far.utils.video import save_videos

logger = logging.getLogger('far')


def model_conditions(model, batch: dict) -> Optional[Dict[str, torch.Tensor]]:
    """The conditions ``model`` takes, from a collated batch: ``{'label': [B]}``, ``{'action': [B, T]}`` or None."""
    cfg = model.config.condition_cfg
    if cfg is None:
        return None
    kind = cfg['type']
    if kind not in batch:
        raise ValueError(f"the model is {kind}-conditioned (condition_cfg={cfg}) but the dataset items carry no "
                         f"'{kind}'; use a dataset that provides it or an unconditional model")
    return {kind: batch[kind]}


def copy_last_frame(gt: torch.Tensor, context_length: int) -> torch.Tensor:
    """The baseline prediction ``[B, F, ...]``: the context, then its last frame repeated."""
    last = gt[:, context_length - 1:context_length]
    return torch.cat([gt[:, :context_length], last.expand(-1, gt.shape[1] - context_length, *last.shape[2:])], 1)


@torch.no_grad()
def sample_videos(pipeline, dataset, indices: Sequence[int], context_length: int, unroll_length: int,
                  accelerator, seed: int, num_trajectories: int = 1, batch_size: int = 8,
                  num_inference_steps: int = 25, guidance_scale: float = 1.0, use_kv_cache: bool = True,
                  name: str = 'sampling',
                  context_window: Optional[int] = None) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """Predict ``dataset[indices]`` from their first ``context_length`` frames, on every rank its share.

    Returns, on the main process (``(None, None)`` elsewhere), samples ``[B, n, F, 3, H, W]`` and ground truth
    ``[B, F, 3, H, W]`` in [0, 1], F = context + unroll, in the order of ``indices``; ``batch_size`` counts
    videos (each with its n trajectories). Trajectory k of video i starts from noise seeded by ``(seed, i, k)``.
    ``context_window``: sample with the pipeline's sliding window of that many frames.
    """
    num_frames = context_length + unroll_length
    model = pipeline.transformer
    mine = split_batches(list(indices), batch_size, accelerator.num_processes, accelerator.process_index)
    progress, results = Progress(len(mine)), []
    for done, (number, batch_indices) in enumerate(mine, 1):
        batch = default_collate([dataset[i] for i in batch_indices])
        if 'video' not in batch:
            raise ValueError(f'{type(dataset).__name__} items carry no pixel video; evaluation needs `video` items')
        gt = batch['video'][:, :num_frames]
        if gt.shape[1] < num_frames:
            raise ValueError(f'the clips have {gt.shape[1]} frames; {context_length} context + {unroll_length} '
                             f'predicted frames are needed')
        conditions = model_conditions(model, batch)
        if conditions is not None:
            conditions = {k: v[:, :num_frames].repeat_interleave(num_trajectories, 0) if k == 'action'
                          else v.repeat_interleave(num_trajectories, 0) for k, v in conditions.items()}
        generators = [generator_for('cpu', seed, i, k) for i in batch_indices for k in range(num_trajectories)]
        context = gt[:, :context_length].repeat_interleave(num_trajectories, 0) if context_length else None
        video = pipeline.generate(
            context_video=context, num_frames=unroll_length, conditions=conditions, generator=generators,
            num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, use_kv_cache=use_kv_cache,
            context_window=context_window, batch_size=len(generators), height=gt.shape[-2], width=gt.shape[-1])
        results.append((number, video.float().cpu().unflatten(0, (len(batch_indices), num_trajectories)), gt))
        logger.info(f'{name}: batch {done}/{len(mine)} on this process, {progress(done, "batch")}')
    results = gather_to_main(results, accelerator)
    if results is None:
        return None, None
    results = sorted(results, key=lambda r: r[0])
    return torch.cat([r[1] for r in results]), torch.cat([r[2] for r in results])


def frame_fields(dataset, indices: Sequence[int], names: Sequence[str], num_frames: int) -> Dict[str, torch.Tensor]:
    """Per-frame fields ``names`` of ``dataset[indices]`` (e.g. MazeMemory's ``revisit``), each ``[B, num_frames]``."""
    if not names:
        return {}
    items = [dataset[i] for i in indices]
    missing = [name for name in names if name not in items[0]]
    if missing:
        raise ValueError(f'the protocol scores frames by the per-frame dataset fields {list(names)}, but '
                         f'{type(dataset).__name__} items carry no {missing}; evaluate on a dataset that has them '
                         f'(e.g. MazeMemory)')
    return {name: torch.stack([item[name][:num_frames] for item in items]) for name in names}


def evaluate(pipeline, dataset, protocol, accelerator, video_dir=None, batch_size: int = 8,
             num_inference_steps: int = 25, guidance_scale: float = 1.0,
             use_kv_cache: bool = True) -> Optional[dict]:
    """Run ``protocol`` on ``dataset``: for every seed, sample its videos and score them, and for prediction
    protocols the copy-last-frame baseline too. Returns the results on the main process, None elsewhere.

    A protocol may also ask for the per-frame dataset fields it scores with (``frame_fields``, given to its
    ``evaluate``) and for the same model sampled with a sliding window (``sliding_window_baseline``: frames).
    """
    per_seed: List[dict] = []
    window = getattr(protocol, 'sliding_window_baseline', None)
    for seed in protocol.seeds:
        indices = protocol.select(dataset, seed)
        fields = frame_fields(dataset, indices, getattr(protocol, 'frame_fields', ()),
                              protocol.context_length + protocol.unroll_length)
        sample = functools.partial(
            sample_videos, pipeline, dataset, indices, protocol.context_length, protocol.unroll_length, accelerator,
            seed, protocol.num_trajectories, batch_size, num_inference_steps, guidance_scale, use_kv_cache)
        samples, gt = sample(name=f'seed {seed}')
        windowed = sample(name=f'seed {seed}, sliding window', context_window=window)[0] if window else None
        if accelerator.is_main_process:
            entry = {'seed': seed, 'metrics': protocol.evaluate(samples, gt, **fields)}
            if protocol.context_length > 0:
                baseline = copy_last_frame(gt, protocol.context_length)[:, None]
                entry['copy_last_frame'] = protocol.evaluate(baseline, gt, **fields)
            if windowed is not None:
                entry['sliding_window'] = protocol.evaluate(windowed, gt, **fields)
            per_seed.append(entry)
            if video_dir is not None:
                names = [f'video_{i:06d}' for i in indices]
                save_videos(samples, gt, names, f'{video_dir}/seed_{seed}', protocol.context_length)
                if windowed is not None:
                    save_videos(windowed, gt, names, f'{video_dir}/seed_{seed}_sliding_window', protocol.context_length)
        accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        return None
    results = {'metrics': protocol.aggregate([e['metrics'] for e in per_seed])}
    if protocol.context_length > 0:
        results['copy_last_frame'] = protocol.aggregate([e['copy_last_frame'] for e in per_seed])
    if window:
        results['sliding_window'] = protocol.aggregate([e['sliding_window'] for e in per_seed])
    results['per_seed'] = per_seed
    return results
