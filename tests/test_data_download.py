"""scripts/download.py: the listing, a fast clear failure offline, archive extraction."""
import io
import re
import tarfile
import time

import pytest

from far.conversions import nbp
from far.models import autoencoders, nbp_tokenizer


@pytest.fixture(scope='module')
def download(scripts):
    return scripts.module('scripts/download.py')


def test_list_names_every_published_repository(download, capsys):
    assert download.main(['--list']) == 0
    out = capsys.readouterr().out
    for repo in ('guyuchao/UCF101', 'guyuchao/BAIR', 'guyuchao/DMLab', 'guyuchao/DMLab_Latent',
                 'guyuchao/Minecraft', 'guyuchao/Minecraft_Latent', 'guyuchao/FAR_Models',
                 'ShuhuaiRen/NBP-tokenizer-ucf', 'ShuhuaiRen/NBP-tokenizer-k600', 'ShuhuaiRen/NBP-ucf-base',
                 'ShuhuaiRen/NBP-ucf-3b', 'ShuhuaiRen/NBP-k600-base', 'ShuhuaiRen/NBP-k600-3b'):
        assert repo in out
    assert 'datasets/dmlab_latent' in out and 'experiments/pretrained_models/FAR_Models' in out


def test_offline_fails_at_once_with_one_message(download, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(download.constants, 'HF_HUB_OFFLINE', True)
    start = time.monotonic()
    assert download.main(['--what', 'bair', '--root', str(tmp_path)]) == 1
    assert time.monotonic() - start < 5
    err = capsys.readouterr().err
    assert 'guyuchao/BAIR' in err and 'HF_HUB_OFFLINE' in err and str(tmp_path / 'datasets' / 'bair') in err


def test_unreachable_hub_is_reported_as_one_error(download, tmp_path, monkeypatch):
    monkeypatch.setattr(download.constants, 'HF_HUB_OFFLINE', False)

    def unreachable(*args, **kwargs):
        raise ConnectionError('Name or service not known')

    monkeypatch.setattr(download.HfApi, 'repo_info', unreachable)
    with pytest.raises(download.DownloadError, match='cannot download guyuchao/FAR_Models .*ConnectionError.*token'):
        download.fetch('models', tmp_path)


def test_unknown_entry_is_refused(download):
    with pytest.raises(SystemExit):
        download.main(['--what', 'kinetics'])


def test_archives_are_extracted_once(download, tmp_path):
    payload = b'[{"video_path": "datasets/bair/videos/0.mp4"}]'
    with tarfile.open(tmp_path / 'shard-000000.tar', 'w') as tar:
        info = tarfile.TarInfo('bair_val.json')
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    assert len(download.extract_archives(tmp_path)) == 1
    assert (tmp_path / 'bair_val.json').read_bytes() == payload
    (tmp_path / 'bair_val.json').write_text('edited')
    download.extract_archives(tmp_path)
    assert (tmp_path / 'bair_val.json').read_text() == 'edited'  # not extracted a second time


def test_every_download_hint_names_a_listed_entry(download):
    with pytest.raises(FileNotFoundError) as missing_ckpt:
        nbp.read_lightning_checkpoint('missing.ckpt')
    hints = ' '.join([autoencoders.DOWNLOAD_HINT, nbp_tokenizer.DOWNLOAD_HINT, str(missing_ckpt.value)])
    named = re.findall(r'--what (\w+)', hints) + re.findall(r'\(or (\w+)\)', hints)
    assert {'models', 'nbp_tokenizer_ucf', 'nbp_tokenizer_k600', 'nbp_ucf_base'} <= set(named)
    assert set(named) <= set(download.AVAILABLE)
