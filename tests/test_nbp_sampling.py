"""NBP sampler: the reference filter, KV-cached greedy and seeded sampling against the reference runs,
batches, classifier-free guidance, next-token decoding (k = 1), decoding to pixels and the sampler protocol."""
import pytest
import torch

from far.conversions.nbp import (load_reference_weights, tokenizer_from_reference_config,
                                 transformer_from_reference_config)
from far.models import NBPTransformer
from far.pipelines import NBPPipeline, NBPSampling, VideoSampler, build_sampler, top_k_top_p_filtering

VARIANTS = ['hybrid_text', 'hybrid_label', 'semi_ar_uncond']


def reference_pipeline(variant) -> NBPPipeline:
    model = transformer_from_reference_config(variant['gpt_config'], variant['wrapper_config'])
    load_reference_weights(model, variant['state_dict'])
    pipe = NBPPipeline(transformer=model.eval())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run_args(variant, batch=slice(None)):
    """Condition, prefix and length of the reference sampling runs (optionally for some videos only)."""
    greedy, cond = variant['greedy'], variant['train']['c_indices']
    prefix = greedy['prefix']
    return dict(num_tokens=greedy['video_indices'].shape[1], cond_ids=cond[batch] if cond.shape[1] else None,
                prefix=None if prefix is None else prefix[batch])


def tiny_pipeline(**overrides) -> NBPPipeline:
    config = dict(num_layers=2, num_attention_heads=2, hidden_size=32, max_positions=64, video_vocab_size=40,
                  token_number_per_step=4, hybrid=True, condition_cfg={'type': 'label', 'num_classes': 5}, dropout=0.0)
    torch.manual_seed(0)
    model = NBPTransformer(**{**config, **overrides})
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)  # larger than the GPT init, so that logits differ clearly
    pipe = NBPPipeline(transformer=model.eval())
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ----- reference behaviour -----

def test_filter_matches_reference(nbp_parity):
    data = nbp_parity['top_k_top_p_filtering']
    for case in data['cases']:
        out = top_k_top_p_filtering(data['input'].clone(), case['top_k'], case['top_p'])
        assert torch.equal(out, case['output']), (case['top_k'], case['top_p'])


@pytest.mark.parametrize('name', VARIANTS)
def test_greedy_matches_reference(nbp_parity, name):
    variant = nbp_parity['gpt'][name]
    greedy, steps, pipe = variant['greedy'], [], reference_pipeline(variant)
    out = pipe.generate_indices(
        **run_args(variant), top_k=1, callback=lambda *step: steps.append(step))
    assert torch.equal(out, greedy['video_indices'])
    prefix_length = 0 if greedy['prefix'] is None else greedy['prefix'].shape[1]
    assert len(steps) == greedy['num_steps'] == pipe.num_steps(out.shape[1], prefix_length)
    for (index, input_ids, past_length, logits), ids, past in zip(steps, greedy['step_input_ids'],
                                                                   greedy['step_past_length']):
        assert torch.equal(input_ids, ids) and past_length == past, index
    for index, logits in greedy['step_logits'].items():
        torch.testing.assert_close(steps[index][3], logits, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('name', VARIANTS)
def test_seeded_sampling_matches_reference(nbp_parity, name):
    variant = nbp_parity['gpt'][name]
    sampled, pipe = variant['sampled'], reference_pipeline(variant)
    options = dict(top_k=sampled['top_k'], top_p=sampled['top_p'], temperature=sampled['temperature'])
    generators = [torch.Generator().manual_seed(seed) for seed in sampled['seeds']]
    batch = pipe.generate_indices(**run_args(variant), **options, generator=generators)
    assert torch.equal(batch, sampled['video_indices'])
    alone = pipe.generate_indices(**run_args(variant, slice(1, 2)), **options,
                                  generator=torch.Generator().manual_seed(sampled['seeds'][1]))
    assert torch.equal(alone, sampled['video_indices'][1:])


def test_batch_greedy_equals_per_sample(nbp_parity):
    variant = nbp_parity['gpt']['hybrid_text']
    pipe = reference_pipeline(variant)
    batch = pipe.generate_indices(**run_args(variant), top_k=1)
    for b in range(2):
        assert torch.equal(pipe.generate_indices(**run_args(variant, slice(b, b + 1)), top_k=1), batch[b:b + 1])


# ----- beyond the reference -----

def test_guidance_batch_of_two():
    pipe = tiny_pipeline()
    labels, steps = torch.tensor([1, 3]), []
    out = pipe.generate_indices(num_tokens=16, cond_ids=labels, guidance_scale=3.0, top_k=1,
                                callback=lambda *step: steps.append(step))
    assert out.shape == (2, 16) and out.min() >= 0 and out.max() < 40
    logits = steps[0][3][:, -1]  # [2B, V]: the null-condition half, then the conditional half
    mixed = logits[:2] + 3.0 * (logits[2:] - logits[:2])
    assert torch.equal(out[:, 0], (mixed.argmax(-1) - pipe.transformer.video_offset).clamp(0, 39))
    unguided = pipe.generate_indices(num_tokens=16, cond_ids=labels, top_k=1)
    assert not torch.equal(out, unguided)
    sampled = pipe.generate_indices(num_tokens=16, cond_ids=labels, guidance_scale=2.0, top_k=10, top_p=0.9,
                                    generator=[torch.Generator().manual_seed(s) for s in (0, 1)])
    assert sampled.shape == (2, 16)
    with pytest.raises(ValueError, match='conditional transformer'):
        tiny_pipeline(condition_cfg=None, hybrid=False).generate_indices(
            num_tokens=16, prefix=out[:, :4], guidance_scale=2.0)


def test_block_size_one_cached_greedy_equals_recomputation():
    pipe = tiny_pipeline(token_number_per_step=1)
    model, labels = pipe.transformer, torch.tensor([2, 0])
    out = pipe.generate_indices(num_tokens=12, cond_ids=labels, top_k=1)
    video = torch.zeros(2, 0, dtype=torch.long)
    with torch.no_grad():
        for _ in range(12):  # no cache: the whole layout again for every token
            logits = model(model.layout_ids(video, labels))[:, -1]
            video = torch.cat([video, (logits.argmax(-1, keepdim=True) - model.video_offset).clamp(0, 39)], 1)
    assert torch.equal(out, video)


def test_prefix_and_length_checks():
    pipe = tiny_pipeline(condition_cfg=None, hybrid=False)
    prefix = torch.randint(0, 40, (2, 8))
    out = pipe.generate_indices(num_tokens=16, prefix=prefix, top_k=4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out[:, :8], prefix) and out.shape == (2, 16)
    with pytest.raises(ValueError, match='never predicts the first block'):
        pipe.generate_indices(num_tokens=16, batch_size=2)
    with pytest.raises(ValueError, match='multiple of the block size'):
        pipe.generate_indices(num_tokens=18, prefix=prefix)
    with pytest.raises(ValueError, match='one generator per video'):
        pipe.generate_indices(num_tokens=16, prefix=prefix, top_k=4, generator=[torch.Generator()])


def test_generate_decodes_videos(nbp_parity):
    tokenizer = tokenizer_from_reference_config(nbp_parity['tokenizer']['config'])
    tokenizer.load_state_dict(nbp_parity['tokenizer']['state_dict'])
    config = dict(video_vocab_size=64000, max_positions=96)
    conditional = tiny_pipeline(**config)
    pipe = build_sampler({'type': 'NBPPipeline', 'top_k': 100}, model=conditional.transformer, autoencoder=tokenizer)
    pipe.set_progress_bar_config(disable=True)
    assert isinstance(pipe, VideoSampler) and pipe.tokenizer is tokenizer and pipe.options == NBPSampling(top_k=100)
    video = pipe.generate(num_frames=9, cond_ids=torch.tensor([0, 4]),
                          generator=[torch.Generator().manual_seed(s) for s in (0, 1)])
    assert video.shape == (2, 9, 3, 32, 32) and video.min() >= 0 and video.max() <= 1

    predictor = NBPPipeline(transformer=tiny_pipeline(**config, condition_cfg=None, hybrid=False).transformer,
                            tokenizer=tokenizer)
    predictor.set_progress_bar_config(disable=True)
    context = nbp_parity['tokenizer']['video_uint8'][:, :, :5].float().transpose(1, 2) / 255  # [B, 5, 3, H, W]
    video = predictor.generate(num_frames=4, context=context, top_k=1)  # new frames, as predict counts them
    expected = tokenizer.decode_tokens(tokenizer.encode_tokens(context))
    assert video.shape == (2, 9, 3, 32, 32)
    torch.testing.assert_close(video[:, :5], expected, rtol=1e-4, atol=1e-4)  # causal decoder: context frames kept


# ----- the sampler protocol (test.py, validation) -----

@pytest.fixture(scope='module')
def tokenizer(nbp_parity):
    model = tokenizer_from_reference_config(nbp_parity['tokenizer']['config'])
    model.load_state_dict(nbp_parity['tokenizer']['state_dict'])
    return model.eval()


def sampler(tokenizer, **model_overrides) -> NBPPipeline:
    pipe = build_sampler({'type': 'NBPPipeline', 'top_k': 50, 'top_p': 0.9},
                         model=tiny_pipeline(video_vocab_size=64000, max_positions=96, **model_overrides).transformer,
                         autoencoder=tokenizer)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_options_are_one_keyword_only_dataclass():
    assert NBPSampling() == NBPSampling(top_k=None, top_p=None, temperature=1.0, guidance_scale=1.0)
    with pytest.raises(TypeError):
        NBPSampling(10)
    for bad in (dict(temperature=0.0), dict(top_k=0), dict(top_p=1.5)):
        with pytest.raises(ValueError):
            NBPSampling(**bad)
    pipe = tiny_pipeline()
    greedy = pipe.replace(top_k=1)
    assert greedy.options.top_k == 1 and pipe.options.top_k is None and greedy.transformer is pipe.transformer
    with pytest.raises(TypeError, match='has no setting'):
        pipe.replace(num_inference_steps=3)
    with pytest.raises(ValueError, match='unconditional'):
        NBPPipeline(transformer=tiny_pipeline(condition_cfg=None).transformer, options=NBPSampling(guidance_scale=2.0))


def test_predict_text_conditioned_videos_per_video_generators(tokenizer):
    table = 'options/model_cfg/nbp/ucf101_class_text_ids.json'
    pipe = sampler(tokenizer, condition_cfg={'type': 'text', 'vocab_size': 32000, 'num_tokens': 8,
                                             'class_text_ids': table}, condition_dropout=0.1)
    condition = pipe.condition
    assert condition is pipe.transformer.condition and condition.field == 'label' and condition.field_classes == 101
    conditions = condition.from_batch({'label': torch.tensor([3, 47])})
    assert conditions['text'].shape == (2, 8) and conditions["text"][0, :4].tolist() == [1, 24354, 29349, 1847]
    seeds = [torch.Generator().manual_seed(s) for s in (5, 6)]
    videos = pipe.predict(context=None, num_frames=5, conditions=conditions, generators=seeds, height=32, width=32)
    assert videos.shape == (2, 5, 3, 32, 32) and 0 <= videos.min() and videos.max() <= 1
    second = pipe.predict(context=None, num_frames=5, conditions={'text': conditions['text'][1:]},
                          generators=[torch.Generator().manual_seed(6)], height=32, width=32)
    torch.testing.assert_close(second, videos[1:], rtol=0, atol=1e-4)  # a video does not depend on its batch
    guided = pipe.replace(guidance_scale=2.0).predict(context=None, num_frames=5, conditions=conditions,
                                                      generators=[torch.Generator().manual_seed(s) for s in (5, 6)],
                                                      height=32, width=32)
    assert guided.shape == videos.shape and not torch.equal(guided, videos)
    with pytest.raises(ValueError, match=r"text-conditioned .* LongTensor\[2, 8\]"):
        pipe.predict(context=None, num_frames=5, conditions={'text': torch.zeros(2, 3, dtype=torch.long)},
                     generators=seeds, height=32, width=32)


def test_predict_continues_context_frames(tokenizer, nbp_parity):
    pipe = sampler(tokenizer, condition_cfg=None, hybrid=False)
    context = nbp_parity['tokenizer']['video_uint8'][:, :, :5].float().transpose(1, 2) / 255   # [2, 5, 3, 32, 32]
    seeds = [torch.Generator().manual_seed(s) for s in (0, 1)]
    videos = pipe.predict(context=context, num_frames=4, conditions=None, generators=seeds, height=32, width=32)
    assert videos.shape == (2, 9, 3, 32, 32)
    with pytest.raises(ValueError, match='image_size'):
        pipe.predict(context=context, num_frames=4, conditions=None, generators=seeds, height=64, width=64)
    with pytest.raises(ValueError, match='1 \\+ 4 k frames'):
        pipe.predict(context=context, num_frames=3, conditions=None, generators=seeds, height=32, width=32)
