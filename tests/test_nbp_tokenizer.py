"""NBP video tokenizer and its FSQ quantizer: parity with the reference, released parameter names and sizes,
causality, checkpoint loading, and test.py scoring its reconstructions."""
import json
import pickle
from pathlib import Path

import pytest
import torch
import yaml

from far.conversions.nbp import tokenizer_from_reference_config
from far.experiment import load_experiment
from far.models import FSQ, NBPTokenizer
from far.models.interfaces import VideoTokenizer
from far.options import OptionError
from far.registry import AUTOENCODERS


def close(actual, expected, atol=1e-4):
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=atol)


def reference_tokenizer(nbp_parity) -> NBPTokenizer:
    tokenizer = tokenizer_from_reference_config(nbp_parity['tokenizer']['config'])
    tokenizer.load_state_dict(nbp_parity['tokenizer']['state_dict'])  # strict: the reference names
    return tokenizer.eval()


# ----- FSQ -----

def test_fsq_matches_reference(nbp_parity):
    data = nbp_parity['fsq']
    fsq = FSQ(data['levels'])
    codes, indices = fsq(data['input'])
    assert torch.equal(codes, data['codes'])
    assert indices.dtype == torch.int32 and torch.equal(indices, data['indices'])
    close(fsq.bound(data['input'].movedim(1, -1)), data['bounded'], atol=1e-6)  # tan (not atanh) in the shift
    assert torch.equal(fsq.indices_to_codes(data['indices_in']), data['codes_out'])
    assert fsq.codebook_size == data['codebook_size'] == 64000


def test_fsq_codebook_round_trip_and_straight_through():
    fsq = FSQ([8, 5, 3])
    every = torch.arange(fsq.codebook_size)
    all_codes = fsq.indices_to_codes(every[None])  # [1, 3, 120]
    assert torch.equal(fsq.codes_to_indices(all_codes.movedim(1, -1))[0].long(), every)
    assert all_codes[0, 0, :8].tolist() == [-1, -0.75, -0.5, -0.25, 0, 0.25, 0.5, 0.75]  # first level fastest
    assert (all_codes[0, 1, :8] == -1).all()
    codes, indices = fsq(torch.randn(2, 3, 50) * 2)
    assert torch.equal(fsq.indices_to_codes(indices), codes)
    assert fsq.state_dict() == {}
    z = torch.randn(2, 3, 4, requires_grad=True)
    fsq(z)[0].sum().backward()
    assert (z.grad > 0).all()  # rounding passes the gradient of the bound through
    with pytest.raises(ValueError, match='levels'):
        FSQ([8, 1])


# ----- tokenizer -----

def test_tokenizer_matches_reference(nbp_parity):
    data = nbp_parity['tokenizer']
    tokenizer = reference_tokenizer(nbp_parity)
    assert list(tokenizer.state_dict()) == data['param_names']
    video = data['video_uint8'].float() / 255
    with torch.no_grad():
        latents = tokenizer.encode_latents(video)
        quantized, indices = tokenizer.encode_clip(video)
        recon = tokenizer.decode_clip(quantized)
        from_flat = tokenizer.decode_clip(tokenizer.codes(data['indices'].flatten(1)))
        from_grid = tokenizer.decode_clip(tokenizer.codes(data['indices'].long()))
    close(latents, data['latents'])
    close(quantized, data['quantized'])
    assert indices.dtype == torch.int32 and torch.equal(indices, data['indices'])
    for output in (recon, from_flat, from_grid):
        close(output, data['recon'])


def test_tokenizer_layer_shapes(nbp_parity):
    data = nbp_parity['tokenizer']
    tokenizer = reference_tokenizer(nbp_parity)
    x = data['video_uint8'].float() / 255
    shapes = {'encoder_shapes': [], 'decoder_shapes': []}
    with torch.no_grad():
        for layer in tokenizer.encoder_layers:
            x = layer(x)
            shapes['encoder_shapes'].append(tuple(x.shape))
        x = tokenizer.quantizer(x)[0]
        for layer in tokenizer.decoder_layers:
            x = layer(x)
            shapes['decoder_shapes'].append(tuple(x.shape))
    for key, found in shapes.items():
        assert found == [tuple(shape) for shape in data[key]], key


def test_video_tokenizer_interface_takes_videos_frames_second(nbp_parity):
    data = nbp_parity['tokenizer']
    tokenizer = reference_tokenizer(nbp_parity)
    assert isinstance(tokenizer, VideoTokenizer) and tokenizer.content == 'tokens'
    video = data['video_uint8'].float().transpose(1, 2) / 255  # [B, T, 3, H, W]
    ids = tokenizer.encode_tokens(video)
    assert ids.dtype == torch.int64 and torch.equal(ids, data['indices'].long())
    decoded = tokenizer.decode_tokens(ids)
    assert decoded.shape == video.shape and decoded.dtype == torch.float32
    close(decoded, data['recon'].clamp(0, 1).transpose(1, 2))
    torch.testing.assert_close(tokenizer.decode_tokens(ids.flatten(1)), decoded, rtol=0, atol=0)
    stored = tokenizer.encode_stored(video, torch.float16)
    assert stored.dtype == torch.uint16 and torch.equal(stored.long(), ids)  # 64000 codes fit in 16 bits


def test_released_layout_and_sizes(nbp_parity):
    with torch.device('meta'):
        tokenizer = NBPTokenizer()
    layout = [(name, tuple(tensor.shape)) for name, tensor in tokenizer.state_dict().items()]
    assert layout == [(name, tuple(shape)) for name, shape in nbp_parity['checkpoint_layouts']['tokenizer_128']]
    counts = nbp_parity['param_counts']['tokenizer_128']
    assert sum(p.numel() for p in tokenizer.parameters()) == counts['total']
    assert sum(p.numel() for p in tokenizer.encoder_layers.parameters()) == counts['encoder']
    assert (tokenizer.spatial_compression, tokenizer.temporal_compression) == (8, 4)
    assert (tokenizer.latent_channels, tokenizer.codebook_size, tokenizer.latent_size) == (6, 64000, 16)
    assert tokenizer.latent_frames(17) == 5 and tokenizer.num_frames(5) == 17
    with pytest.raises(ValueError, match='1 \\+ 4 k frames'):
        tokenizer.latent_frames(16)


def test_encoder_is_causal_in_time():
    torch.manual_seed(0)
    tokenizer = NBPTokenizer(image_size=16, channels=(4, 6, 8), num_groups=2).eval()
    video = torch.rand(1, 3, 9, 16, 16)
    changed = video.clone()
    changed[:, :, 5:] = torch.rand(1, 3, 4, 16, 16)  # frames of the last latent frame only
    with torch.no_grad():
        before, after = tokenizer.encode_latents(video), tokenizer.encode_latents(changed)
        decoded = tokenizer.decode_clip(tokenizer.encode_clip(video)[0])
    assert torch.equal(before[:, :, :2], after[:, :, :2]) and not torch.equal(before[:, :, 2], after[:, :, 2])
    assert decoded.shape == video.shape


def test_spatial_compression_4_keeps_twice_the_tokens_per_side():
    torch.manual_seed(0)
    tokenizer = NBPTokenizer(image_size=32, channels=(4, 6, 8), num_groups=2, fsq_levels=(8, 5, 5, 5),
                             spatial_compression=4).eval()
    released = NBPTokenizer(image_size=32, channels=(4, 6, 8), num_groups=2, fsq_levels=(8, 5, 5, 5))
    assert (tokenizer.spatial_compression, tokenizer.latent_size) == (4, 8)
    assert (released.spatial_compression, released.latent_size) == (8, 4)
    # only the space-only downsampling and its upsampling (a convolution and a depth-to-space) are left out
    assert (len(released.encoder_layers) - len(tokenizer.encoder_layers),
            len(released.decoder_layers) - len(tokenizer.decoder_layers)) == (1, 2)
    video = torch.rand(2, 9, 3, 32, 32)
    ids = tokenizer.encode_tokens(video)
    assert ids.shape == (2, 3, 8, 8) and int(ids.max()) < 1000
    assert tokenizer.decode_tokens(ids.flatten(1)).shape == video.shape
    with pytest.raises(ValueError, match='spatial_compression must be one of \\[8, 4\\], got 2'):
        NBPTokenizer(image_size=32, channels=(4, 6, 8), num_groups=2, spatial_compression=2)
    with pytest.raises(ValueError, match='image_size be a multiple of 4'):
        NBPTokenizer(image_size=30, channels=(4, 6, 8), num_groups=2, spatial_compression=4)


def test_checkpoint_of_another_spatial_compression_names_the_key(tmp_path):
    path = tmp_path / 'tokenizer.pt'
    torch.save(NBPTokenizer(image_size=32, channels=(4, 6, 8), num_groups=2).state_dict(), path)
    with pytest.raises(ValueError, match='spatial_compression=4\\).*`spatial_compression`'):
        NBPTokenizer(image_size=32, channels=(4, 6, 8), num_groups=2, spatial_compression=4, checkpoint=str(path))


def test_checkpoint_with_module_prefix_loads(nbp_parity, tmp_path):
    data = nbp_parity['tokenizer']
    path = tmp_path / 'magvit2_tiny.pt'
    state = {f'module.{name}': tensor for name, tensor in data['state_dict'].items()}
    torch.save({'model_state_dict': state, 'version': '0.0', 'config': pickle.dumps({})}, path)
    config = {key: data['config'][key] for key in ('image_size', 'channels', 'num_groups', 'fsq_levels')}
    tokenizer = AUTOENCODERS.build({'type': 'NBPTokenizer', **config, 'checkpoint': str(path)})
    for name, tensor in tokenizer.state_dict().items():
        assert torch.equal(tensor, data['state_dict'][name]), name
    assert all(p.requires_grad and p.device.type == 'cpu' for p in tokenizer.parameters())  # trainable, not meta


def test_checkpoint_errors(nbp_parity, tmp_path):
    with pytest.raises(FileNotFoundError, match='magvit2_ucf.pt'):
        NBPTokenizer(checkpoint=str(tmp_path / 'absent.pt'))
    path = tmp_path / 'tiny.pt'
    torch.save({'model_state_dict': nbp_parity['tokenizer']['state_dict']}, path)
    with pytest.raises(ValueError, match='tiny.pt does not fit NBPTokenizer'):
        NBPTokenizer(image_size=32, channels=(4, 6, 10), num_groups=2, checkpoint=str(path))
    cut = tmp_path / 'magvit2_cut.pt'
    cut.write_bytes(path.read_bytes()[:3000])  # an interrupted download
    with pytest.raises(ValueError, match=r'magvit2_cut.pt cannot be read, it is damaged or truncated \(') as error:
        NBPTokenizer(image_size=32, channels=(4, 6, 8), num_groups=2, checkpoint=str(cut))
    assert '\n' not in str(error.value)


# ----- evaluation of reconstructions through test.py -----

TINY = {'image_size': 32, 'channels': [4, 8, 8], 'num_groups': 2, 'residual_units': [1, 1, 1, 1],
        'fsq_levels': [8, 5, 5, 5]}


def tokenizer_evaluation(tmp_path: Path, shared_dir: Path, **test) -> Path:
    """A tiny random tokenizer saved as a released ``magvit2_*.pt`` and an experiment file that scores its
    reconstructions of 3 MovingShapes clips of 17 frames (every metric, the reference's uint8 frames)."""
    torch.manual_seed(0)
    package = tmp_path / 'magvit2_tiny.pt'
    state = {f'module.{name}': tensor for name, tensor in NBPTokenizer(**TINY).state_dict().items()}
    torch.save({'model_state_dict': state, 'version': '0.0'}, package)
    weights = shared_dir / 'weights'
    metrics = ['psnr', 'ssim', {'type': 'lpips', 'net': 'vgg',
                                'backbone_weights': str(weights / 'lpips_vgg/vgg16_features_imagenet.pth'),
                                'head_weights': str(weights / 'lpips_vgg/lpips_v0.1_vgg_lin.pth')},
               {'type': 'fvd', 'weights': str(weights / 'i3d_k400/i3d_kinetics400_tfhub.pt')}]
    experiment = {
        'name': 'tokenizer_eval', 'autoencoder': {'type': 'NBPTokenizer', **TINY},
        'datasets': {'val': {'type': 'MovingShapes', 'split': 'val', 'source': {
            'root': str(tmp_path / 'data'), 'num_videos': 3, 'num_frames': 17, 'resolution': 32}}},
        'test': {'dataset': 'val', 'checkpoint': str(package), 'batch_size': 2,
                 'protocol': {'type': 'reconstruction', 'num_frames': 17, 'reference_quirks': True,
                              'metrics': metrics}, **test}}
    path = tmp_path / 'tokenizer_eval.yml'
    path.write_text(yaml.safe_dump(experiment, sort_keys=False))
    return path


@pytest.mark.slow
def test_test_py_scores_a_tokenizers_reconstructions(tmp_path, shared_dir, scripts, dataset_of):
    experiment = tokenizer_evaluation(tmp_path, shared_dir)
    result = scripts.run('test.py', '-opt', str(experiment), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    results = json.loads(next((tmp_path / 'experiments').rglob('results.json')).read_text())
    assert results['weights'].endswith('magvit2_tiny.pt') and results['reconstruction']['codebook_size'] == 1000
    scored = {'psnr', 'ssim', 'lpips', 'fvd'}
    assert {key for key in results['metrics'] if not key.endswith('_std')} == scored | {f'{m}_quirk_free'
                                                                                        for m in scored}
    assert results['protocol']['quirks'] == {'uint8_frames': '(x * 255).byte() / 255 before scoring'}
    assert results['per_frame']['frames'] == list(range(17))

    # the same numbers from the tokenizer and the clips directly: uint8 frames, PSNR per frame, mean over all
    tokenizer = AUTOENCODERS.build({'type': 'NBPTokenizer', **TINY, 'checkpoint': str(tmp_path / 'magvit2_tiny.pt')})
    data = dataset_of('MovingShapes', 'val', {'root': str(tmp_path / 'data'), 'num_videos': 3, 'num_frames': 17,
                                              'resolution': 32})
    video = torch.stack([data[i]['video'] for i in range(3)])
    with torch.no_grad():
        recon = tokenizer.decode_tokens(tokenizer.encode_tokens(video))

    def psnr(a, b):
        return (10 * torch.log10(1 / (a - b).square().mean(dim=(2, 3, 4)))).mean().item()

    def uint8(x):
        return (x.clamp(0, 1) * 255).to(torch.uint8).float() / 255

    assert results['metrics']['psnr'] == pytest.approx(psnr(uint8(recon), uint8(video)), rel=1e-5)
    assert results['metrics']['psnr_quirk_free'] == pytest.approx(psnr(recon, video), rel=1e-5)
    assert results['metrics']['fvd'] > 0 and 0 < results['metrics']['lpips'] < 1


@pytest.mark.slow
def test_tokenizer_evaluation_stops_on_bad_options_and_files(tmp_path, shared_dir, scripts):
    experiment = tokenizer_evaluation(tmp_path, shared_dir, sampler={'type': 'NBPPipeline'})
    with pytest.raises(OptionError, match='test.sampler: test.protocol.type reconstruction scores .* remove test.sampler'):
        load_experiment(str(experiment))
    with pytest.raises(OptionError, match='test.protocol.num_frames: is 15, but autoencoder NBPTokenizer'):
        load_experiment(str(tokenizer_evaluation(tmp_path, shared_dir)), ['test.protocol.num_frames=15'])
    with pytest.raises(OptionError, match='test.sampler: missing: test.protocol.type mcvd samples the model'):
        load_experiment(str(experiment), ['test.sampler=null', 'test.protocol={type: mcvd, context_length: 1, '
                                          'unroll_length: 4, metrics: [psnr]}'])
    experiment = tokenizer_evaluation(tmp_path, shared_dir)
    package = tmp_path / 'magvit2_tiny.pt'
    package.write_bytes(package.read_bytes()[:5000])  # cut short, as an interrupted download
    result = scripts.run('test.py', '-opt', str(experiment), cwd=tmp_path)
    assert result.returncode == 1 and not (tmp_path / 'experiments' / 'tokenizer_eval' / 'results').exists()
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f'error: {experiment}: test.checkpoint: ') and 'magvit2_tiny.pt' in line
    assert 'damaged or truncated' in line
