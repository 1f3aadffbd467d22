"""NBP's reference checkpoints and configs -> ``NBPTransformer`` and ``NBPTokenizer``.

The released transformers are Lightning checkpoints (``ucf_base_nbp16_hybrid.ckpt``, ...): the GPT under
``transformer.``, next to the frozen tokenizer's ``first_stage_model.*`` (which the experiment's ``autoencoder``
block loads from ``magvit2_*.pt`` instead), optionally ``module.``-prefixed. Their configs are the reference GPT's
arguments and its wrapper's settings, as the parity fixture stores them.
"""
import argparse
from pathlib import Path
from typing import Dict, Mapping

import torch
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

from ..models.nbp import NBPTransformer
from ..models.nbp_tokenizer import NBPTokenizer
from ..utils.faults import first_line

GPT_PREFIX = 'transformer.'  # the GPT inside the reference Lightning module
GPT_NAMES = ('tok_emb.weight', 'pos_emb', 'head.weight')  # what every NBP transformer holds


def transformer_from_reference_config(gpt_config: Mapping, wrapper_config: Mapping, **kwargs) -> NBPTransformer:
    """An ``NBPTransformer`` of the reference GPT arguments (``n_layer``, ``n_head``, ``n_embd``, ``block_size``,
    ``vocab_size``, ``embd_pdrop``, ...) and its wrapper's settings (``hybrid``, ``unconditional``,
    ``cond_stage_key``, ``cond_stage_vocab_size``, ``cond_token_num``, ``first_stage_vocab_size``,
    ``token_number_per_step``)."""
    w = wrapper_config
    if bool(w.get('starts_with_bov')) != bool(w['hybrid']):
        raise ValueError('NBPTransformer supports the reference layouts hybrid + BOV and non-hybrid without '
                         f"BOV, got hybrid={w['hybrid']}, starts_with_bov={w.get('starts_with_bov')}")
    if w['unconditional']:
        condition = None
    elif w['cond_stage_key'] == 'text':
        condition = {'type': 'text', 'vocab_size': w['cond_stage_vocab_size'], 'num_tokens': w['cond_token_num']}
    else:
        condition = {'type': 'label', 'num_classes': w['cond_stage_vocab_size']}
    model = NBPTransformer(num_layers=gpt_config['n_layer'], num_attention_heads=gpt_config['n_head'],
                           hidden_size=gpt_config['n_embd'], max_positions=gpt_config['block_size'],
                           video_vocab_size=w['first_stage_vocab_size'],
                           token_number_per_step=w['token_number_per_step'], hybrid=bool(w['hybrid']),
                           condition_cfg=condition, dropout=gpt_config.get('embd_pdrop', 0.0), **kwargs)
    if model.vocab_size != gpt_config['vocab_size']:
        raise ValueError(f"NBPTransformer: the configs give vocabulary {model.vocab_size}, the GPT has "
                         f"{gpt_config['vocab_size']}")
    return model


def tokenizer_from_reference_config(config: Mapping, **kwargs) -> NBPTokenizer:
    """An ``NBPTokenizer`` of a reference tokenizer config (``image_size``, ``channels``, ``num_groups``,
    ``fsq_levels``, ``embed_dim``), e.g. the parity fixture's ``tokenizer.config``."""
    levels = list(config['fsq_levels'])
    if config.get('embed_dim', len(levels)) != len(levels):
        raise ValueError(f"NBPTokenizer: embed_dim {config['embed_dim']} must equal the number of FSQ levels "
                         f'{levels} (the tokenizer has no FSQ projections)')
    return NBPTokenizer(image_size=config['image_size'], channels=tuple(config['channels']),
                        num_groups=config['num_groups'], fsq_levels=levels, **kwargs)


def gpt_weights(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The GPT weights of a reference state dict: a Lightning ``state_dict`` (GPT under ``transformer.``, the
    tokenizer's ``first_stage_model.*`` left out), optionally ``module.``-prefixed, or plain GPT names."""
    state = dict(state_dict)
    consume_prefix_in_state_dict_if_present(state, 'module.')
    if any(key.startswith(GPT_PREFIX) for key in state):
        state = {key[len(GPT_PREFIX):]: value for key, value in state.items() if key.startswith(GPT_PREFIX)}
    return state


def read_lightning_checkpoint(path: str, full_unpickle: bool = False) -> Dict[str, torch.Tensor]:
    """The GPT weights of a released Lightning ``.ckpt`` (e.g. ``ucf_base_nbp16_hybrid.ckpt``), read with
    ``weights_only=True`` (tensors and argparse arguments only) unless ``full_unpickle``: then every object it pickled
    is rebuilt, which runs code of the file's choosing, so only for a file you trust. ValueError naming the file when
    it is damaged, truncated, refused or not an NBP transformer checkpoint."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"NBP checkpoint '{path}' does not exist: download a released one "
                                '(python scripts/download.py --what nbp_ucf_base) and pass its path')
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            checkpoint = torch.load(file, map_location='cpu', weights_only=not full_unpickle)
    except Exception as error:
        if not full_unpickle and 'Weights only load failed' in str(error):  # torch refused a pickled object
            raise ValueError(f'{file} holds objects besides tensors and argparse arguments; if you trust the file, '
                             'convert it with --full-unpickle (read_lightning_checkpoint(..., full_unpickle=True))'
                             ) from None
        raise ValueError(f'{file} cannot be read, it is damaged or truncated ({first_line(error)}): download it '
                         'again') from None
    state = checkpoint.get('state_dict', checkpoint) if isinstance(checkpoint, dict) else {}
    weights = gpt_weights(state)
    missing = [name for name in GPT_NAMES if not isinstance(weights.get(name), torch.Tensor)]
    if missing:
        found = ', '.join(list(state)[:3]) if isinstance(state, dict) else type(checkpoint).__name__
        raise ValueError(f'{file} is not an NBP transformer checkpoint: it has no {GPT_PREFIX}{missing[0]} '
                         f'(found: {found or "nothing"})')
    return weights


def load_reference_weights(model: NBPTransformer, state_dict: Mapping[str, torch.Tensor]):
    """Strictly load reference weights (see :func:`gpt_weights`) into ``model``."""
    try:
        model.load_state_dict(gpt_weights(state_dict), strict=True)
    except RuntimeError as error:
        summary = ' '.join(str(error).split())
        raise ValueError(f'the weights do not fit {type(model).__name__}({dict(model.config)}): build it with '
                         f"the checkpoint's sizes and layout. {summary[:500]}") from None
