"""LPIPS v0.1 (AlexNet metric, VGG loss) against the published test vectors, and weight-file resolution."""
import dataclasses

import pytest
import torch

import far.metrics.weights as weights_module
from far.metrics import LPIPS, LPIPSMetric, MissingWeightsError, resolve_weights
from far.registry import METRICS


@pytest.fixture(scope='module')
def alex_files(shared_dir):
    folder = shared_dir / 'weights' / 'lpips_alex'
    return str(folder / 'alexnet_features_imagenet.pth'), str(folder / 'lpips_v0.1_alex_lin.pth')


@pytest.fixture(scope='module')
def alex(alex_files):
    return LPIPS('alex', *alex_files)


def sine_pair(size: int = 64):
    """The 64x64 pair of ../shared/weights/lpips_alex/README.md, both in [0,1]."""
    c = torch.arange(3.0).view(3, 1, 1)
    y, x = torch.arange(float(size)).view(1, -1, 1), torch.arange(float(size)).view(1, 1, -1)
    a = 0.5 + 0.5 * torch.sin(0.1 * x + 0.05 * y * (c + 1))
    b = 0.5 + 0.5 * torch.sin(0.1 * x + 0.05 * y * (c + 1) + 0.5)
    return a[None], b[None]


def test_alex_reproduces_reference_values(alex):
    a, b = sine_pair()
    assert alex(a, b, normalize=True).item() == pytest.approx(0.040192, abs=1e-4)
    # FAR's metric code passes [0,1] frames without normalize: the published numbers are of this kind.
    assert alex(a, b).item() == pytest.approx(0.034862, abs=1e-4)
    assert alex(2 * a - 1, 2 * b - 1).item() == pytest.approx(alex(a, b, normalize=True).item(), abs=1e-6)
    assert alex(a, a).item() == 0


def test_vgg_loss_value_and_gradient(shared_dir):
    folder = shared_dir / 'weights' / 'lpips_vgg'
    vgg = LPIPS(net='vgg', backbone_weights=str(folder / 'vgg16_features_imagenet.pth'),
                head_weights=str(folder / 'lpips_v0.1_vgg_lin.pth'))
    a, b = sine_pair()
    x = a.clone().requires_grad_(True)
    distance = vgg(torch.cat([x, b]), torch.cat([b, b]), normalize=True)
    assert distance.shape == (2, )
    assert distance[0].item() == pytest.approx(0.126820, abs=1e-4)
    assert distance[1].item() == 0
    distance.sum().backward()
    assert x.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in vgg.parameters())  # frozen, usable inside a training loss


def test_video_metric_scores_each_frame(alex_files, alex):
    a, b = sine_pair(32)
    sample = torch.stack([torch.cat([a, b]), torch.cat([b, b])])  # [N=2, T=2, 3, 32, 32]
    gt = torch.cat([b, b]).unsqueeze(0).expand_as(sample)
    for normalize in (True, False):
        metric = METRICS.build({'type': 'lpips', 'normalize': normalize, 'backbone_weights': alex_files[0],
                                'head_weights': alex_files[1], 'batch_size': 1})
        assert isinstance(metric, LPIPSMetric)
        scores = metric(sample, gt)
        assert scores.shape == (2, 2)
        assert scores[0, 0].item() == pytest.approx(alex(a, b, normalize=normalize).item(), abs=1e-6)
        assert scores[0, 1].item() == 0 and scores[1].abs().max().item() == 0


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    """No weight files anywhere: an empty torch hub cache and none of the FAR_* variables."""
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch'))
    for spec in weights_module.WEIGHT_FILES.values():
        monkeypatch.delenv(spec.env, raising=False)
    return tmp_path / 'torch' / 'hub' / 'checkpoints'


def test_offline_missing_weights_error_names_file_checksum_and_place(empty_cache, monkeypatch):
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    with pytest.raises(MissingWeightsError) as error:
        LPIPS('alex')
    message = str(error.value)
    for needed in ['alexnet-owt-7be5be79.pth', 'HF_HUB_OFFLINE is set',
                   'f100a655ee289210281a5b6674a480ce8d51e94d956cf4af21c5d444e5a67236',
                   str(empty_cache / 'alexnet-owt-7be5be79.pth'), '$FAR_ALEXNET_WEIGHTS',
                   'https://download.pytorch.org/models/alexnet-owt-7be5be79.pth']:
        assert needed in message


def test_environment_variable_and_wrong_file(alex_files, empty_cache, monkeypatch):
    monkeypatch.setenv('FAR_ALEXNET_WEIGHTS', alex_files[0])
    assert str(resolve_weights('alexnet')) == alex_files[0]
    # The heads file where the backbone belongs: refused by checksum, before anything is loaded.
    wrong = r'lpips_v0\.1_alex_lin\.pth \(from the given path\) has sha256 df73285e'
    with pytest.raises(MissingWeightsError, match=wrong):
        resolve_weights('alexnet', alex_files[1])
    monkeypatch.setenv('FAR_LPIPS_ALEX_WEIGHTS', str(empty_cache / 'nowhere.pth'))
    with pytest.raises(MissingWeightsError, match=r'nowhere\.pth \(from \$FAR_LPIPS_ALEX_WEIGHTS\) does not exist'):
        resolve_weights('lpips_alex')


def test_download_lands_in_the_cache_only_with_the_right_checksum(alex_files, empty_cache, monkeypatch):
    monkeypatch.delenv('HF_HUB_OFFLINE', raising=False)
    heads = weights_module.WEIGHT_FILES['lpips_alex']

    def served_from(file):  # a file:// URL runs the real download code without a network
        return dataclasses.replace(heads, url=f'file://{file}')

    monkeypatch.setitem(weights_module.WEIGHT_FILES, 'lpips_alex', served_from(alex_files[0]))
    with pytest.raises(MissingWeightsError, match='has sha256 f100a655'):
        resolve_weights('lpips_alex')
    assert not empty_cache.exists() or not any(empty_cache.iterdir())  # no partial or wrong file left behind

    monkeypatch.setitem(weights_module.WEIGHT_FILES, 'lpips_alex', served_from(alex_files[1]))
    path = resolve_weights('lpips_alex')
    assert path == empty_cache / 'lpips_v0.1_alex_lin.pth'
    assert path.read_bytes() == open(alex_files[1], 'rb').read()
