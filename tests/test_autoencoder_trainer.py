"""Autoencoder training: PatchGAN, the loss and its phases, the trainer end to end, the shipped configs."""
import copy
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import far.data  # noqa: F401  (registers the datasets)
import far.models.autoencoders  # noqa: F401  (registers the autoencoders)
import far.trainers.autoencoder_trainer  # noqa: F401  (registers the trainer)
from far.losses import AutoencoderLoss, adaptive_weight, hinge_d_loss
from far.metrics.lpips import LPIPS
from far.models import NBPTokenizer
from far.models.autoencoders import DCAutoencoder
from far.models.discriminator import PatchDiscriminator
from far.options import apply_overrides, load_yaml, validate_block
from far.registry import AUTOENCODERS, DATASETS, TRAINERS
from far.trainers.autoencoder_networks import AutoencoderWithDiscriminator
from far.trainers.curves import CURVES_FILE, METRICS_FILE, read_metrics
from far.utils.distributed import make_accelerator

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / 'options/train/dcae').glob('*.yml'))
DEMO = REPO / 'options/train/dcae/dcae_moving_shapes_tiny.yml'

# The PatchGAN of FAR's reference implementation (3 layers, 64 channels): state dict names, and its parameter count.
REFERENCE_DISCRIMINATOR_KEYS = [
    'main.0.weight', 'main.0.bias', 'main.2.weight', 'main.3.weight', 'main.3.bias', 'main.3.running_mean',
    'main.3.running_var', 'main.3.num_batches_tracked', 'main.5.weight', 'main.6.weight', 'main.6.bias',
    'main.6.running_mean', 'main.6.running_var', 'main.6.num_batches_tracked', 'main.8.weight', 'main.9.weight',
    'main.9.bias', 'main.9.running_mean', 'main.9.running_var', 'main.9.num_batches_tracked', 'main.11.weight',
    'main.11.bias']


@pytest.fixture(scope='module')
def vgg_files(shared_dir):
    folder = shared_dir / 'weights' / 'lpips_vgg'
    return str(folder / 'vgg16_features_imagenet.pth'), str(folder / 'lpips_v0.1_vgg_lin.pth')


@pytest.fixture(scope='module')
def tiny_dcae_config():
    return json.loads((REPO / 'options/model_cfg/dcae/tiny_4x_c8_config.json').read_text())


def test_patch_discriminator_has_the_reference_layout():
    torch.manual_seed(0)
    discriminator = PatchDiscriminator()
    assert list(discriminator.state_dict()) == REFERENCE_DISCRIMINATOR_KEYS
    assert sum(p.numel() for p in discriminator.parameters()) == 2_765_633
    assert discriminator(torch.randn(2, 3, 32, 32)).shape == (2, 1, 2, 2)
    assert discriminator(torch.randn(1, 3, 64, 64)).shape == (1, 1, 6, 6)
    assert discriminator.main[5].weight.std().item() == pytest.approx(0.02, rel=0.05)


def test_hinge_loss_and_adaptive_weight():
    assert hinge_d_loss(torch.tensor([2.0, 0.0]), torch.tensor([-2.0, 0.5])).item() == pytest.approx(0.625)
    weight = torch.ones(3, requires_grad=True)
    a, b = torch.tensor([3.0, 0.0, 4.0]), torch.tensor([0.0, 1.0, 0.0])
    value = adaptive_weight((weight * a).sum(), (weight * b).sum(), weight)
    assert value.item() == pytest.approx(5.0 / (1.0 + 1e-4)) and not value.requires_grad
    assert adaptive_weight((weight * a).sum(), (weight * 0).sum(), weight).item() == 1e4  # clamped


def test_loss_phases_and_where_their_gradients_go(tiny_dcae_config, vgg_files):
    torch.manual_seed(0)
    loss = AutoencoderLoss(perceptual_weight=0.5, disc_weight=0.5, disc_start=10, disc_channels=8,
                           vgg_weights=vgg_files[0], lpips_weights=vgg_files[1])
    assert not loss.adversarial(9) and loss.adversarial(10)
    assert not AutoencoderLoss(disc_weight=0.0, disc_start=0).adversarial(5)
    model = AutoencoderWithDiscriminator(DCAutoencoder(config=tiny_dcae_config), loss.discriminator())
    perceptual = loss.perceptual_network()
    assert isinstance(perceptual, LPIPS) and perceptual.net == 'vgg'
    video = torch.rand(2, 2, 3, 32, 32) * 2 - 1
    frames = video.flatten(0, 1)
    encoder, discriminator = model.autoencoder.encoder, model.discriminator

    recon, logits = model(video, adversarial=False)
    assert recon.shape == video.shape
    recon = recon.flatten(0, 1)
    logs = loss(frames, recon, perceptual, model.last_layer(), logits)
    expected = F.l1_loss(recon, frames) + 0.5 * perceptual(frames, recon).mean()
    assert logits is None and set(logs) == {'loss', 'rec_loss', 'perceptual_loss'}
    torch.testing.assert_close(logs['loss'], expected)
    logs['loss'].backward()
    assert all(p.grad is not None for p in encoder.parameters())
    assert all(p.grad is None for p in discriminator.parameters())  # not trained before disc_start
    model.zero_grad(set_to_none=True)

    recon, logits = model(video, adversarial=True)
    recon = recon.flatten(0, 1)
    logs = loss(frames, recon, perceptual, model.last_layer(), logits)
    assert set(logs) == {'loss', 'rec_loss', 'perceptual_loss', 'g_loss', 'd_loss', 'd_weight'}
    total = logs['rec_loss'] + logs['perceptual_loss'] + logs['g_loss'] + logs['d_loss']
    torch.testing.assert_close(logs['loss'], total)
    torch.testing.assert_close(logs['d_loss'], hinge_d_loss(discriminator(frames), discriminator(recon.detach())))
    logs['loss'].backward()
    assert all(p.grad is None for p in encoder.parameters())  # the adversarial phase trains the decoder only
    assert model.last_layer().grad is not None
    # The discriminator learns from its hinge loss alone, not from the generator's term.
    discriminator_grads = [p.grad.clone() for p in discriminator.parameters()]
    discriminator.zero_grad(set_to_none=True)
    hinge_d_loss(discriminator(frames), discriminator(recon.detach())).backward()
    for got, expected in zip(discriminator_grads, (p.grad for p in discriminator.parameters())):
        torch.testing.assert_close(got, expected)


@pytest.mark.parametrize('kind', ['dcae', 'tokenizer'])
def test_the_network_saves_the_autoencoder_once_and_a_copy_runs_on_its_own_weights(kind, tiny_dcae_config):
    torch.manual_seed(0)
    if kind == 'dcae':
        autoencoder, video = DCAutoencoder(config=tiny_dcae_config), torch.rand(1, 2, 3, 16, 16) * 2 - 1
        weights = autoencoder.model
    else:
        autoencoder = NBPTokenizer(image_size=16, channels=(4, 6, 8), num_groups=2, residual_units=(1, 1, 1, 1))
        video, weights = torch.rand(1, 5, 3, 16, 16) * 2 - 1, autoencoder
    network = AutoencoderWithDiscriminator(autoencoder, PatchDiscriminator(base_channels=4, num_layers=1))
    names = list(network.state_dict())
    assert [n for n in names if n.startswith('autoencoder.')] == [f'autoencoder.{n}' for n in weights.state_dict()]
    assert all(n.startswith(('autoencoder.', 'discriminator.')) for n in names)
    assert all(p.requires_grad for p in network.autoencoder.parameters())
    ema = copy.deepcopy(network)  # as the trainer's EMA model is made
    with torch.no_grad():
        before = network.reconstruct(video)
        for p in ema.autoencoder.parameters():
            p.mul_(0.5)
        assert before.shape == video.shape and torch.equal(network.reconstruct(video), before)
        assert not torch.allclose(ema.reconstruct(video), before)


def test_trainer_end_to_end_on_the_demo_config(tmp_path, vgg_files, fresh_accelerator_state):
    opt = apply_overrides(load_yaml(str(DEMO)), [
        f'datasets.train.source.root={tmp_path / "data"}', 'datasets.train.source.num_videos=8',
        'datasets.train.source.num_frames=4', f'datasets.val.source.root={tmp_path / "data"}',
        'datasets.val.source.num_videos=3', 'datasets.val.source.num_frames=4',
        'trainer.total_steps=4', 'trainer.batch_size=2', 'trainer.ema_decay=0.5',
        'trainer.loss.disc_start=2', 'trainer.loss.disc_channels=8',
        f'trainer.loss.vgg_weights={vgg_files[0]}', f'trainer.loss.lpips_weights={vgg_files[1]}',
        'trainer.checkpoint.every=2', 'trainer.log.every=1',
        'trainer.validation.every=4', 'trainer.validation.num_videos=3', 'trainer.validation.batch_size=2',
    ])
    accelerator = make_accelerator()
    autoencoder = AUTOENCODERS.build(validate_block(opt['autoencoder'], AUTOENCODERS, str(DEMO), 'autoencoder'))
    datasets = {k: DATASETS.build(validate_block(v, DATASETS, str(DEMO), f'datasets.{k}'))
                for k, v in opt['datasets'].items()}
    folder = tmp_path / 'experiment'
    trainer = TRAINERS.build(validate_block(opt['trainer'], TRAINERS, str(DEMO), 'trainer'), accelerator=accelerator,
                             autoencoder=autoencoder, datasets=datasets, folder=folder, seed=0, config=opt)
    initial_discriminator = {k: v.clone() for k, v in trainer.model.discriminator.state_dict().items()}
    trainer.fit()

    # The trained weights (not the EMA) after steps 0-1 (no discriminator yet) and 2-3 (adversarial phase).
    at_2, at_4 = (load_file(str(folder / f'checkpoints/checkpoint-{step}/model.safetensors')) for step in (2, 4))

    def same(prefix: str) -> bool:
        return all(torch.equal(v, at_4[k]) for k, v in at_2.items() if k.startswith(prefix))

    assert all(torch.equal(at_2[f'discriminator.{k}'], v) for k, v in initial_discriminator.items())
    assert not same('discriminator.') and same('autoencoder.encoder.') and not same('autoencoder.decoder.')

    samples = folder / 'samples' / 'step-0000004'
    scores = json.loads((samples / 'metrics.json').read_text())
    assert set(scores) == {'psnr', 'ssim'} and all(isinstance(v, float) for v in scores.values())
    assert len(list(samples.glob('video_*.mp4'))) == 3 and (samples / 'grid.png').is_file()
    logged = read_metrics(folder / METRICS_FILE)  # the validation scores join the training curves
    assert {k: v for k, v in logged.items() if k.startswith('val/')} == {f'val/{k}': {4: v} for k, v in scores.items()}
    assert list(logged['train/loss']) == [1, 2, 3, 4] and (folder / CURVES_FILE).is_file()

    # A training checkpoint is an AutoencoderDC checkpoint: its EMA autoencoder loads strictly.
    loaded = AUTOENCODERS.build({'type': 'AutoencoderDC', 'config': opt['autoencoder']['config'],
                                 'checkpoint': str(folder / 'checkpoints' / 'checkpoint-4')})
    ema = trainer.ema.module.autoencoder.state_dict()
    assert all(torch.equal(v, ema[k]) for k, v in loaded.model.state_dict().items())


def test_a_pixel_autoencoder_is_refused(tmp_path, fresh_accelerator_state):
    with pytest.raises(ValueError, match='trains a DCAutoencoder'):
        TRAINERS.get('AutoencoderTrainer')(
            accelerator=make_accelerator(), autoencoder=AUTOENCODERS.build({'type': 'IdentityAutoencoder'}),
            datasets={'train': []}, folder=tmp_path, seed=0, config={}, total_steps=1, batch_size=1)


@pytest.mark.parametrize('path', CONFIGS, ids=[p.stem for p in CONFIGS])
def test_shipped_configs_validate(path):
    opt = load_yaml(str(path))
    assert set(opt) <= {'name', 'seed', 'mixed_precision', 'autoencoder', 'datasets', 'trainer'}
    assert opt['name'] == path.stem
    autoencoder = validate_block(opt['autoencoder'], AUTOENCODERS, str(path), 'autoencoder')
    assert (REPO / autoencoder['config']).is_file()
    for key, block in opt['datasets'].items():
        validate_block(block, DATASETS, str(path), f'datasets.{key}')
    trainer = validate_block(opt['trainer'], TRAINERS, str(path), 'trainer')
    assert trainer['type'] == 'AutoencoderTrainer' and trainer['validation'].dataset in opt['datasets']
