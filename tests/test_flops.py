"""far.utils.flops: FAR's FLOPs from its structure, checked against a hand count and PyTorch's FlopCounterMode."""
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from far.utils.flops import attention_pairs, forward_flops, training_step_flops

# a 1-layer FAR: width D = 2 heads x 16, 4 latent channels, 4x4 latents (n = 16 tokens a frame), batch 2 x 4 frames
B, T, C, H, W = 2, 4, 4, 4, 4
D, N, MLP, TIME = 32, H * W, 4 * 32, 256


@pytest.fixture
def one_layer(tiny_far):
    return tiny_far(num_layers=1, condition_cfg={'type': 'action', 'num_action_classes': 4})


def inputs():
    generator = torch.Generator().manual_seed(0)
    return (torch.randn(B, T, C, H, W, generator=generator), torch.rand(B, T, generator=generator) * 1000,
            {'action': torch.randint(0, 4, (B, T), generator=generator)})


def test_the_count_of_a_one_layer_model_equals_the_hand_count(one_layer):
    per_token = 2 * C * D + 3 * 2 * D * D + 2 * D * D + 2 * D * MLP + 2 * MLP * D + 2 * D * C  # in, qkv, out, MLP, out
    per_frame = 2 * TIME * D + 2 * D * D + 2 * 2 * D * 3 * D + 2 * D * 2 * D  # timestep MLP, adaLN 1 and 2, norm_out
    assert per_token == 25088 and per_frame == 34816
    dense = 2 * 2 * D * (T * N) ** 2  # QK^T and AV over all 64 x 64 pairs of a clip
    visible = 2 * 2 * D * N * N * (1 + 2 + 3 + 4)  # frame i's 16 queries see the 16 (i + 1) keys of frames 0..i

    counted = forward_flops(one_layer, batch=B, frames=T, height=H, width=W, attention_block=None)
    assert counted['tokens'] == B * T * N * per_token
    assert counted['frames'] == B * T * per_frame  # adaLN once per frame: 16x fewer than per token here
    assert counted['attention'] == B * dense
    assert counted['total'] == 4538368
    exact = forward_flops(one_layer, batch=B, frames=T, height=H, width=W, attention_block=1)
    assert exact['attention'] == B * visible
    assert training_step_flops(one_layer, batch=B, frames=T, height=H, width=W, attention_block=None) \
        == 3 * counted['total']


def test_the_count_agrees_with_pytorchs_flop_counter(one_layer):
    latents, timestep, conditions = inputs()
    # SDPA's math path runs as matrix products FlopCounterMode sees (the fused CPU kernel has no FLOP formula)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        one_layer(latents, timestep=timestep, conditions=conditions)
    measured = {str(op): flops for op, flops in counter.get_flop_counts()['Global'].items()}
    counted = forward_flops(one_layer, batch=B, frames=T, height=H, width=W, attention_block=None)
    assert measured['aten.addmm'] + measured['aten.mm'] == counted['tokens'] + counted['frames']
    assert measured['aten.bmm'] == counted['attention']
    assert counter.get_total_flops() == counted['total']


def test_tiles_count_what_a_block_sparse_kernel_computes():
    # 16 frames of 64 tokens in tiles of 128 (two frames): tile row q holds frames 2q, 2q + 1 and sees key tiles 0..q
    assert attention_pairs(16, 64, 128) == 128 * 128 * sum(q + 1 for q in range(8))
    assert attention_pairs(16, 64, 1) == 64 * 64 * 16 * 17 // 2
    assert attention_pairs(16, 64, None) == (16 * 64) ** 2
    # a tile that straddles frames: 3 frames of 3 tokens in tiles of 4 (the last tile is short)
    assert attention_pairs(3, 3, 4) == 4 * 8 + 4 * 9 + 1 * 9


def test_models_with_a_long_term_stream_are_refused(tiny_far_long):
    with pytest.raises(ValueError, match='FAR_Long'):
        forward_flops(tiny_far_long(), batch=1, frames=4, height=4, width=4, attention_block=None)
