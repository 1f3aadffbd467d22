"""Latent autoencoders: the DC-AE configs and checkpoint format, the wrapper API, KL and identity."""
import hashlib
import json
from pathlib import Path

import diffusers
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

import far.models.autoencoders  # noqa: F401  (registers the autoencoders)
from far.models import NBPTokenizer
from far.options import OptionError, validate_block
from far.registry import AUTOENCODERS

REPO = Path(__file__).resolve().parents[1]
DCAE_DIR = REPO / 'options/model_cfg/dcae'

# For each shipped config, the DC-AE class of FAR's reference implementation gives a state dict whose sorted
# `name:[shape]` lines hash to this (with this many entries and parameters): the layout of the published
# DCAE_*.pth checkpoints.
REFERENCE_LAYOUT = {
    'model_8x_c32_config.json':
        (8, 250, 127_920_940, '2cf607bd69d8fd047e942982edf1fa6f5e3f7811fd93210d4db37775f0054790'),
    'model_16x_c32_config.json':
        (16, 306, 215_758_380, 'ba85b5980434ec89c58f6f7eba8e6eb0613da12dd4c4abc84374bb249466acc5'),
    'model_32x_c32_config.json':
        (32, 362, 323_356_460, '14d1f6c4bffd5d7984a282d24237a55487267ada26840a4eed70b4b10be9c7bf'),
}

# A DC-AE small enough for CPU tests, with every block kind of the real ones (stem without layers,
# ResBlocks with BatchNorm in the decoder, an EfficientViT stage with a multi-scale projection).
TINY_DCAE = {
    'in_channels': 3, 'latent_channels': 4, 'attention_head_dim': 8,
    'encoder_block_types': ['ResBlock', 'ResBlock', 'EfficientViTBlock'],
    'decoder_block_types': ['ResBlock', 'ResBlock', 'EfficientViTBlock'],
    'encoder_block_out_channels': [8, 16, 32], 'decoder_block_out_channels': [8, 16, 32],
    'encoder_layers_per_block': [0, 1, 1], 'decoder_layers_per_block': [0, 1, 1],
    'encoder_qkv_multiscales': [[], [], [5]], 'decoder_qkv_multiscales': [[], [], [5]],
    'decoder_norm_types': ['batch_norm', 'batch_norm', 'rms_norm'],
    'decoder_act_fns': ['relu', 'relu', 'silu'],
    'scaling_factor': 0.5,
}

# FAR's reference DC-AE class with TINY_DCAE, weights from torch.manual_seed(0), on frames
# torch.rand(2, 3, S, S, generator=manual_seed(1)) * 2 - 1: sum and absolute sum of the latent and of the
# reconstruction. S=16 runs its linear attention, S=8 (2x2 latents) its quadratic attention.
REFERENCE_TINY_OUTPUTS = {
    16: (-51.871591448783875, 114.40611124038696, -21.030542974360287, 381.8114102613181),
    8: (-10.202231720089912, 19.304922983050346, -4.304710304597393, 81.70389057672583),
}


def seeded_tiny_dcae() -> diffusers.AutoencoderDC:
    torch.manual_seed(0)
    return diffusers.AutoencoderDC.from_config(TINY_DCAE).eval()


def reference_frames(size: int) -> torch.Tensor:
    return torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(1)) * 2 - 1


@pytest.fixture
def tiny_checkpoint(tmp_path):
    """TINY_DCAE as JSON plus its seeded weights saved as the published checkpoints are: torch.save(state_dict)."""
    config = tmp_path / 'tiny_dcae.json'
    config.write_text(json.dumps(TINY_DCAE))
    checkpoint = tmp_path / 'DCAE_Tiny.pth'
    torch.save(seeded_tiny_dcae().state_dict(), checkpoint)
    return config, checkpoint


@pytest.mark.parametrize('name', sorted(REFERENCE_LAYOUT))
def test_shipped_dcae_configs_have_the_reference_parameter_layout(name):
    compression, num_entries, num_params, digest = REFERENCE_LAYOUT[name]
    with torch.device('meta'):
        ae = AUTOENCODERS.build({'type': 'AutoencoderDC', 'config': f'{DCAE_DIR}/{name}'})
    state = ae.model.state_dict()
    lines = '\n'.join(f'{k}:{list(v.shape)}' for k, v in sorted(state.items()))
    assert len(state) == num_entries
    assert sum(p.numel() for p in ae.model.parameters()) == num_params
    assert hashlib.sha256(lines.encode()).hexdigest() == digest
    assert (ae.spatial_compression, ae.latent_channels, ae.scaling_factor) == (compression, 32, 0.2889)


def test_checkpoint_in_reference_format_loads_strictly_and_matches_reference_outputs(tiny_checkpoint):
    config, checkpoint = tiny_checkpoint
    ae = AUTOENCODERS.build({'type': 'AutoencoderDC', 'config': str(config), 'checkpoint': str(checkpoint)})
    saved = torch.load(checkpoint, weights_only=True)
    assert ae.model.state_dict().keys() == saved.keys()
    assert all(torch.equal(ae.model.state_dict()[k], v) for k, v in saved.items())
    save_file(saved, checkpoint.with_suffix('.safetensors'))
    same = AUTOENCODERS.build({'type': 'AutoencoderDC', 'config': str(config),
                               'checkpoint': str(checkpoint.with_suffix('.safetensors'))})
    assert all(torch.equal(same.model.state_dict()[k], v) for k, v in saved.items())

    for size, expected in REFERENCE_TINY_OUTPUTS.items():
        video = (reference_frames(size)[None] + 1) / 2  # one video of two frames
        raw = ae.encode_raw(video)
        recon = ae.model.decode(raw[0]).sample
        got = (raw.double().sum(), raw.double().abs().sum(), recon.double().sum(), recon.double().abs().sum())
        assert [float(g) for g in got] == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize('kind', ['dcae', 'tokenizer'])
def test_autoencoder_training_checkpoints_in_the_saved_layout_load(kind, tiny_checkpoint, tmp_path):
    """An autoencoder-training checkpoint as the trainer writes it: accelerate's model.safetensors and the EMA's
    ema.safetensors, each with the autoencoder under `autoencoder.` next to `discriminator.`."""
    torch.manual_seed(0)
    if kind == 'dcae':
        block = {'type': 'DCAutoencoder', 'config': str(tiny_checkpoint[0])}
        weights = AUTOENCODERS.build(block).model.state_dict()
    else:
        block = {'type': 'NBPTokenizer', 'image_size': 16, 'channels': [4, 6, 8], 'num_groups': 2,
                 'residual_units': [1, 1, 1, 1]}
        weights = NBPTokenizer(**{k: v for k, v in block.items() if k != 'type'}).state_dict()
    ema = {name: torch.randn_like(tensor) if tensor.is_floating_point() else tensor for name, tensor in weights.items()}
    folder = tmp_path / 'checkpoints'
    for step, state in ((1, weights), (2, ema)):  # the newest checkpoint holds `ema` as its EMA weights
        checkpoint = folder / f'checkpoint-{step}'
        checkpoint.mkdir(parents=True)
        (checkpoint / 'trainer_state.json').write_text(json.dumps({'step': step}))
        discriminator = {'discriminator.main.0.weight': torch.zeros(2, 3, 4, 4)}
        save_file({**{f'autoencoder.{k}': v for k, v in weights.items()}, **discriminator},
                  str(checkpoint / 'model.safetensors'))
        save_file({**{f'autoencoder.{k}': v.contiguous() for k, v in state.items()}, **discriminator},
                  str(checkpoint / 'ema.safetensors'))
    for source in (folder / 'checkpoint-2', folder):  # a checkpoint, or the newest of the folder
        loaded = AUTOENCODERS.build({**block, 'checkpoint': str(source)})
        state = (loaded.model if kind == 'dcae' else loaded).state_dict()
        assert state.keys() == ema.keys() and all(torch.equal(state[k], v) for k, v in ema.items())


def test_checkpoint_errors_name_the_file_and_the_key(tiny_checkpoint, tmp_path):
    config, checkpoint = tiny_checkpoint
    missing = {'type': 'AutoencoderDC', 'config': str(config), 'checkpoint': str(tmp_path / 'missing.pth')}
    with pytest.raises(FileNotFoundError, match=r'missing\.pth.*`checkpoint`.*scripts/download\.py --what models'):
        AUTOENCODERS.build(missing)
    state = torch.load(checkpoint, weights_only=True)
    state['decoder.extra.weight'] = torch.zeros(1)
    torch.save(state, tmp_path / 'extra.pth')
    with pytest.raises(ValueError, match=r'(?s)extra\.pth does not fit the DC-AE config .*decoder\.extra\.weight'):
        AUTOENCODERS.build({'type': 'AutoencoderDC', 'config': str(config), 'checkpoint': str(tmp_path / 'extra.pth')})
    with pytest.raises(FileNotFoundError, match=r'`config`'):
        AUTOENCODERS.build({'type': 'AutoencoderDC', 'config': str(tmp_path / 'nope.json')})


def test_wrapper_api_shapes_ranges_and_scaling_applied_once(tiny_checkpoint):
    config, checkpoint = tiny_checkpoint
    ae = AUTOENCODERS.build({'type': 'AutoencoderDC', 'config': str(config), 'checkpoint': str(checkpoint),
                             'scaling_factor': 0.25})
    assert (ae.latent_channels, ae.spatial_compression, ae.scaling_factor) == (4, 4, 0.25)
    assert ae.model.config.scaling_factor == 0.25  # the diffusers model agrees with the wrapper

    video = torch.rand(2, 3, 3, 16, 16)
    raw = ae.encode_raw(video)
    latents = ae.encode(video)
    assert latents.shape == (2, 3, 4, 4, 4) and latents.dtype == torch.float32
    direct = ae.model.encode(video.flatten(0, 1) * 2 - 1).latent.unflatten(0, (2, 3))
    torch.testing.assert_close(raw, direct, rtol=0, atol=0)
    torch.testing.assert_close(latents, raw * 0.25, rtol=0, atol=0)
    torch.testing.assert_close(ae.scale_latents(raw), latents, rtol=0, atol=0)

    decoded = ae.decode(latents)
    assert decoded.shape == video.shape and 0 <= decoded.min() and decoded.max() <= 1
    expected = ((ae.model.decode(raw.flatten(0, 1)).sample + 1) / 2).clamp(0, 1).unflatten(0, (2, 3))
    torch.testing.assert_close(decoded, expected)

    ae.slicing = 2  # 6 frames in calls of 2, 2, 2: the same numbers
    torch.testing.assert_close(ae.encode(video), latents)
    torch.testing.assert_close(ae.decode(latents), decoded)


def test_autoencoder_is_frozen_and_checks_its_inputs(tiny_checkpoint):
    ae = AUTOENCODERS.build({'type': 'AutoencoderDC', 'config': str(tiny_checkpoint[0])})
    assert not any(p.requires_grad for p in ae.parameters())
    ae.train()
    assert not ae.training and not ae.model.training  # BatchNorm statistics stay fixed
    assert ae.encode(torch.rand(1, 2, 3, 8, 8)).grad_fn is None
    with pytest.raises(ValueError, match=r'\[B, T, 3, H, W\]'):
        ae.encode(torch.rand(2, 3, 8, 8))
    with pytest.raises(ValueError, match='multiple of the spatial compression 4'):
        ae.encode(torch.rand(1, 1, 3, 10, 8))
    with pytest.raises(ValueError, match=r'\[B, T, 4, h, w\]'):
        ae.decode(torch.rand(1, 1, 3, 2, 2))


def test_bfloat16_autoencoder_takes_and_returns_float32():
    ae = AUTOENCODERS.build({'type': 'AutoencoderDC', 'config': TINY_DCAE, 'dtype': 'bfloat16'})
    assert ae.dtype == torch.bfloat16
    latents = ae.encode(torch.rand(1, 2, 3, 16, 16))
    assert latents.dtype == torch.float32 and ae.decode(latents).dtype == torch.float32


def test_identity_autoencoder_round_trip():
    ae = AUTOENCODERS.build({'type': 'IdentityAutoencoder', 'pixel_unshuffle': 4})
    assert (ae.latent_channels, ae.spatial_compression, ae.scaling_factor) == (48, 4, 1.0)
    video = torch.randint(0, 256, (2, 3, 3, 32, 32)).float() / 255
    latents = ae.encode(video)
    assert latents.shape == (2, 3, 48, 8, 8)
    assert latents.min() >= -1 and latents.max() <= 1
    back = ae.decode(latents)
    torch.testing.assert_close(back, video, rtol=0, atol=2 ** -24)
    assert torch.equal((back * 255).round(), (video * 255).round())  # 8-bit frames come back exactly

    plain = AUTOENCODERS.build({'type': 'IdentityAutoencoder'})
    torch.testing.assert_close(plain.encode(video), video * 2 - 1, rtol=0, atol=0)


def test_identity_autoencoder_downsample_keeps_block_images_exactly():
    ae = AUTOENCODERS.build({'type': 'IdentityAutoencoder', 'downsample': 8, 'pixel_unshuffle': 2})
    assert (ae.latent_channels, ae.spatial_compression) == (12, 16)
    cells = torch.randint(0, 256, (2, 3, 3, 4, 4)).float() / 255
    blocks = cells.repeat_interleave(8, dim=-1).repeat_interleave(8, dim=-2)  # 32x32 frames of 8x8 blocks
    latents = ae.encode(blocks)
    assert latents.shape == (2, 3, 12, 2, 2)
    torch.testing.assert_close(latents, F.pixel_unshuffle(cells.flatten(0, 1) * 2 - 1, 2).view(2, 3, 12, 2, 2))
    torch.testing.assert_close(ae.decode(latents), blocks, rtol=1e-5, atol=1e-6)
    # other images come back as their block means
    video = torch.rand(1, 1, 3, 32, 32)
    means = F.avg_pool2d(video[0], 8).repeat_interleave(8, dim=-1).repeat_interleave(8, dim=-2)
    torch.testing.assert_close(ae.decode(ae.encode(video))[0], means, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match='downsample must be >= 1'):
        AUTOENCODERS.build({'type': 'IdentityAutoencoder', 'downsample': 0})


def test_autoencoder_kl_from_a_local_folder(tmp_path):
    kl = diffusers.AutoencoderKL(block_out_channels=(8, 16), down_block_types=('DownEncoderBlock2D',) * 2,
                                 up_block_types=('UpDecoderBlock2D',) * 2, latent_channels=4, norm_num_groups=4,
                                 layers_per_block=1, scaling_factor=0.3, shift_factor=0.1)
    kl.save_pretrained(tmp_path / 'kl' / 'vae')
    ae = AUTOENCODERS.build({'type': 'AutoencoderKL', 'pretrained': str(tmp_path / 'kl'), 'subfolder': 'vae'})
    assert (ae.latent_channels, ae.spatial_compression, ae.scaling_factor, ae.shift_factor) == (4, 2, 0.3, 0.1)

    video = torch.rand(1, 2, 3, 8, 8)
    latents = ae.encode(video)
    mean = ae.model.encode(video[0] * 2 - 1).latent_dist.mode()
    torch.testing.assert_close(latents[0], (mean - 0.1) * 0.3)
    expected = ((ae.model.decode(mean).sample + 1) / 2).clamp(0, 1)
    torch.testing.assert_close(ae.decode(latents)[0], expected, rtol=1e-5, atol=1e-6)

    with pytest.raises(OSError, match='`pretrained`'):
        AUTOENCODERS.build({'type': 'AutoencoderKL', 'pretrained': str(tmp_path / 'absent')})


def test_yaml_blocks_are_validated_against_the_constructors():
    block = validate_block({'type': 'AutoencoderDC', 'config': f'{DCAE_DIR}/model_8x_c32_config.json',
                            'checkpoint': None, 'dtype': 'bfloat16', 'slicing': 8}, AUTOENCODERS, 'x.yml', 'vae')
    assert block['slicing'] == 8
    with pytest.raises(OptionError, match=r"vae\.dtype: got 'bf16'"):
        validate_block({'type': 'AutoencoderDC', 'config': 'c.json', 'dtype': 'bf16'}, AUTOENCODERS, 'x.yml', 'vae')
    with pytest.raises(OptionError, match=r"vae\.pixel_unshufle: unknown key .*did you mean 'pixel_unshuffle'"):
        validate_block({'type': 'IdentityAutoencoder', 'pixel_unshufle': 4}, AUTOENCODERS, 'x.yml', 'vae')
