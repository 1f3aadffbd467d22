"""Training an autoencoder (FAR's DC-AE, NBP's video tokenizer): reconstruction, perceptual and adversarial losses,
validated by reconstruction metrics."""
import json
import logging
from dataclasses import dataclass
from typing import Dict, Literal, Optional, Tuple

import torch
import torch.nn as nn
from accelerate.utils import gather_object
from torch.utils.data import default_collate

from far.losses.autoencoder_loss import AutoencoderLoss
from far.models.interfaces import Autoencoder
from far.registry import METRICS, TRAINERS
from far.trainers.autoencoder_networks import AutoencoderWithDiscriminator
from far.trainers.base import OptimizerOptions, Trainer
from far.trainers.parallel import allow_unused_parameters
from far.utils.distributed import split_batches
from far.grids import save_grid
from far.video import save_videos

logger = logging.getLogger('far')


@dataclass(frozen=True)
class ReconstructionValidation:
    """Every ``every`` steps, reconstruct the first ``num_videos`` videos of ``datasets[dataset]`` with the
    sampling (EMA) weights, score them with ``metrics`` (``fvd``, the rFVD, needs clips of 9+ frames; the
    scores go to the training curves) and save the first ``num_saved`` next to their originals, with their grid,
    under ``samples/step-<step>/``."""
    every: int = 10_000
    dataset: str = 'val'
    num_videos: int = 32
    batch_size: int = 8
    metrics: Tuple[Literal['mse', 'psnr', 'ssim', 'lpips', 'fvd'], ...] = ('psnr', 'ssim', 'lpips')
    num_saved: int = 4

    def __post_init__(self):
        if min(self.every, self.num_videos, self.batch_size, self.num_saved) < 1:
            raise ValueError(f'validation: every, num_videos, batch_size and num_saved must be >= 1, got {self}')


@TRAINERS.register()
class AutoencoderTrainer(Trainer):
    """Trains the ``DCAutoencoder`` or ``NBPTokenizer`` of the YAML ``autoencoder`` block (from scratch, or from its
    ``checkpoint``) on the ``'video'`` clips of ``datasets['train']`` with :class:`AutoencoderLoss`, which scores
    every frame as an image (the tokenizer encodes whole clips of 1 + 4 m frames; its FSQ needs no codebook loss).

    One AdamW updates the autoencoder and the discriminator together: FAR's recipe uses the same optimiser
    settings for both and takes both losses from the same forward. One difference: ``max_grad_norm`` clips
    the gradients of both networks together, where FAR clips the autoencoder's alone (the same until
    ``disc_start``). ``batch_size`` counts clips.

    A checkpoint loads back as ``autoencoder: {type: DCAutoencoder, config: ..., checkpoint:
    experiments/<name>/checkpoints/checkpoint-<step>}`` (its EMA weights), or ``checkpoint:
    experiments/<name>/checkpoints`` (the newest; see ``far.utils.checkpoints.read_autoencoder_weights``).
    """

    runtime_args = ('accelerator', 'autoencoder', 'datasets', 'folder', 'seed', 'config')
    model_families = ()  # it trains the autoencoder alone
    autoencoder_families = ('DC-AE', 'NBP-tokenizer')

    def __init__(
        self,
        *,
        accelerator,
        autoencoder: Autoencoder,
        optimizer: OptimizerOptions = OptimizerOptions(betas=(0.5, 0.9)),
        loss: AutoencoderLoss = AutoencoderLoss(),
        validation: Optional[ReconstructionValidation] = None,
        **options,
    ):
        model = AutoencoderWithDiscriminator(autoencoder, loss.discriminator())
        if accelerator.num_processes > 1 and loss.disc_weight > 0:
            # Each phase leaves some parameters without gradient (the discriminator before disc_start,
            # the encoder after it).
            allow_unused_parameters(accelerator)
            if accelerator.device.type == 'cuda':  # BatchNorm statistics over the global batch
                model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        super().__init__(accelerator=accelerator, model=model, optimizer=optimizer, validation=validation, **options)
        self.loss = loss
        self.perceptual = loss.perceptual_network()
        if self.perceptual is not None:
            self.perceptual.to(accelerator.device)
        self.metrics = {name: METRICS.get(name)() for name in validation.metrics} if validation is not None else {}

    def train_step(self, batch: dict, step: int) -> Dict[str, torch.Tensor]:
        if 'video' not in batch:
            raise ValueError('the autoencoder trains on pixels: the training items carry no video (use_latent: false)')
        video = batch['video'] * 2 - 1
        recon, logits = self.model(video, self.loss.adversarial(step))
        last_layer = self.accelerator.unwrap_model(self.model).last_layer()
        with self.accelerator.autocast():
            return self.loss(video.flatten(0, 1), recon.flatten(0, 1), self.perceptual, last_layer, logits)

    @torch.no_grad()
    def reconstruct(self, dataset, indices) -> Tuple[torch.Tensor, torch.Tensor]:
        """Reconstructions and originals ``[B, T, 3, H, W]`` in [0, 1] of ``dataset[indices]``, on every rank,
        each rank reconstructing its share with the sampling weights."""
        opt, acc = self.validation, self.accelerator
        network = self.sampling_model
        network.eval()
        results = []
        for number, batch_indices in split_batches(list(indices), opt.batch_size, acc.num_processes,
                                                   acc.process_index):
            video = default_collate([dataset[i] for i in batch_indices])['video']
            with acc.autocast():
                recon = network.reconstruct(video.to(acc.device) * 2 - 1)
            results.append((number, ((recon.float() + 1) / 2).clamp(0, 1).cpu(), video))
        acc.unwrap_model(self.model).train()
        results = sorted(gather_object(results), key=lambda r: r[0])
        return torch.cat([r[1] for r in results]), torch.cat([r[2] for r in results])

    def validate(self, step: int):
        opt, acc = self.validation, self.accelerator
        dataset = self.datasets[opt.dataset]
        recon, video = self.reconstruct(dataset, range(min(opt.num_videos, len(dataset))))
        if acc.is_main_process:
            scores = {}
            for name, metric in self.metrics.items():
                # Per-frame metrics give [B, T] scores, FVD one number.
                scores[name] = float(torch.as_tensor(metric(recon, video, device=acc.device)).mean())
            folder = self.folder / 'samples' / f'step-{step:07d}'
            count = min(opt.num_saved, len(video))
            names = [f'video_{i:04d}' for i in range(count)]
            paths = save_videos(recon[:count, None], video[:count], names, folder, context_length=0)
            save_grid({'original': video, 'reconstruction': recon}, folder, names=names, context_length=0,
                      num_videos=count)
            (folder / 'metrics.json').write_text(json.dumps(scores, indent=1))
            self.record(step, {f'val/{k}': v for k, v in scores.items()}, redraw=True)
            logger.info(f'validation at step {step}: ' + ', '.join(f'{k} {v:.4f}' for k, v in scores.items()))
            if self.wandb is not None:
                import wandb
                self.wandb.log({**{f'val/{k}': v for k, v in scores.items()},
                                'val/grid': wandb.Image(str(folder / 'grid.png')),
                                **{f'val/{p.stem}': wandb.Video(str(p), format='mp4') for p in paths}}, step=step)
        acc.wait_for_everyone()
