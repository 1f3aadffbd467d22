"""Download FAR's published datasets and checkpoints from the Hugging Face Hub.

    python scripts/download.py --list                      # what can be downloaded, and where it goes
    python scripts/download.py --what ucf101 bair          # datasets, extracted into datasets/<name>/
    python scripts/download.py --what models --include 'dcae/*'

The dataset repositories hold tar archives (``shard-*.tar``) of the files the JSON lists name; they are
extracted next to them (``--no-extract`` keeps only the archives), giving the ``data_list`` layout of
``far.data``. Private or gated repositories need a token: ``huggingface-cli login`` or ``HF_TOKEN``.
Offline (``HF_HUB_OFFLINE=1``, or no network) the script stops at once with one message.
"""
import argparse
import sys
import tarfile
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional

from huggingface_hub import HfApi, constants, snapshot_download


class Download(NamedTuple):
    repo_id: str
    repo_type: str
    destination: str
    description: str


AVAILABLE: Dict[str, Download] = {
    'ucf101': Download('guyuchao/UCF101', 'dataset', 'datasets/ucf101', 'UCF-101 videos, 101 classes'),
    'bair': Download('guyuchao/BAIR', 'dataset', 'datasets/bair', 'BAIR robot pushing, 64x64'),
    'dmlab': Download('guyuchao/DMLab', 'dataset', 'datasets/dmlab', 'DMLab 300-frame episodes with actions'),
    'dmlab_latent': Download('guyuchao/DMLab_Latent', 'dataset', 'datasets/dmlab_latent', 'DMLab DC-AE latents'),
    'minecraft': Download('guyuchao/Minecraft', 'dataset', 'datasets/minecraft',
                          'Minecraft 300-frame episodes with actions'),
    'minecraft_latent': Download('guyuchao/Minecraft_Latent', 'dataset', 'datasets/minecraft_latent',
                                 'Minecraft DC-AE latents'),
    'models': Download('guyuchao/FAR_Models', 'model', 'experiments/pretrained_models/FAR_Models',
                       'FAR and DC-AE checkpoints'),
    # NBP's released files, where options/*/nbp configs look for them
    'nbp_tokenizer_ucf': Download('ShuhuaiRen/NBP-tokenizer-ucf', 'model', 'experiments/pretrained_models/NBP',
                                  'NBP tokenizer for UCF-101 (magvit2_ucf.pt)'),
    'nbp_tokenizer_k600': Download('ShuhuaiRen/NBP-tokenizer-k600', 'model', 'experiments/pretrained_models/NBP',
                                   'NBP tokenizer for Kinetics-600 (magvit2_k600.pt)'),
    **{f'nbp_{data}_{size}': Download(f'ShuhuaiRen/NBP-{data}-{size}', 'model', 'experiments/pretrained_models/NBP',
                                      f'NBP-{size} transformer for {name} (Lightning .ckpt)')
       for data, name in (('ucf', 'UCF-101'), ('k600', 'Kinetics-600')) for size in ('base', '3b')},
}


class DownloadError(RuntimeError):
    pass


def listing() -> str:
    rows = [f'{key:<18} {d.repo_id:<29} -> {d.destination:<42} {d.description}' for key, d in AVAILABLE.items()]
    return '\n'.join(['available (--what KEY ...):'] + rows)


def fetch(key: str, root: Path, include: Optional[List[str]] = None, timeout: float = 10.0) -> Path:
    """Download one entry into ``root/<destination>``; raises DownloadError with the reason and the fix."""
    item = AVAILABLE[key]
    destination = root / item.destination
    if constants.HF_HUB_OFFLINE:
        raise DownloadError(f'cannot download {item.repo_id}: HF_HUB_OFFLINE is set; unset it (or set it to 0) on '
                            f'a machine with network access, or copy the files into {destination}')
    # One quick request first: without it, an unreachable hub costs a long series of download retries.
    # Its failure class depends on the hub client's HTTP library, hence the broad catch.
    try:
        HfApi().repo_info(item.repo_id, repo_type=item.repo_type, timeout=timeout)
        snapshot_download(item.repo_id, repo_type=item.repo_type, local_dir=destination, allow_patterns=include,
                          etag_timeout=timeout)
    except Exception as error:
        raise DownloadError(f'cannot download {item.repo_id} ({type(error).__name__}: {error}); check the network '
                            f'connection and, for a private or gated repository, your token '
                            f'(huggingface-cli login or HF_TOKEN)') from error
    return destination


def extract_archives(folder: Path) -> List[Path]:
    """Extract every ``shard-*.tar`` under ``folder`` into ``folder`` (once: a marker file records it)."""
    done = []
    for archive in sorted(folder.rglob('shard-*.tar')):
        marker = archive.with_name(archive.name + '.extracted')
        if not marker.exists():
            with tarfile.open(archive) as tar:
                tar.extractall(folder, filter='data')  # refuses absolute paths and links out of the folder
            marker.touch()
        done.append(archive)
    return done


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--list', action='store_true', help='show what can be downloaded and exit')
    parser.add_argument('--what', nargs='+', choices=sorted(AVAILABLE), metavar='KEY', help='entries to download')
    parser.add_argument('--root', default='.', help='folder that datasets/ and experiments/ go into (default: .)')
    parser.add_argument('--include', nargs='+', help="only files matching these patterns, e.g. 'dcae/*'")
    parser.add_argument('--no-extract', action='store_true', help='keep dataset archives packed')
    args = parser.parse_args(argv)
    if args.list or not args.what:
        print(listing())
        return 0
    for key in args.what:
        try:
            destination = fetch(key, Path(args.root), args.include)
        except DownloadError as error:
            print(f'error: {error}', file=sys.stderr)
            return 1
        print(f'{key}: downloaded into {destination}')
        if AVAILABLE[key].repo_type == 'dataset' and not args.no_extract:
            print(f'{key}: extracted {len(extract_archives(destination))} archives')
    return 0


if __name__ == '__main__':
    sys.exit(main())
