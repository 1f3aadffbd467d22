"""The NBP paper's experiments under options/ (train/nbp, test/nbp, train/nbp_tokenizer, test/nbp_tokenizer): model
sizes and layouts, tokens and sampling steps (UCF-101: 1280 tokens in 95 steps; K600: 768 predicted tokens in 48
steps), the training recipe of the NBP scripts, the data as the reference reads it (lists, frame rate, clip start,
squashed frames) and the evaluation settings (gFVD on the first 16 of 17 frames, top-k 16000, top-p 0.9; the
tokenizers' reconstructions as tokenizer_eval.py scores them).

No data and no weights: models and tokenizers are built on the meta device.
"""
import re
from pathlib import Path
from typing import NamedTuple, Optional

import pytest
import torch

import far  # noqa: F401  (fills the registries)
from far.pipelines import NBPPipeline, NBPSampling
from far.registry import AUTOENCODERS, PROTOCOLS

OPTIONS = Path(__file__).resolve().parents[1] / 'options'
NBP_FILES = sorted([*(OPTIONS / 'train' / 'nbp').glob('*.yml'), *(OPTIONS / 'test' / 'nbp').glob('*.yml')])
TOKENIZER_FILES = sorted((OPTIONS / 'train' / 'nbp_tokenizer').glob('*.yml'))
TOKENIZER_TEST_FILES = sorted((OPTIONS / 'test' / 'nbp_tokenizer').glob('*.yml'))
CLASS_TABLE = 'options/model_cfg/nbp/ucf101_class_text_ids.json'
RELEASED = 'experiments/pretrained_models/NBP'


def key(path: Path) -> str:
    return str(path.relative_to(OPTIONS).with_suffix(''))


class Recipe(NamedTuple):
    lr: float
    warmup: int
    steps: int
    batch_per_process: int      # x the processes of the file's command x accumulation = the paper's batch
    precision: str
    accumulation: int = 1       # batches per update (the scripts' grad_accumulates)


class Row(NamedTuple):
    data: str                   # the dataset entry
    size: str                   # NBP_<size>
    total_params: int           # the model with this vocabulary (the reference's counts, from its configs)
    non_embedding: int          # without the token embedding and the head (the paper's "700M" for base)
    condition: Optional[dict]
    hybrid: bool
    context: int                # given frames
    steps: int                  # sampling steps for the 17-frame video
    short: str                  # the data as the released files spell it
    recipe: Optional[Recipe]    # None: a test-only file
    protocol: str
    num_videos: Optional[int]
    fvd_resolution: Optional[int]
    fps: int                    # the reference's frame rate of the data, in training and in evaluation
    eval_clip: dict             # the evaluation data: list, frame rate, clip start
    trained_here: bool          # test.checkpoint: `latest` (trained by this file), else the released model


UCF_TEXT = {'type': 'text', 'vocab_size': 32000, 'num_tokens': 8, 'class_text_ids': CLASS_TABLE}
UCF_TRAIN_LIST = 'options/data_lists/ucf101_split1_train.json'
K600_VAL_LIST = 'options/data_lists/k600_val.json'
# UCF-101: 10,000 samples against centre clips of the training list at 8 fps
UCF = dict(data='UCF101', condition=UCF_TEXT, hybrid=True, context=0, steps=95,
           short='ucf', protocol='NBPReferenceProtocol', num_videos=10_000, fvd_resolution=None, fps=8,
           eval_clip={'path': UCF_TRAIN_LIST, 'fps': 8, 'clip_start': 'center'})
# K600 training files: the clean protocol, every validation video once, its centre clip at the training rate
K600 = dict(data='K600', condition=None, hybrid=False, context=5, steps=48, short='k600',
            protocol='MCVDProtocol', num_videos=None, fvd_resolution=64, fps=16,
            eval_clip={'path': K600_VAL_LIST, 'fps': 16, 'clip_start': 'center'})
# the paper's: 50,000 samples cycling the validation list, random clips at its evaluation's default 25 fps
K600_PAPER_EVALUATION = {**K600, 'protocol': 'NBPReferenceProtocol', 'num_videos': 50_000,
                         'eval_clip': {'path': K600_VAL_LIST, 'fps': 25, 'clip_start': 'random'}}
# (size, UCF-101 total, K600 total, without embeddings and head): the reference's GPT built from its scripts' sizes
SIZES = {'base': (982_785_024, 884_431_872, 687_823_872), 'xl': (1_612_369_920, 1_481_232_384, 1_219_088_384),
         '3b': (4_230_813_696, 4_034_107_392, 3_640_891_392)}


def ucf(size: str, **row) -> Row:
    return Row(**UCF, size=size, total_params=SIZES[size][0], non_embedding=SIZES[size][2], **row)


def k600(size: str, data: dict = K600, **row) -> Row:
    return Row(**data, size=size, total_params=SIZES[size][1], non_embedding=SIZES[size][2], **row)


# train_ucf.sh: lr 6e-4 and 64 processes x 4 clips at every size; train_k600.sh: lr 1e-3 / 5e-4 / 2e-4, batch 64
PAPER = {
    'train/nbp/NBP_base_ucf101_cond_res128_100K_bs256': ucf('base', recipe=Recipe(6e-4, 5_000, 100_000, 4, 'bf16'),
                                                          trained_here=True),
    'train/nbp/NBP_xl_ucf101_cond_res128_100K_bs256': ucf('xl', recipe=Recipe(6e-4, 5_000, 100_000, 4, 'bf16'),
                                                        trained_here=True),
    'train/nbp/NBP_3b_ucf101_cond_res128_100K_bs256': ucf('3b', recipe=Recipe(6e-4, 5_000, 100_000, 4, 'bf16'),
                                                        trained_here=True),
    'test/nbp/NBP_base_ucf101_cond_res128_sample10K': ucf('base', recipe=None, trained_here=False),
    'train/nbp/NBP_base_k600_res128_bs64': k600('base', recipe=Recipe(1e-3, 10_000, 4_000_000, 2, 'no'),
                                                trained_here=True),
    'train/nbp/NBP_xl_k600_res128_bs64': k600('xl', recipe=Recipe(5e-4, 10_000, 4_000_000, 1, 'no'),
                                              trained_here=True),
    # the script counts 4M steps and 10k warmup steps in batches, 2 per update
    'train/nbp/NBP_3b_k600_res128_bs64': k600('3b', recipe=Recipe(2e-4, 5_000, 2_000_000, 1, 'bf16', accumulation=2),
                                              trained_here=True),
    'test/nbp/NBP_base_k600_res128_5to12': k600('base', K600_PAPER_EVALUATION, recipe=None, trained_here=False),
}


def released_model(row: Row, opt) -> str:
    """The released NBP file a row evaluates: named by its data, size, block size and attention (hybrid or not)."""
    hybrid = '_hybrid' if opt.model['hybrid'] else ''
    return f"{RELEASED}/{row.short}_base_nbp{opt.model['token_number_per_step']}{hybrid}.safetensors"


def test_the_table_covers_every_nbp_config(experiment_file):
    assert sorted(PAPER) == [key(p) for p in NBP_FILES]
    for name in PAPER:
        assert experiment_file(name).name == Path(name).name


@pytest.mark.parametrize('name', PAPER)
def test_model_tokens_and_steps_are_the_papers(name, experiment_file):
    row, opt = PAPER[name], experiment_file(name)
    assert opt.model['type'] == f'NBP_{row.size}' and opt.model['token_number_per_step'] == 16
    assert opt.model['hybrid'] is row.hybrid and opt.model.get('condition_cfg') == row.condition
    with torch.device('meta'):
        model = opt.build_model()
        tokenizer = AUTOENCODERS.build({**opt.autoencoder, 'checkpoint': None})
    assert opt.autoencoder['checkpoint'] == f'{RELEASED}/magvit2_{row.short}.pt'
    total = sum(p.numel() for p in model.parameters())
    non_embedding = total - model.tok_emb.weight.numel() - model.head.weight.numel()
    assert (total, non_embedding) == (row.total_params, row.non_embedding)
    assert model.config.video_vocab_size == tokenizer.codebook_size == 64000
    assert sum(p.numel() for p in tokenizer.parameters()) == 370_372_105  # the released tokenizer's layout

    tokens = tokenizer.latent_frames(17) * tokenizer.latent_size ** 2
    given = tokenizer.latent_frames(row.context) * tokenizer.latent_size ** 2 if row.context else 0
    assert (tokens, given) == (1280, 512 if row.context else 0)
    assert NBPPipeline(transformer=model).num_steps(tokens, given) == row.steps


@pytest.mark.parametrize('name', [n for n, row in PAPER.items() if row.recipe is not None])
def test_training_follows_the_nbp_scripts(name, experiment_file):
    row, opt = PAPER[name], experiment_file(name)
    recipe, trainer = row.recipe, opt.trainer
    assert trainer['type'] == 'NBPTrainer' and opt.mixed_precision == recipe.precision
    optimizer = trainer['optimizer']
    assert (optimizer.lr, tuple(optimizer.betas), optimizer.weight_decay) == (recipe.lr, (0.9, 0.95), 0.01)
    assert tuple(optimizer.decayed_modules) == ('Linear',)
    assert (trainer['lr_schedule'].name, trainer['lr_schedule'].warmup_steps) == ('timm_cosine', recipe.warmup)
    assert (trainer['total_steps'], trainer['batch_size'], trainer.settings['gradient_accumulation']) == (
        recipe.steps, recipe.batch_per_process, recipe.accumulation)
    # the scripts clip the sum of the accumulated gradients at 1.0, the trainer their mean
    assert trainer['max_grad_norm'] == 1.0 / recipe.accumulation
    assert trainer['ema_decay'] is None and opt.model['dropout'] == 0.1
    processes = re.search(r'--num_processes (\d+) train\.py', (OPTIONS / f'{name}.yml').read_text()).group(1)
    batch = int(processes) * recipe.batch_per_process * recipe.accumulation
    assert batch == {'UCF101': 256, 'K600': 64}[row.data]  # the paper's
    train = opt.datasets['train']
    read = train['read']
    assert (train['type'], read.num_frames, read.resolution, read.flip) == (row.data, 17, 128, False)
    assert (read.resize, read.fps, read.clip_start, read.frame_interval) == ('squash', row.fps, None, 1)
    if row.data == 'UCF101':  # split 1's training list, as the reference trained
        assert train['source']['path'] == UCF_TRAIN_LIST
    validation = trainer['validation']
    assert (validation.context_length, validation.context_length + validation.unroll_length) == (row.context, 17)


@pytest.mark.parametrize('name', PAPER)
def test_evaluation_follows_the_paper(name, experiment_file):
    row, opt = PAPER[name], experiment_file(name)
    test = opt.test
    assert test.checkpoint == ('latest' if row.trained_here else released_model(row, opt))
    sampler = NBPSampling(**{k: v for k, v in test.sampler.items() if k != 'type'})
    assert test.sampler['type'] == 'NBPPipeline' and sampler == NBPSampling(top_k=16000, top_p=0.9)
    protocol = PROTOCOLS.build({**test.protocol, 'metrics': ['psnr']})  # the same settings without loading I3D
    fvd = test.protocol['metrics'][-1]
    assert test.protocol['type'] == row.protocol and fvd['type'] == 'fvd'
    if row.protocol == 'NBPReferenceProtocol':  # PSNR, SSIM and LPIPS (VGG, the reference's) beside gFVD
        assert test.protocol['metrics'][:-1] == ['psnr', 'ssim', {'type': 'lpips', 'net': 'vgg'}]
        assert opt.mixed_precision == 'no' or row.recipe is not None  # the released weights: sampled in float32
    assert (protocol.context_length, protocol.context_length + protocol.unroll_length) == (row.context, 17)
    assert (protocol.num_videos, protocol.num_trajectories, protocol.seeds) == (row.num_videos, 1, [0])
    assert (fvd['frames'], fvd.get('resolution')) == (16, row.fvd_resolution)  # gFVD: 16 of 17 frames
    data = opt.datasets[test.dataset]
    read = data['read']
    assert (data['type'], data['split'], read.num_frames, read.resolution, read.resize) == (row.data, 'val', 17, 128,
                                                                                           'squash')
    assert {'path': data['source']['path'], 'fps': read.fps, 'clip_start': read.clip_start} == row.eval_clip


@pytest.mark.parametrize('path', TOKENIZER_FILES, ids=key)
def test_tokenizer_configs_train_the_released_layout(path, experiment_file):
    opt = experiment_file(key(path))
    assert opt.autoencoder == {'type': 'NBPTokenizer', 'image_size': 128} and opt.model is None
    trainer = opt.trainer
    assert trainer['type'] == 'AutoencoderTrainer' and trainer['loss'].reconstruction == 'l2'
    assert (trainer['loss'].perceptual_weight, trainer['loss'].disc_weight) == (0.1, 0.1)
    for block in opt.datasets.values():
        assert (block['read'].num_frames, block['read'].resolution) == (17, 128)
    with torch.device('meta'):
        tokenizer = opt.build_autoencoder()
    assert tokenizer.codebook_size == 64000 and sum(p.numel() for p in tokenizer.parameters()) == 370_372_105


@pytest.mark.parametrize('path', TOKENIZER_TEST_FILES, ids=key)
def test_tokenizer_evaluations_follow_tokenizer_eval(path, experiment_file):
    """The released tokenizers scored as NBP's tokenizer_eval.py: the whole validation list, all 17 frames at 128x128,
    uint8 frames (reference_quirks), rFVD with PSNR, SSIM and LPIPS."""
    opt = experiment_file(key(path))
    short = 'ucf' if 'ucf101' in path.name else 'k600'
    assert opt.model is None and opt.trainer is None and opt.test.sampler is None
    assert opt.test.checkpoint == f'{RELEASED}/magvit2_{short}.pt'
    protocol = opt.test.protocol
    assert (protocol['type'], protocol['num_frames'], protocol['num_videos'], protocol['reference_quirks']) == (
        'ReconstructionProtocol', 17, None, True)
    assert [m if isinstance(m, str) else m['type'] for m in protocol['metrics']] == ['psnr', 'ssim', 'lpips', 'fvd']
    data, read = opt.datasets[opt.test.dataset], opt.datasets[opt.test.dataset]['read']
    assert (data['split'], read.num_frames, read.resolution, read.resize) == ('val', 17, 128, 'squash')
    assert (read.fps, read.clip_start) == (16, 'center')  # the reference's data default, its evaluation's clip
    lists = {'ucf': 'options/data_lists/ucf101_split1_test.json', 'k600': K600_VAL_LIST}
    assert data['source']['path'] == lists[short]
    with torch.device('meta'):
        tokenizer = opt.build_autoencoder()
    assert tokenizer.codebook_size == 64000 and sum(p.numel() for p in tokenizer.parameters()) == 370_372_105
