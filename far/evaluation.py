"""Sampling evaluation videos across processes and scoring them with an evaluation protocol.

Videos are cut into batches before they are shared out over the ranks, and every (video, trajectory)
draws its noise from its own generator: the samples, and so the metrics, do not depend on the number
of processes. Samples are gathered once, to the main process, which computes the metrics.

Everything here goes through the sampler protocol (``far.pipelines.base.VideoSampler``): any registered
sampler of any model family is evaluated the same way.
"""
import logging
from copy import deepcopy
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch.utils.data import default_collate

from far.metrics.scores import mean_curves
from far.options import Block
from far.pipelines.base import VideoSampler
from far.registry import PIPELINES
from far.utils.distributed import gather_to_main, generator_for, split_batches
from far.utils.logger import Progress

logger = logging.getLogger('far')

COPY_LAST_FRAME = 'copy_last_frame'


@dataclass(frozen=True, kw_only=True)
class SamplingOptions:
    """What sampling for validation (``trainer.validation``) and for test.py (``test``) share.

    ``sampler``: a sampler block, e.g. ``{type: FARPipeline, num_inference_steps: 25}``; ``dataset``: the key
    of ``datasets`` sampled from; ``batch_size``: videos per sampling batch (each with its trajectories);
    ``num_grid_videos``: videos in the sample grid (``grid.png``, ``grid.gif``; see ``far.grids``).
    """
    sampler: Block(PIPELINES)
    dataset: str = 'val'
    batch_size: int = 8
    num_grid_videos: int = 4

    def __post_init__(self):
        if self.batch_size < 1 or self.num_grid_videos < 1:
            raise ValueError(f'batch_size and num_grid_videos must be >= 1, got {self.batch_size} and '
                             f'{self.num_grid_videos}')


def sampling_dtype(mixed_precision: str) -> Optional[torch.dtype]:
    """The dtype to keep sampling weights in under ``mixed_precision`` (``None``: as they are): with 16-bit autocast,
    weights already in its dtype are not cast again at every pass of every step."""
    return {'bf16': torch.bfloat16, 'fp16': torch.float16}.get(mixed_precision)


def cast_for_sampling(model: torch.nn.Module, mixed_precision: str) -> torch.nn.Module:
    """``model`` cast in place to the ``sampling_dtype`` of ``mixed_precision`` (unchanged when there is none)."""
    dtype = sampling_dtype(mixed_precision)
    if dtype is not None:
        # a plain cast: diffusers' to() warns about modules to keep in float32, which these models do not have
        torch.nn.Module.to(model, dtype)
    return model


def refresh_sampling_copy(model: torch.nn.Module, copy: Optional[torch.nn.Module],
                          mixed_precision: str) -> torch.nn.Module:
    """``model``'s weights in the ``sampling_dtype`` of ``mixed_precision``: ``copy`` (the result of an earlier call)
    refreshed in place, so that what was built for it (compiled sampling engines) stays valid, or a new copy the
    first time."""
    if copy is None:
        return cast_for_sampling(deepcopy(model), mixed_precision).eval().requires_grad_(False)
    with torch.no_grad():
        for target, source in zip(copy.state_dict().values(), model.state_dict().values()):
            target.copy_(source)
    return copy


def copy_last_frame(gt: torch.Tensor, context_length: int) -> torch.Tensor:
    """The baseline prediction ``[B, F, ...]``: the context, then its last frame repeated."""
    last = gt[:, context_length - 1:context_length]
    return torch.cat([gt[:, :context_length], last.expand(-1, gt.shape[1] - context_length, *last.shape[2:])], 1)


def numbered_repeats(indices: Sequence[int]) -> List[Tuple[int, int]]:
    """``(index, r)`` for every entry of ``indices``: r is how often the index came before."""
    seen: Dict[int, int] = {}
    draws = []
    for index in indices:
        draws.append((index, seen.get(index, 0)))
        seen[index] = draws[-1][1] + 1
    return draws


@torch.no_grad()
def sample_videos(sampler: VideoSampler, dataset, indices: Sequence[int], *, context_length: int,
                  unroll_length: int, accelerator, seed: int, num_trajectories: int = 1, batch_size: int,
                  name: str = 'sampling') -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """Predict ``dataset[indices]`` from their first ``context_length`` frames, on every rank its share.

    Returns, on the main process (``(None, None)`` elsewhere), samples ``[B, n, F, 3, H, W]`` and ground truth
    ``[B, F, 3, H, W]`` in [0, 1], F = context + unroll, in the order of ``indices``; ``batch_size`` counts
    videos (each with its n trajectories). Trajectory k of video i starts from noise seeded by ``(seed, i, k)``; a
    video listed again (its r-th repeat) draws as its trajectories r n + k would.
    """
    num_frames = context_length + unroll_length
    draws = numbered_repeats(indices)
    mine = split_batches(draws, batch_size, accelerator.num_processes, accelerator.process_index)
    progress, results = Progress(len(mine), first_is_one_off=True), []
    for done, (number, batch_draws) in enumerate(mine, 1):
        batch = default_collate([dataset[i] for i, _ in batch_draws])
        gt = clips_of(batch, num_frames, f'{context_length} context + {unroll_length} predicted frames', dataset)
        condition = sampler.condition
        conditions = None if condition is None else condition.repeat(condition.from_batch(batch, num_frames),
                                                                     num_trajectories)
        generators = [generator_for('cpu', seed, i, r * num_trajectories + k) for i, r in batch_draws
                      for k in range(num_trajectories)]
        context = gt[:, :context_length].repeat_interleave(num_trajectories, 0) if context_length else None
        video = sampler.predict(context=context, num_frames=unroll_length, conditions=conditions,
                                generators=generators, height=gt.shape[-2], width=gt.shape[-1])
        results.append((number, video.float().cpu().unflatten(0, (len(batch_draws), num_trajectories)), gt))
        logger.info(f'{name}: batch {done}/{len(mine)} on this process, {progress(done, "batch")}')
    return in_order(results, accelerator)


def clips_of(batch: dict, num_frames: int, needed: str, dataset) -> torch.Tensor:
    """The first ``num_frames`` frames ``[B, F, 3, H, W]`` of a collated batch's videos; ``needed`` says why."""
    if 'video' not in batch:
        raise ValueError(f'{type(dataset).__name__} items carry no pixel video; evaluation needs `video` items')
    if batch['video'].shape[1] < num_frames:
        raise ValueError(f"the clips have {batch['video'].shape[1]} frames; {needed} are needed")
    return batch['video'][:, :num_frames]


def in_order(results: list, accelerator) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """Every rank's ``(batch number, videos, ground truth)`` gathered to the main process in batch order and
    concatenated (``(None, None)`` elsewhere)."""
    results = gather_to_main(results, accelerator)
    if results is None:
        return None, None
    results = sorted(results, key=lambda r: r[0])
    return torch.cat([r[1] for r in results]), torch.cat([r[2] for r in results])


@torch.no_grad()
def reconstruct_videos(autoencoder, dataset, indices: Sequence[int], *, num_frames: int, accelerator,
                       batch_size: int) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """``autoencoder``'s reconstructions ``[B, 1, F, 3, H, W]`` of the first ``num_frames`` frames of
    ``dataset[indices]`` and those frames ``[B, F, 3, H, W]``, in [0, 1], on the main process (``(None, None)``
    elsewhere); every rank reconstructs its share."""
    mine = split_batches(list(indices), batch_size, accelerator.num_processes, accelerator.process_index)
    progress, results = Progress(len(mine), first_is_one_off=True), []
    for done, (number, batch_indices) in enumerate(mine, 1):
        gt = clips_of(default_collate([dataset[i] for i in batch_indices]), num_frames, f'{num_frames} frames',
                      dataset)
        recon = autoencoder.reconstruct(gt.to(accelerator.device))
        results.append((number, recon.float().cpu()[:, None], gt))
        logger.info(f'reconstruction: batch {done}/{len(mine)} on this process, {progress(done, "batch")}')
    return in_order(results, accelerator)


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


def row_label(name: str) -> str:
    """How a grid row and a plot name a result: ``''`` (the evaluated sampler) is the model, the baselines by name."""
    return name.replace('_', ' ') if name else 'model'


def save_samples(sampled: Dict[str, Tuple[torch.Tensor, torch.Tensor]], indices: Sequence[int], folder: str, *,
                 context_length: int, num_grid_videos: int):
    """The mp4s of every sampled variant (``folder``, ``folder_<name>``) and one grid of the ground truth, the
    model and the baselines (first trajectories) in ``folder``."""
    from far.grids import save_grid  # drawing and writing mp4s need the image and video codecs, scoring does not
    from far.video import save_videos

    names = [f'video_{i:06d}' + (f'_repeat{r}' if r else '') for i, r in numbered_repeats(indices)]
    gt = sampled[''][1]
    for name, (samples, _) in sampled.items():
        if name != COPY_LAST_FRAME:
            save_videos(samples, gt, names, folder + (f'_{name}' if name else ''), context_length)
    rows = {'ground truth': gt, **{row_label(name): samples[:, 0] for name, (samples, _) in sampled.items()}}
    save_grid(rows, folder, names=names, context_length=context_length, num_videos=num_grid_videos)


def evaluate(sampler: VideoSampler, dataset, protocol, accelerator, *, batch_size: int, video_dir=None,
             num_grid_videos: int = SamplingOptions.num_grid_videos) -> Optional[dict]:
    """Run ``protocol`` on ``dataset``: for every seed, sample its videos and score them, with the baselines:
    copying the last context frame (prediction protocols) and the same sampler with other settings
    (``protocol.sampler_baselines()``, e.g. a sliding window). Returns the results on the main process, None
    elsewhere: ``metrics``, one entry per baseline (named in ``baselines``; each with the protocol's ``buckets`` of
    frames, if it scores them), ``per_seed``, and ``per_frame`` when the protocol scores frames: the predicted
    ``frames`` and, for ``metrics`` and each baseline, the mean over seeds of every metric's curve over them
    (``Scores.curves``).

    A protocol may also ask for the per-frame dataset fields it scores with (``frame_fields``, given to its
    ``evaluate``).
    """
    variants = {'': sampler, **{name: sampler.replace(**settings)
                                for name, settings in protocol.sampler_baselines().items()}}
    per_seed: List[dict] = []
    curves: Dict[str, list] = {}
    for seed in protocol.seeds:
        indices = protocol.select(dataset, seed)
        fields = frame_fields(dataset, indices, getattr(protocol, 'frame_fields', ()),
                              protocol.context_length + protocol.unroll_length)
        sampled = {}
        for name, variant in variants.items():
            sampled[name] = sample_videos(
                variant, dataset, indices, context_length=protocol.context_length,
                unroll_length=protocol.unroll_length, accelerator=accelerator, seed=seed,
                num_trajectories=protocol.num_trajectories, batch_size=batch_size,
                name=f'seed {seed}' + (f', {name.replace("_", " ")}' if name else ''))
        if accelerator.is_main_process:
            gt = sampled[''][1]
            if protocol.context_length > 0:
                sampled[COPY_LAST_FRAME] = (copy_last_frame(gt, protocol.context_length)[:, None], gt)
            entry = {'seed': seed}
            for name, (samples, _) in sampled.items():
                scores = entry[name or 'metrics'] = protocol.evaluate(samples, gt, **fields)
                curves.setdefault(name or 'metrics', []).append(scores.curves())
            per_seed.append(entry)
            if video_dir is not None:
                save_samples(sampled, indices, f'{video_dir}/seed_{seed}', context_length=protocol.context_length,
                             num_grid_videos=num_grid_videos)
        accelerator.wait_for_everyone()
    return summarize(protocol, per_seed, curves) if accelerator.is_main_process else None


def evaluate_reconstruction(autoencoder, dataset, protocol, accelerator, *, batch_size: int, video_dir=None,
                            num_grid_videos: int = SamplingOptions.num_grid_videos) -> Optional[dict]:
    """Run a reconstruction ``protocol`` (``far.metrics.reconstruction``) on ``dataset``: its videos reconstructed by
    ``autoencoder`` and scored; the results as ``evaluate`` returns them, on the main process (None elsewhere)."""
    [seed] = protocol.seeds
    indices = protocol.select(dataset, seed)
    recon, gt = reconstruct_videos(autoencoder, dataset, indices, num_frames=protocol.unroll_length,
                                   accelerator=accelerator, batch_size=batch_size)
    if accelerator.is_main_process:
        scores = protocol.evaluate(recon, gt)
        per_seed, curves = [{'seed': seed, 'metrics': scores}], {'metrics': [scores.curves()]}
        if video_dir is not None:
            save_samples({'': (recon, gt)}, indices, f'{video_dir}/seed_{seed}', context_length=0,
                         num_grid_videos=num_grid_videos)
    accelerator.wait_for_everyone()
    return summarize(protocol, per_seed, curves) if accelerator.is_main_process else None


def summarize(protocol, per_seed: List[dict], curves: Dict[str, list]) -> dict:
    """The results of ``evaluate`` from each seed's scores and curves (keyed ``metrics`` and by baseline)."""
    keys = [key for key in per_seed[0] if key != 'seed']
    results = {key: protocol.aggregate([entry[key] for entry in per_seed]) for key in keys}
    results['baselines'] = [key for key in keys if key != 'metrics']
    results['per_seed'] = per_seed
    if curves['metrics'][0]:
        frames = list(range(protocol.context_length, protocol.context_length + protocol.unroll_length))
        results['per_frame'] = {'frames': frames, **{key: mean_curves(c) for key, c in curves.items()}}
    return results
