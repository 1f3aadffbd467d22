"""The rollout protocol: scores over the predicted frames and per bucket of frames, for each video's best
trajectory."""
import pytest
import torch

from far.metrics import RolloutProtocol
from far.registry import PROTOCOLS


def test_buckets_average_the_best_trajectorys_frames():
    protocol = RolloutProtocol(context_length=2, unroll_length=5, bucket_size=2, metrics=['mse'])
    assert protocol.buckets() == [(2, 3), (4, 5), (6, 6)]
    gt = torch.zeros(2, 7, 3, 4, 4)
    samples = torch.zeros(2, 2, 7, 3, 4, 4)
    errors = torch.tensor([[[0, 0, .1, .1, .2, .2, .3], [0, 0, .9, .9, .9, .9, .9]],   # video 0: trajectory 0 best
                           [[0, 0, .8, .8, .8, .8, .8], [0, 0, .4, .0, .0, .0, .2]]])  # video 1: trajectory 1
    samples += errors.sqrt()[..., None, None, None]  # a constant error e per frame: MSE e
    scores = protocol.evaluate(samples, gt)
    assert scores['mse'] == pytest.approx((0.9 / 5 + 0.6 / 5) / 2)
    assert scores['buckets'] == [{'frames': [2, 3], 'mse': pytest.approx((0.1 + 0.1 + 0.4 + 0.0) / 4)},
                                 {'frames': [4, 5], 'mse': pytest.approx((0.2 + 0.2) / 4)},
                                 {'frames': [6, 6], 'mse': pytest.approx((0.3 + 0.2) / 2)}]
    summary = protocol.aggregate([scores, scores])
    assert summary['buckets'][0] == {'frames': [2, 3], 'mse': pytest.approx(0.15), 'mse_std': 0.0}


def test_registered_and_checked(shared_dir):
    assert PROTOCOLS.get('rollout') is RolloutProtocol
    with pytest.raises(ValueError, match='bucket_size must be >= 1'):
        RolloutProtocol(context_length=2, unroll_length=4, bucket_size=0)
    with pytest.raises(ValueError, match='FVD needs at least min_frames=10 frames'):
        RolloutProtocol(context_length=2, unroll_length=4, bucket_size=2, metrics=[
            {'type': 'fvd', 'weights': str(shared_dir / 'weights/i3d_k400/i3d_kinetics400_tfhub.pt')}])
    with pytest.raises(TypeError, match='reference_quirks'):
        RolloutProtocol(context_length=2, unroll_length=4, bucket_size=2, reference_quirks=True)
