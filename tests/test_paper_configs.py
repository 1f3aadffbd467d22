"""The experiment files under options/: each one validates as train.py and test.py read it, and the paper's
configs (options/train/far, options/test/far) hold FAR's published settings: model sizes (v3 Table 1), training
recipe (v3 Table 8) and each benchmark's evaluation (v3 Tables 3-5, as FAR's own configs ran them).

No data and no weights: models and autoencoders are built on the meta device.
"""
from pathlib import Path
from typing import NamedTuple, Optional, Tuple

import pytest
import torch

import far  # noqa: F401  (fills the registries)
from far.experiment import load_experiment
from far.pipelines import FARSampling
from far.registry import AUTOENCODERS, PROTOCOLS, TRAINERS

REPO = Path(__file__).resolve().parents[1]
OPTIONS = REPO / 'options'
# study files (not experiments) and the NBP contenders, which need NBP's trainer: tests/test_convergence.py
LEFT_OUT = {*(OPTIONS / 'convergence').glob('*.yml'), *(OPTIONS / 'convergence' / 'nbp').glob('*.yml')}
EVERY_FILE = sorted(set(OPTIONS.rglob('*.yml')) - LEFT_OUT)
PAPER_FILES = sorted([*(OPTIONS / 'train' / 'far').rglob('*.yml'), *(OPTIONS / 'test' / 'far').rglob('*.yml')])
RELEASED = 'experiments/pretrained_models/FAR_Models'


def key(path: Path) -> str:
    return str(path.relative_to(OPTIONS).with_suffix(''))


# ----------------------------------------------------------------------------------------------------------
# Every file loads
# ----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('path', EVERY_FILE, ids=key)
def test_every_options_file_validates(path):
    """As train.py and test.py load it, with the groups each script needs."""
    opt = load_experiment(str(path))
    assert opt.trainer is not None or opt.test is not None
    if opt.trainer is not None:
        assert 'train' in opt.datasets
        assert opt.model is not None or 'model' not in TRAINERS.get(opt.trainer['type']).runtime_args
    if opt.test is not None:  # a model to sample, or an autoencoder's reconstructions to score
        assert opt.model is not None or PROTOCOLS.get(opt.test.protocol['type']).reconstructs


# ----------------------------------------------------------------------------------------------------------
# The paper's settings, one row per file
# ----------------------------------------------------------------------------------------------------------

class Data(NamedTuple):
    name: str             # as the released files spell it
    train: str            # data_list of `datasets.train`
    eval: str             # data_list of the test dataset
    frames: int           # training clip length
    interval: int         # frame interval, training and evaluation
    latent: bool          # training reads pre-extracted DC-AE latents
    flip: bool


UCF_GENERATION = Data('UCF101', 'datasets/ucf101/trainval.json', 'datasets/ucf101/trainval.json', 16, 3, False, True)
UCF_PREDICTION = Data('UCF101', 'datasets/ucf101/train03.json', 'datasets/ucf101/test03.json', 16, 1, False, True)
BAIR = Data('BAIR', 'datasets/bair/bair_train.json', 'datasets/bair/bair_val.json', 30, 1, False, False)
DMLAB = Data('DMLab', 'datasets/dmlab_latent/dmlab_train.json', 'datasets/dmlab/dmlab_val.json', 300, 1, True, False)
MINECRAFT = Data('Minecraft', 'datasets/minecraft_latent/minecraft_train.json',
                 'datasets/minecraft/minecraft_val.json', 300, 1, True, False)


class Protocol(NamedTuple):
    type: str
    context: int
    predicted: int
    trajectories: int
    videos: int
    every: int            # every n-th video of the test list
    seeds: Tuple[int, ...]
    metrics: Tuple[str, ...]
    annotate_context: bool


ALL = ('mse', 'psnr', 'ssim', 'lpips', 'fvd')
LATTE = Protocol('LatteProtocol', 0, 16, 1, 2048, 1, (0, 2, 4, 6), ('fvd',), False)
LATTE_10K = Protocol('LatteProtocol', 0, 16, 1, 10000, 1, (0,), ('fvd',), False)
MCVD_UCF = Protocol('MCVDProtocol', 4, 12, 100, 256, 10, (0,), ALL, False)
MCVD_BAIR_28 = Protocol('MCVDProtocol', 2, 28, 100, 256, 1, (0,), ALL, False)
MCVD_BAIR_14 = Protocol('MCVDProtocol', 2, 14, 100, 256, 1, (0,), ALL, False)
TECO = Protocol('TECOProtocol', 144, 156, 1, 256, 1, (0, 1, 2, 3), ALL, True)
TECO_FVD = Protocol('TECOFVDProtocol', 36, 264, 1, 256, 1, (0, 1, 2, 3), ('fvd',), False)


class Row(NamedTuple):
    model: str
    params: float                 # millions, condition embedding included (v3 Table 1)
    condition: Optional[str]      # 'label' (101 classes), 'action' (4 actions) or None
    frame_size: int
    data: Data
    steps: Optional[int]          # None: a test-only file
    warmup: int
    every: int                    # checkpoint and validation frequency
    protocol: Protocol
    guidance: float
    kv_cache: bool


GEN, SHORT, LONG = 'video_generation', 'short_video_prediction', 'long_video_prediction'
PAPER = {
    # Unconditional FAR-L/XL: the label-conditional size less the label table (102 x width).
    f'train/far/{GEN}/FAR_L_ucf101_cond_res128_400K_bs32': Row('FAR_L', 456.94, 'label', 128, UCF_GENERATION,
        400_000, 0, 20_000, LATTE, 2.0, True),
    f'test/far/{GEN}/FAR_L_ucf101_cond_res128_400K_bs32_sample10K': Row('FAR_L', 456.94, 'label', 128, UCF_GENERATION,
        None, 0, 0, LATTE_10K, 2.0, True),
    f'train/far/{GEN}/FAR_L_ucf101_cond_res256_400K_bs32': Row('FAR_L', 456.94, 'label', 256, UCF_GENERATION,
        400_000, 0, 20_000, LATTE, 2.0, True),
    f'train/far/{GEN}/FAR_L_ucf101_uncond_res128_400K_bs32': Row('FAR_L', 456.84, None, 128, UCF_GENERATION,
        400_000, 0, 20_000, LATTE, 1.0, True),
    f'train/far/{GEN}/FAR_L_ucf101_uncond_res256_400K_bs32': Row('FAR_L', 456.84, None, 256, UCF_GENERATION,
        400_000, 0, 20_000, LATTE, 1.0, True),
    f'train/far/{GEN}/FAR_XL_ucf101_cond_res256_400K_bs32': Row('FAR_XL', 673.82, 'label', 256, UCF_GENERATION,
        400_000, 0, 50_000, LATTE, 2.0, True),
    f'train/far/{GEN}/FAR_XL_ucf101_uncond_res256_400K_bs32': Row('FAR_XL', 673.70, None, 256, UCF_GENERATION,
        400_000, 0, 50_000, LATTE, 1.0, True),
    f'train/far/{SHORT}/FAR_B_ucf101_res64_200K_bs32': Row('FAR_B', 129.56, None, 64, UCF_PREDICTION,
        200_000, 0, 20_000, MCVD_UCF, 1.0, True),
    f'train/far/{SHORT}/FAR_B_bair_res64_200K_bs32': Row('FAR_B', 129.56, None, 64, BAIR,
        200_000, 0, 20_000, MCVD_BAIR_28, 1.0, True),
    f'test/far/{SHORT}/FAR_B_bair_res64_200K_bs32_2to14': Row('FAR_B', 129.56, None, 64, BAIR,
        None, 0, 0, MCVD_BAIR_14, 1.0, True),
    f'train/far/{LONG}/FAR_B_Long_dmlab_res64_1000K_bs32': Row('FAR_B_Long', 158.11, 'action', 64, DMLAB,
        1_000_000, 10_000, 50_000, TECO, 1.5, False),
    f'test/far/{LONG}/FAR_B_Long_dmlab_res64_1000K_bs32_36to264': Row('FAR_B_Long', 158.11, 'action', 64, DMLAB,
        None, 0, 0, TECO_FVD, -1.0, False),  # guidance -1: FAR sampled it unconditionally
    f'train/far/{LONG}/FAR_M_Long_minecraft_res128_1000K_bs32': Row('FAR_M_Long', 280.54, 'action', 128, MINECRAFT,
        1_000_000, 10_000, 50_000, TECO, 1.5, False),
    f'test/far/{LONG}/FAR_M_Long_minecraft_res128_1000K_bs32_36to264': Row('FAR_M_Long', 280.54, 'action', 128,
        MINECRAFT, None, 0, 0, TECO_FVD, 1.5, False),
}
CONDITIONS = {'label': {'type': 'label', 'num_classes': 101}, 'action': {'type': 'action', 'num_action_classes': 4},
              None: None}
TRAINED = [name for name, row in PAPER.items() if row.steps is not None]
RELEASED_KIND = {'label': 'Cond', None: 'Uncond', 'action': 'Action'}


def released_files(name: str, row: Row) -> tuple:
    """The beginnings of the released DC-AE and FAR file names for a row: they say the data, the resolution, and
    for FAR the task, the size and the condition (a hash and .pth follow)."""
    task = Path(name).parts[2]
    return (f'{RELEASED}/dcae/DCAE_{row.data.name}_Res{row.frame_size}-',
            f'{RELEASED}/{task}/{row.model}_{row.data.name}_{RELEASED_KIND[row.condition]}{row.frame_size}-')


def test_the_table_covers_every_paper_config(experiment_file):
    assert sorted(PAPER) == [key(p) for p in PAPER_FILES]
    for name in PAPER:  # experiments/<name>/ is found from the file name, as in FAR
        assert experiment_file(name).name == Path(name).name


@pytest.mark.parametrize('name', PAPER)
def test_model_has_the_paper_size(name, experiment_file):
    row, opt = PAPER[name], experiment_file(name)
    assert opt.model['type'] == row.model
    assert opt.model.get('condition_cfg') == CONDITIONS[row.condition]
    assert opt.model['reference_dtype_rounding']  # bf16-rounded timesteps and positions, as the released models
    with torch.device('meta'):
        model = opt.build_model()
    assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(row.params, abs=0.01)
    # the loss window: whole clips, except FAR-Long's 16-frame short-term window over 300-frame episodes
    assert model.config.short_term_ctx_winsize == (16 if row.data.frames == 300 else row.data.frames)
    if model.has_long_term_stream:
        assert model.config.context_patch_size == 4  # 4 tokens per distant frame


@pytest.mark.parametrize('name', PAPER)
def test_autoencoder_gives_64_tokens_of_32_channels(name, experiment_file):
    row, opt = PAPER[name], experiment_file(name)
    block = opt.autoencoder
    assert block['type'] == 'DCAutoencoder' and (REPO / block['config']).is_file()
    assert block['checkpoint'].startswith(released_files(name, row)[0]) and block['checkpoint'].endswith('.pth')
    assert block.get('dtype') == 'bfloat16'  # FAR ran the frozen DC-AE in bf16
    with torch.device('meta'):
        autoencoder = AUTOENCODERS.build({**block, 'checkpoint': None})
        model = opt.build_model()
    assert autoencoder.latent_channels == model.config.in_channels == 32
    assert row.frame_size // autoencoder.spatial_compression == 8


@pytest.mark.parametrize('name', TRAINED)
def test_training_follows_the_paper(name, experiment_file):
    row, opt = PAPER[name], experiment_file(name)
    trainer = opt.trainer
    assert (opt.mixed_precision, opt.seed, opt.pretrained) == ('bf16', 0, None)
    # v3 Table 8: AdamW 1e-4, constant schedule, batch 32 (8 processes x 4), EMA 0.9999 (constant, as the reference's)
    assert trainer['type'] == 'FARTrainer' and trainer['batch_size'] == 4
    optimizer = trainer['optimizer']
    assert (optimizer.lr, optimizer.weight_decay, tuple(optimizer.betas)) == (1e-4, 0.0, (0.9, 0.999))
    assert (trainer['lr_schedule'].name, trainer['lr_schedule'].warmup_steps) == ('constant', row.warmup)
    assert (trainer['ema_decay'], trainer['max_grad_norm'], trainer['total_steps']) == (0.9999, 1.0, row.steps)
    assert trainer['ema_warmup'] is False
    objective = trainer['objective']
    assert (objective.clean_context_ratio, objective.weighting_scheme) == (0.1, 'logit_normal')
    assert objective.scheduler.num_train_timesteps == 1000 and objective.scheduler.shift == 1.0
    assert objective.training_type == ('long_context' if row.data.latent else 'base')
    assert (trainer['checkpoint'].every, trainer['checkpoint'].keep) == (row.every, None)

    validation = trainer['validation']
    sampler = FARSampling(**{k: v for k, v in validation.sampler.items() if k != 'type'})
    assert validation.every == row.every and validation.sampler['type'] == 'FARPipeline'
    assert (validation.context_length, validation.unroll_length) == (row.protocol.context, row.protocol.predicted)
    assert (sampler.num_inference_steps, sampler.guidance_scale, sampler.use_kv_cache) == \
        (50, row.guidance, row.kv_cache)

    source, read = opt.datasets['train']['source'], opt.datasets['train']['read']
    assert (source['type'], source['path'], read.num_frames, read.frame_interval) == \
        ('data_list', row.data.train, row.data.frames, row.data.interval)
    assert (source.settings['use_latent'], read.flip) == (row.data.latent, row.data.flip)
    assert read.resolution in (None, row.frame_size)


def protocol_settings(block: dict) -> dict:
    """Every argument the protocol is built with, defaults and fixed ones included."""
    # latte fixes these inside its constructor: no context frames, one sample per video
    fixed = {'context_length': 0, 'num_trajectories': 1, 'every': 1, 'annotate_context': False}
    keys = ('context_length', 'unroll_length', 'num_trajectories', 'num_videos', 'every', 'seeds', 'metrics',
            'annotate_context', 'reference_quirks')
    found = {key: block.settings.get(key) for key in keys}
    return {**fixed, **{key: value for key, value in found.items() if value is not None}}


@pytest.mark.parametrize('name', PAPER)
def test_evaluation_follows_the_paper(name, experiment_file):
    row, opt = PAPER[name], experiment_file(name)
    test = opt.test
    assert test.checkpoint.startswith(released_files(name, row)[1]) and test.checkpoint.endswith('.pth')
    sampler = FARSampling(**{k: v for k, v in test.sampler.items() if k != 'type'})
    assert test.sampler['type'] == 'FARPipeline' and sampler.scheduler.shift == 1.0
    assert (sampler.num_inference_steps, sampler.guidance_scale, sampler.use_kv_cache) == (50, row.guidance, row.kv_cache)
    settings = protocol_settings(test.protocol)
    expected = row.protocol
    assert test.protocol['type'] == expected.type
    assert (settings['context_length'], settings['unroll_length']) == (expected.context, expected.predicted)
    assert (settings['num_trajectories'], settings['num_videos'], settings['every']) == \
        (expected.trajectories, expected.videos, expected.every)
    assert tuple(settings['seeds']) == expected.seeds and tuple(settings['metrics']) == expected.metrics
    assert settings['annotate_context'] == expected.annotate_context
    assert settings['reference_quirks']  # scored like the published numbers

    data = opt.datasets[test.dataset]
    source, read = data['source'], data['read']
    assert source['path'] == row.data.eval and data['split'] != 'train'  # frames from 0, centre crop
    assert read.num_frames == expected.context + expected.predicted
    assert read.frame_interval == row.data.interval and not source.settings['use_latent']
    assert read.resolution in (None, row.frame_size)
