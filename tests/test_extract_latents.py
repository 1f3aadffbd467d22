"""Latent extraction: shards in the far.data.shards format, raw latents, the same output for any process count."""
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import diffusers
import pytest
import torch
from accelerate.state import AcceleratorState

import far.data  # noqa: F401  (registers the datasets)
import far.models.autoencoders  # noqa: F401  (registers the autoencoders)
from far.data import ClipOptions, VideoDataset
from far.data.dataset import VideoDatasetOptions
from far.options import validate_block
from far.registry import AUTOENCODERS, DATASETS

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / 'scripts' / 'extract_latents.py'

TINY_DCAE = {
    'in_channels': 3, 'latent_channels': 4, 'attention_head_dim': 8,
    'encoder_block_types': ['ResBlock', 'EfficientViTBlock'], 'decoder_block_types': ['ResBlock', 'EfficientViTBlock'],
    'encoder_block_out_channels': [8, 16], 'decoder_block_out_channels': [8, 16],
    'encoder_layers_per_block': [0, 1], 'decoder_layers_per_block': [0, 1],
    'encoder_qkv_multiscales': [[], []], 'decoder_qkv_multiscales': [[], []],
    'decoder_norm_types': ['batch_norm', 'rms_norm'], 'decoder_act_fns': ['relu', 'silu'],
    'scaling_factor': 0.5,
}


def options_for(root: Path, output_dir: Path, **extra) -> list:
    """Command-line options: 5 MovingShapes videos (3 frames, 16 px) through a tiny DC-AE, 2 per shard."""
    overrides = {
        'autoencoder.type': 'AutoencoderDC', 'autoencoder.config': root / 'dcae.json',
        'autoencoder.checkpoint': root / 'dcae.pth',
        'dataset.type': 'MovingShapes', 'dataset.source.root': root / 'data', 'dataset.split': 'val',
        'dataset.source.num_videos': 5, 'dataset.source.num_frames': 3, 'dataset.source.resolution': 16,
        'output_dir': output_dir, 'samples_per_shard': 2, 'latent_dtype': 'float32', 'num_workers': 0, **extra,
    }
    return [f'{k}={v}' for k, v in overrides.items()]


@pytest.fixture(scope='module')
def extraction(tmp_path_factory, scripts):
    """One in-process extraction (a single process); yields its folder and the script module."""
    root = tmp_path_factory.mktemp('extract')
    (root / 'dcae.json').write_text(json.dumps(TINY_DCAE))
    torch.manual_seed(0)
    torch.save(diffusers.AutoencoderDC.from_config(TINY_DCAE).state_dict(), root / 'dcae.pth')
    script = scripts.module('scripts/extract_latents.py')
    AcceleratorState._reset_state(True)  # a fresh single-process state, whatever other tests set up
    script.main(['-opt', str(write_yaml(root)), *options_for(root, root / 'one')])
    AcceleratorState._reset_state(True)
    return root, script


def write_yaml(root: Path) -> Path:
    """Half the options in a YAML file, to run the -opt path too (the command line overrides it)."""
    path = root / 'extract.yml'
    path.write_text('samples_per_shard: 100\nlatent_dtype: float16\noutput_dir: elsewhere\n')
    return path


def test_shards_hold_the_raw_latents_and_metadata(extraction):
    root, _ = extraction
    out = root / 'one'
    index = json.loads((out / 'index.json').read_text())
    assert [s['num_samples'] for s in index['shards']] == [2, 2, 1]
    assert [s['file'] for s in index['shards']] == ['shard-000000.tar', 'shard-000001.tar', 'shard-000002.tar']
    assert (index['num_samples'], index['num_unreadable'], index['latent_dtype']) == (5, 0, 'float32')
    assert (index['latent_channels'], index['spatial_compression'], index['scaling_factor']) == (4, 2, 0.5)
    assert index['autoencoder']['type'] == 'AutoencoderDC' and index['dataset']['type'] == 'MovingShapes'

    autoencoder = AUTOENCODERS.build({'type': 'AutoencoderDC', 'config': str(root / 'dcae.json'),
                                      'checkpoint': str(root / 'dcae.pth')})
    pixels = DATASETS.build(validate_block({'type': 'MovingShapes', 'split': 'val', 'source': {
        'root': str(root / 'data'), 'num_videos': 5, 'num_frames': 3, 'resolution': 16}}, DATASETS, 'test.yml'))
    # What training with `source: {type: shards, path: <output_dir>, use_latent: true}` reads, checksums checked.
    latents = VideoDataset(name='latents', fields=('label',), pad_short=False, conditions={})(
        options=VideoDatasetOptions(split='val', source={'type': 'shards', 'path': str(out), 'use_latent': True},
                                    read=ClipOptions(num_frames=3, strict=True)))
    assert len(latents) == 5
    with tarfile.open(out / 'shard-000000.tar') as tar:
        assert set(json.loads(tar.extractfile('00000000.json').read())['crc32']) == {'latent.npy'}
    for i in range(5):
        item, source = latents[i], pixels[i]
        assert (item['index'], item['label']) == (i, source['label'])
        video = source['video'][None]
        torch.testing.assert_close(item['latent'], autoencoder.encode_raw(video)[0], rtol=0, atol=0)
        scaled = autoencoder.scale_latents(item['latent'])
        torch.testing.assert_close(scaled, autoencoder.encode(video)[0], rtol=0, atol=0)


def test_existing_output_needs_overwrite_and_streams_are_refused(extraction):
    root, script = extraction
    with pytest.raises(FileExistsError, match='overwrite: true'):
        script.main(options_for(root, root / 'one'))
    with pytest.raises(ValueError, match='streaming: false'):
        script.main(options_for(root, root / 'stream', **{'dataset.split': 'train', 'dataset.read.streaming': 'true'}))
    with pytest.raises(ValueError, match=r"latent_dtype: got 'bf16'"):
        script.main(options_for(root, root / 'bad', latent_dtype='bf16'))


@pytest.mark.slow
def test_two_processes_write_the_same_shards(extraction, scripts):
    root, _ = extraction
    env = {**os.environ, 'ACCELERATE_USE_CPU': '1', 'OMP_NUM_THREADS': '1'}
    command = [sys.executable, '-m', 'accelerate.commands.launch', '--multi_gpu', '--num_processes', '2',
               '--num_machines', '1', '--mixed_precision', 'no', '--dynamo_backend', 'no',
               '--main_process_port', str(scripts.free_port()), str(SCRIPT),
               '-opt', str(root / 'extract.yml'), *options_for(root, root / 'two')]
    result = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert '2 process(es)' in result.stdout
    names = sorted(p.name for p in (root / 'one').iterdir())
    assert names == sorted(p.name for p in (root / 'two').iterdir())
    for name in names:
        assert (root / 'one' / name).read_bytes() == (root / 'two' / name).read_bytes(), name
