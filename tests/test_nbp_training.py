"""NBP as the framework trains and evaluates it: the optimizer's parameter groups, train.py and test.py on the demo
files (blocks of k = 4 tokens, and token by token with k = 1: the same model, one switch), the tokenizer trained by
the autoencoder trainer, and token shards written by the extraction script and read back."""
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import far  # noqa: F401  (fills the registries)
from far.data import CorruptSampleError
from far import run
from far.experiment import load_experiment
from far.models import NBPTransformer
from far.options import OptionError, apply_overrides, load_yaml, validate_block
from far.pipelines import build_sampler
from far.registry import AUTOENCODERS, DATASETS, TRAINERS
from far.trainers import OptimizerOptions
from far.trainers.lr_schedule import LRScheduleOptions
from far.utils.distributed import make_accelerator

REPO = Path(__file__).resolve().parents[1]
NBP_DEMO = REPO / 'options' / 'demo' / 'nbp_moving_shapes.yml'
TOKENIZER_DEMO = REPO / 'options' / 'demo' / 'nbp_tokenizer_moving_shapes.yml'

def test_weight_decay_reaches_linear_weights_only():
    model = NBPTransformer(num_layers=1, num_attention_heads=2, hidden_size=16, max_positions=8, video_vocab_size=10,
                           token_number_per_step=2)
    decayed, kept = OptimizerOptions(weight_decay=0.01, decayed_modules=('Linear',)).parameter_groups(model)
    names = {id(p): n for n, p in model.named_parameters()}
    linear_weights = {f'{n}.weight' for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert {names[id(p)] for p in decayed['params']} == linear_weights and 'head.weight' in linear_weights
    assert {'pos_emb', 'tok_emb.weight', 'ln_f.weight', 'ln_f.bias', 'blocks.0.attn.key.bias'} <= {
        names[id(p)] for p in kept['params']}
    assert kept['weight_decay'] == 0.0 and 'weight_decay' not in decayed
    assert len(decayed['params']) + len(kept['params']) == len(list(model.parameters()))
    everything, = OptimizerOptions().parameter_groups(model)
    assert len(everything['params']) == len(list(model.parameters()))


@pytest.mark.slow
@pytest.mark.parametrize('block', [4, 1], ids=['k=4', 'k=1'])
def test_train_and_test_through_yaml(scripts, tmp_path, tokenizer_file, block):
    """The demo files with ``model.token_number_per_step`` as the only difference between NBP and token-by-token AR."""
    overrides = [*scripts.tiny_nbp(tokenizer_file), f'model.token_number_per_step={block}', 'name=run']
    trained = scripts.run('train.py', '-opt', str(NBP_DEMO), *overrides, cwd=tmp_path)
    assert trained.returncode == 0, trained.stdout + trained.stderr
    folder = tmp_path / 'experiments' / 'run'
    log = (folder / 'train.log').read_text()
    assert 'step 4/4 | grad_norm' in log and (folder / 'checkpoints' / 'checkpoint-4').is_dir()
    assert (folder / 'samples' / 'step-0000004' / 'grid.png').is_file()

    tested = scripts.run('test.py', '-opt', str(NBP_DEMO), *overrides, cwd=tmp_path)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    results = json.loads(next((folder / 'results').glob('*/results.json')).read_text())
    assert results['sampling'] == {'type': 'NBPPipeline', 'top_k': 1, 'top_p': None, 'temperature': 1.0,
                                   'guidance_scale': 1.0, 'batch_size': 2}
    assert results['protocol']['context_frames'] == 5 and results['protocol']['predicted_frames'] == 4
    assert set(results['copy_last_frame']) == set(results['metrics']) and results['metrics']['psnr'] > 0

    opt = load_experiment(str(NBP_DEMO), overrides)
    pipe = build_sampler(opt.test.sampler, model=opt.build_model(), autoencoder=None)
    assert pipe.num_steps(48, prefix_length=32) == 16 // block  # the third latent frame of 4x4 tokens


def build(opt: dict, file: Path, key: str, registry):
    return registry.build(validate_block(opt[key], registry, str(file), key))


def test_tokenizer_trains_with_the_autoencoder_losses_and_loads_back(tmp_path, fresh_accelerator_state, scripts):
    opt = apply_overrides(load_yaml(str(TOKENIZER_DEMO)), [
        *scripts.tiny_tokenizer_overrides, f'datasets.train.source.root={tmp_path / "data"}',
        'datasets.train.source.num_videos=4',
        f'datasets.val.source.root={tmp_path / "data"}', 'datasets.val.source.num_videos=2', 'trainer.total_steps=4',
        'trainer.batch_size=1', 'trainer.ema_decay=0.5', 'trainer.loss.disc_weight=0.5', 'trainer.loss.disc_start=2',
        'trainer.loss.disc_channels=8', 'trainer.checkpoint.every=2', 'trainer.checkpoint.keep=2',
        'trainer.log.every=1', 'trainer.validation.every=4', 'trainer.validation.num_videos=2',
        'trainer.validation.batch_size=2'])
    datasets = {key: DATASETS.build(validate_block(block, DATASETS, str(TOKENIZER_DEMO), f'datasets.{key}'))
                for key, block in opt['datasets'].items()}
    folder = tmp_path / 'experiment'
    trainer = TRAINERS.build(validate_block(opt['trainer'], TRAINERS, str(TOKENIZER_DEMO), 'trainer'),
                             accelerator=make_accelerator(), autoencoder=build(opt, TOKENIZER_DEMO, 'autoencoder',
                                                                                AUTOENCODERS),
                             datasets=datasets, folder=folder, seed=0, config=opt)
    trainer.fit()

    # steps 0-1 train the whole tokenizer, steps 2-3 (adversarial) the decoder and the discriminator only
    at_2, at_4 = (load_file(str(folder / f'checkpoints/checkpoint-{step}/model.safetensors')) for step in (2, 4))

    def same(prefix: str) -> bool:
        return all(torch.equal(v, at_4[k]) for k, v in at_2.items() if k.startswith(prefix))

    assert same('autoencoder.encoder_layers.')
    assert not same('autoencoder.decoder_layers.') and not same('discriminator.')
    scores = json.loads((folder / 'samples' / 'step-0000004' / 'metrics.json').read_text())
    assert set(scores) == {'psnr', 'ssim'}

    # the experiment's checkpoints folder is a tokenizer checkpoint: its newest EMA weights load strictly
    loaded = AUTOENCODERS.build({**opt['autoencoder'], 'checkpoint': str(folder / 'checkpoints')})
    ema = trainer.ema.module.autoencoder.state_dict()
    assert all(torch.equal(value, ema[key]) for key, value in loaded.state_dict().items())


def test_token_shards_are_written_and_read_back(tmp_path, tokenizer_file, fresh_accelerator_state, scripts,
                                                 dataset_of):
    autoencoder = {'type': 'NBPTokenizer', **scripts.tiny_tokenizer, 'checkpoint': str(tokenizer_file)}
    shapes = {'root': str(tmp_path / 'data'), 'num_videos': 3, 'num_frames': 9, 'resolution': 32}
    flat = [f'autoencoder.{k}={json.dumps(list(v) if isinstance(v, tuple) else v)}' for k, v in autoencoder.items()]
    scripts.module('scripts/extract_latents.py').main([*flat, 'dataset.type=MovingShapes', 'dataset.split=val',
                                                       *[f'dataset.source.{k}={v}' for k, v in shapes.items()],
                                                       f'output_dir={tmp_path / "tokens"}', 'samples_per_shard=2',
                                                       'num_workers=0'])
    index = json.loads((tmp_path / 'tokens' / 'index.json').read_text())
    assert index['content'] == 'tokens' and index['codebook_size'] == 1000 and index['num_samples'] == 3

    token_shards = {'type': 'shards', 'path': str(tmp_path / 'tokens'), 'use_tokens': True}
    tokens = dataset_of('K600', 'train', token_shards, num_frames=9)
    tokenizer = AUTOENCODERS.build(autoencoder)
    video = dataset_of('MovingShapes', 'val', shapes)[1]['video']
    item = tokens[1]
    assert set(item) == {'tokens', 'index'} and item['tokens'].dtype == torch.int64
    assert torch.equal(item['tokens'], tokenizer.encode_tokens(video[None])[0])  # the whole clip, unaugmented

    with pytest.raises(CorruptSampleError, match='the tokens encode a clip of 9 frames, num_frames is 5'):
        dataset_of('K600', 'train', token_shards, num_frames=5, strict=True)[0]
    with pytest.raises(ValueError, match='holds tokens.npy samples but use_latent is false and use_tokens is false'):
        dataset_of('K600', 'train', {**token_shards, 'use_tokens': False}, num_frames=9)
    with pytest.raises(OptionError, match="source.use_tokens: unknown key for data source 'data_list'"):
        dataset_of('K600', 'train', {'type': 'data_list', 'path': 'list.json', 'use_tokens': True}, num_frames=9)


def test_timm_cosine_follows_the_reference_stepping():
    """NBP's reference: timm's cosine (t_initial = the total steps, warmup from 0, no warmup prefix) sets the lr
    at construction from t = 0 and is stepped after every update with that update's step."""
    base, warmup, total = 6e-4, 50, 1000

    def timm(t):
        if t < warmup:
            return base * t / warmup
        return base * 0.5 * (1 + math.cos(math.pi * t / total)) if t < total else 0.0

    current, used = timm(0), []
    for step in range(total + 1):
        used.append(current)
        current = timm(step)
    optimizer = torch.optim.AdamW(torch.nn.Linear(2, 2).parameters(), lr=base)
    schedule = LRScheduleOptions(name='timm_cosine', warmup_steps=warmup).build(optimizer, total)
    ours = [base * schedule.lr_lambdas[0](step) for step in range(total + 1)]
    assert ours == pytest.approx(used, rel=1e-9, abs=1e-15)
    # the paper recipe's shape: mid-run, diffusers' cosine (counted from the warmup's end) is ~8% higher
    recipe, steps = dict(warmup_steps=5000), 100_000
    lrs = {name: LRScheduleOptions(name=name, **recipe).build(torch.optim.AdamW(torch.nn.Linear(2, 2).parameters(),
                                                                                lr=1.0), steps).lr_lambdas[0](50_000)
           for name in ('cosine', 'timm_cosine')}
    assert lrs['cosine'] / lrs['timm_cosine'] == pytest.approx(1.083, rel=2e-3)


def test_gradient_accumulation_steps_on_the_mean_of_its_batches(tmp_path, tokenizer_file, fresh_accelerator_state,
                                                                 scripts):
    """2 batches of 2 clips accumulated make the step that one batch of the same 4 clips makes (same loss and
    gradient norm); steps, schedule and checkpoints count optimiser steps, and a run resumed mid-way ends as an
    uninterrupted one."""
    base = [*scripts.tiny_nbp(tokenizer_file), 'model.dropout=0.0', 'trainer.validation=null',
            'trainer.ema_decay=null', 'trainer.log.every=1', 'trainer.total_steps=2', 'trainer.checkpoint.every=1']

    def train(name: str, *overrides: str) -> Path:
        opt = load_experiment(str(NBP_DEMO), [*base, f'name={name}', *overrides])
        run.train(options=opt, file=str(NBP_DEMO), root=str(tmp_path))
        return tmp_path / name

    def logged(folder: Path) -> list:
        return [json.loads(line) for line in (folder / 'metrics.jsonl').read_text().splitlines()]

    whole = logged(train('whole', 'trainer.batch_size=4'))
    accumulated_folder = train('accumulated', 'trainer.batch_size=2', 'trainer.gradient_accumulation=2')
    accumulated = logged(accumulated_folder)
    assert [entry['step'] for entry in accumulated] == [1, 2]
    for ours, theirs in zip(accumulated, whole):
        for key in ('train/loss', 'train/grad_norm', 'train/lr'):
            assert ours[key] == pytest.approx(theirs[key], rel=1e-5), key

    resumed_folder = train('resumed', 'trainer.batch_size=2', 'trainer.gradient_accumulation=2',
                           'trainer.total_steps=1')
    train('resumed', 'trainer.batch_size=2', 'trainer.gradient_accumulation=2')
    final = [load_file(str(folder / 'checkpoints/checkpoint-2/model.safetensors'))
             for folder in (accumulated_folder, resumed_folder)]
    assert all(torch.equal(value, final[1][key]) for key, value in final[0].items())
