"""NBP transformer and its next-block objective: parity of the training layouts with the reference, released
checkpoint names and paper sizes, block masks (k = 1 is next-token prediction), the null condition, save/load."""
import argparse
import json
import subprocess
import sys
from pathlib import Path, PosixPath

import pytest
import torch
from safetensors.torch import load_file

from far.conversions.nbp import load_reference_weights, read_lightning_checkpoint, transformer_from_reference_config
from far.models import NBPTransformer, build_model
from far.models.nbp import UCF101_TEXT_CONDITION
from far.objectives import NextBlockObjective
from far.registry import MODELS

objective = NextBlockObjective()


def logits(model, video, cond):
    return objective.logits(model, model, video, cond)

VARIANTS = ['hybrid_text', 'hybrid_label', 'semi_ar_uncond']


def reference_model(variant) -> NBPTransformer:
    model = transformer_from_reference_config(variant['gpt_config'], variant['wrapper_config'])
    load_reference_weights(model, variant['state_dict'])  # names `transformer.*`, strict
    return model.eval()


def tiny(**overrides) -> NBPTransformer:
    config = dict(num_layers=2, num_attention_heads=2, hidden_size=32, max_positions=64, video_vocab_size=50,
                  token_number_per_step=4, hybrid=True, condition_cfg={'type': 'label', 'num_classes': 5}, dropout=0.0)
    torch.manual_seed(0)
    return NBPTransformer(**{**config, **overrides}).eval()


# ----- parity and released checkpoints -----

@pytest.mark.parametrize('name', VARIANTS)
def test_training_layout_matches_reference(nbp_parity, name):
    variant = nbp_parity['gpt'][name]
    model, train = reference_model(variant), variant['train']
    cond = train['c_indices'] if model.condition_length else None
    input_ids = model.input_ids(train['z_indices'], cond)
    assert torch.equal(input_ids, train['gpt_input_ids'])
    mask = model.attention_mask(input_ids.shape[1])
    assert torch.equal(mask.expand_as(train['attn_mask']), train['attn_mask'])
    assert torch.equal(model.targets(train['z_indices']), train['target'])
    with torch.no_grad():
        full = model(input_ids)
        predictions = logits(model, train['z_indices'], cond)
        loss = objective(model, model, train['z_indices'], cond)
    torch.testing.assert_close(full, train['gpt_logits'], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(predictions, train['gpt_logits'][:, train['cut_len']:], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(loss, train['loss'], rtol=1e-4, atol=1e-4)


def test_released_checkpoint_names_and_paper_sizes(nbp_parity):
    counts = nbp_parity['param_counts']
    for size in ('base', 'xl', '3b'):
        for data, layout in (('ucf', dict(hybrid=True, condition_cfg=UCF101_TEXT_CONDITION)), ('k600', {})):
            with torch.device('meta'):  # no memory, no init cost
                model = build_model(f'NBP_{size}', **layout)
            expected = counts[f'{data}_{size}']
            total = sum(p.numel() for p in model.parameters())
            assert total == expected['total'] and model.vocab_size == expected['vocab_size'], (size, data)
            non_embedding = total - model.tok_emb.weight.numel() - model.head.weight.numel()
            assert non_embedding == expected['non_embedding']
            assert model.uncond_embedding.numel() == expected['uncond_embedding_buffer']
            if size == 'base':
                assert non_embedding == 687_823_872  # the paper's "700M"
                names = [(f'transformer.{n}', tuple(t.shape)) for n, t in model.state_dict().items()]
                assert names == [(n, tuple(s)) for n, s in nbp_parity['checkpoint_layouts'][f'{data}_base']]


def test_reference_checkpoint_loading(nbp_parity, tmp_path):
    variant = nbp_parity['gpt']['hybrid_label']
    model = transformer_from_reference_config(variant['gpt_config'], variant['wrapper_config'])
    lightning = {f'module.{k}': v for k, v in variant['state_dict'].items()}
    lightning['module.first_stage_model.encoder_layers.0.conv.weight'] = torch.zeros(1)  # the tokenizer: ignored
    path = tmp_path / 'tiny.ckpt'
    torch.save({'state_dict': lightning, 'hyper_parameters': {'args': argparse.Namespace(n_layer=2)}}, path)
    load_reference_weights(model, read_lightning_checkpoint(str(path)))
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, variant['state_dict'][f'transformer.{name}']), name
    script = Path(__file__).resolve().parents[1] / 'scripts' / 'convert_nbp_checkpoint.py'
    subprocess.run([sys.executable, str(script), str(path)], check=True, capture_output=True)
    converted = load_file(str(path.with_suffix('.safetensors')))
    assert converted.keys() == model.state_dict().keys()
    assert all(torch.equal(converted[k], v) for k, v in model.state_dict().items())
    with pytest.raises(FileNotFoundError, match='download.py --what nbp_ucf_base'):
        read_lightning_checkpoint(str(tmp_path / 'absent.ckpt'))
    wrong = transformer_from_reference_config(nbp_parity['gpt']['hybrid_text']['gpt_config'],
                                              nbp_parity['gpt']['hybrid_text']['wrapper_config'])
    with pytest.raises(ValueError, match='do not fit'):
        load_reference_weights(wrong, variant['state_dict'])


def test_lightning_files_that_need_a_full_unpickle_or_are_damaged_say_so(nbp_parity, tmp_path, scripts):
    state = {f'transformer.{k}' if not k.startswith('transformer.') else k: v
             for k, v in nbp_parity['gpt']['hybrid_label']['state_dict'].items()}
    path = tmp_path / 'callbacks.ckpt'  # a callback's state pickled as an object weights_only refuses
    torch.save({'state_dict': state, 'callbacks': {'ModelCheckpoint': {'dirpath': PosixPath('/ckpt')}}}, path)

    convert = scripts.module('scripts/convert_nbp_checkpoint.py').main

    def refusal(file: Path, *flags: str) -> str:
        """The one line the script exits with."""
        with pytest.raises(SystemExit) as stopped:
            convert([str(file), *flags])
        assert '\n' not in str(stopped.value.code)
        return str(stopped.value.code)

    line = refusal(path)
    assert line.startswith(f'error: {path} holds objects besides tensors') and '--full-unpickle' in line
    assert not path.with_suffix('.safetensors').exists()
    convert([str(path), '--full-unpickle'])
    converted = load_file(str(path.with_suffix('.safetensors')))
    assert all(torch.equal(converted[k[len('transformer.'):]], v) for k, v in state.items())

    truncated, wrong = tmp_path / 'truncated.ckpt', tmp_path / 'magvit2_ucf.ckpt'
    truncated.write_bytes(path.read_bytes()[:4000])
    torch.save({'state_dict': {'first_stage_model.encoder_layers.0.conv.weight': torch.zeros(2)}}, wrong)
    assert refusal(truncated, '--full-unpickle').startswith(f'error: {truncated} cannot be read, it is damaged or '
                                                            'truncated')
    assert refusal(wrong).startswith(f'error: {wrong} is not an NBP transformer checkpoint: it has no '
                                     'transformer.tok_emb.weight')

def test_registry_and_config_errors():
    assert {'NBPTransformer', 'NBP_base', 'NBP_xl', 'NBP_3b'} <= set(MODELS.keys())
    with pytest.raises(TypeError):
        NBPTransformer(2)  # keyword-only
    with pytest.raises(ValueError, match='condition_cfg must be'):
        tiny(condition_cfg={'type': 'label'})
    with pytest.raises(ValueError, match='needs a condition'):
        tiny(condition_cfg=None, condition_dropout=0.1)
    with pytest.raises(ValueError, match='cond_ids of shape'):
        model = tiny()
        objective(model, model, torch.zeros(2, 8, dtype=torch.long), None)


# ----- behaviour -----

@pytest.mark.parametrize('hybrid', [True, False])
def test_block_size_one_is_token_by_token(hybrid):
    model = tiny(token_number_per_step=1, hybrid=hybrid)
    length = 12
    mask = model.attention_mask(length)
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    causal[:, :1] = True  # the class token is visible to every position
    assert torch.equal(mask, causal)
    video = torch.randint(0, 50, (1, 10))
    changed = video.clone()
    changed[0, 6] = (video[0, 6] + 1) % 50
    label = torch.tensor([3])
    with torch.no_grad():
        before, after = logits(model, video, label), logits(model, changed, label)
    # output i predicts token i (hybrid: from BOV on) or token i + 1: only outputs that see token 6 change
    first_changed = 7 if hybrid else 6
    assert torch.equal(before[:, :first_changed], after[:, :first_changed])
    assert not torch.allclose(before[:, first_changed], after[:, first_changed])


def test_blocks_are_bidirectional_inside_causal_across():
    model = tiny(condition_cfg=None, hybrid=False)
    video = torch.randint(0, 50, (1, 16))
    changed = video.clone()
    changed[0, 9] = (video[0, 9] + 1) % 50  # block 2 (tokens 8..11)
    with torch.no_grad():
        before, after = model(model.input_ids(video)), model(model.input_ids(changed))
    assert torch.equal(before[:, :8], after[:, :8])
    assert not torch.allclose(before[:, 8], after[:, 8])  # an earlier position of the same block sees it


def test_condition_dropout_uses_the_null_condition():
    model = tiny(condition_dropout=1.0)
    video, label = torch.randint(0, 50, (2, 16)), torch.tensor([1, 4])
    with torch.no_grad():
        kept = logits(model, video, label)  # eval mode: no dropout
        null = model(model.input_ids(video, label), null_condition=torch.ones(2, dtype=torch.bool))[:, 1:]
        dropped = logits(model.train(), video, label)
    assert not torch.allclose(kept, null)
    torch.testing.assert_close(dropped, null)
    assert 'uncond_embedding' in model.state_dict() and 'uncond_embedding' not in dict(model.named_parameters())


def test_save_and_load_pretrained(tmp_path):
    model = tiny(condition_cfg={'type': 'text', 'vocab_size': 30, 'num_tokens': 8}, condition_dropout=0.1)
    model.save_pretrained(tmp_path)
    loaded = NBPTransformer.from_pretrained(tmp_path).eval()
    assert loaded.config.condition_cfg == model.config.condition_cfg
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name


def reference_hybrid_mask(cond_ids: torch.Tensor, seq_len: int, k: int, pad_id: int) -> torch.Tensor:
    """NBP's reference mask of a hybrid text sequence: lower-triangular, the condition columns visible to every row
    where the id shifted by k differs from pad + 1, then blocks of k from the condition + k on."""
    prefix = cond_ids.shape[1]
    mask = torch.ones(seq_len, seq_len).tril().repeat(len(cond_ids), 1, 1)
    found = (cond_ids + k) != pad_id + 1
    condition = mask[:, :, :prefix]
    condition[found[:, None].expand(-1, seq_len, -1)] = 1
    start = prefix + k
    for i in range(start, seq_len, k):
        mask[:, i:i + k, start:i + k] = 1
    return mask.bool()[:, None]


@pytest.mark.parametrize('k', [1, 4])
def test_text_pads_are_masked_as_the_reference_masks_them(tmp_path, k):
    table = tmp_path / 'classes.json'
    rows = [[1, 7, 8, 2, 2, 2], [1, 5, 6, 9, 4, 2]]
    table.write_text(json.dumps({'pad_id': 2, 'input_ids': rows}))
    model = tiny(token_number_per_step=k, condition_cfg={'type': 'text', 'vocab_size': 12, 'num_tokens': 6,
                                                          'class_text_ids': str(table)})
    cond, video = torch.tensor(rows), torch.randint(0, 50, (2, 12))
    input_ids = model.input_ids(video, cond)
    expected = reference_hybrid_mask(cond, input_ids.shape[1], k, pad_id=2)
    assert torch.equal(model.sequence_mask(input_ids).expand_as(expected), expected)
    assert (k == 1) == (model.causal_pad_id == 2)  # only k = 1 finds the pads, as the reference
    # the masked pads change what the text positions before them compute, not what cached sampling sees
    with torch.no_grad():
        full = model(input_ids)
        cache = model.make_kv_cache(2)
        stepped = torch.cat([model(input_ids[:, :8], kv_cache=cache), model(input_ids[:, 8:], kv_cache=cache)], 1)
    torch.testing.assert_close(stepped, full, rtol=1e-4, atol=1e-5)
