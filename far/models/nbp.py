"""NBP: the semi-autoregressive video transformer of "Next Block Prediction: Video Generation via
Semi-Autoregressive Modeling" (Ren, Ma, Sun, Wei 2025), and its paper sizes NBP-base/xl/3b.

A video is a sequence of discrete tokens from the NBP tokenizer, flattened in (frame, row, column) order.
Instead of one token per step, the model predicts a block of k tokens per step (``token_number_per_step``,
16 in the paper: one row of a 16x16 latent frame): each position of block b predicts the token at the same
position of block b + 1. Attention is bidirectional inside a block and causal across blocks, so all tokens
of the next block come out of one forward pass. With k = 1 it is a plain next-token predictor.

The network is a pre-LN GPT (minGPT layout): token embedding + learned absolute positions, blocks of
``x + proj(attn(ln1 x))`` and ``x + mlp(ln2 x)`` (separate key/query/value projections, exact GELU MLP
of width 4C), a final LayerNorm and a bias-free head over the whole vocabulary.

Vocabulary and sequence layouts (as the released models were trained):
- ``hybrid=True`` (the UCF-101 models): ids ``0`` = begin-of-video (BOV), ``1..k-1`` = middle-BOS tokens,
  then the condition ids (+k), then the video ids (+k + condition vocabulary). The sequence is
  ``[condition] [BOV] [z_0 .. z_{k-1}] [1 .. k-1] [z_k ..]``: BOV and the first block predict the first
  k tokens one by one, then ``[z_{k-1}, 1 .. k-1]`` opens next-block prediction.
- ``hybrid=False`` (the K600 models): the condition ids (if any) come first, then the video ids
  (+ condition vocabulary; a conditional model keeps one unused special id at the end of the vocabulary).
  The first block is never predicted: generation starts from given tokens (frame prediction).
Condition tokens (text ids or a class label) are visible to every position. Text padding is not masked in the
released models: the reference finds pads by comparing ids already shifted by k with ``pad + 1``, which only
matches when k = 1. So with k = 1 (hybrid, a text condition whose class table names its ``pad_id``) a pad is
seen causally, by the positions from its own on, as the reference trained it (``sequence_mask``). Training drops the last block of the
sequence from the input and scores every prediction with a mean cross-entropy over the whole vocabulary,
non-video ids included.

``uncond_embedding`` is the null condition of classifier-free guidance: a fixed random buffer that
replaces the condition tokens' embeddings. The released models never trained with it (the reference
defines condition dropout but its scripts leave it off), so guidance needs a model trained with
``condition_dropout > 0``.

Parameter names are those of the reference GPT; the released Lightning checkpoints store them under
``transformer.`` (see ``far.conversions.nbp``). The training objective is ``far.objectives.NextBlockObjective``.
"""
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin

from ..conditions import Condition
from ..registry import MODELS, variant
from .kv_cache import TokenKVCache

# LLaMA ids of the class name, looked up from the dataset label (far.conditions)
UCF101_TEXT_CONDITION = {'type': 'text', 'vocab_size': 32000, 'num_tokens': 8,
                         'class_text_ids': 'options/model_cfg/nbp/ucf101_class_text_ids.json'}
BOV_ID = 0


# ----- transformer block -----

class SelfAttention(nn.Module):
    """Multi-head attention with separate key/query/value projections and a boolean mask."""

    def __init__(self, dim: int, num_heads: int, dropout: float):
        super().__init__()
        self.num_heads = num_heads
        self.key, self.query, self.value = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, kv_cache: Optional[TokenKVCache],
                layer: int) -> torch.Tensor:
        def heads(t):  # [B, L, C] -> [B, H, L, C/H]
            return t.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)

        q, k, v = heads(self.query(x)), heads(self.key(x)), heads(self.value(x))
        if kv_cache is not None:
            k, v = kv_cache.extend(layer, k, v)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.dropout(self.proj(y.transpose(1, 2).flatten(2)))


class Block(nn.Module):
    """Pre-LN transformer block: ``x + attn(ln1 x)``, then ``x + mlp(ln2 x)``."""

    def __init__(self, dim: int, num_heads: int, dropout: float):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, num_heads, dropout)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, mask: torch.Tensor, kv_cache: Optional[TokenKVCache] = None,
                layer: int = 0) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), mask, kv_cache, layer)
        return x + self.mlp(self.ln2(x))


# ----- model -----

@MODELS.register()
class NBPTransformer(ModelMixin, ConfigMixin):
    """Semi-autoregressive (next-block) video transformer; see the module docstring for the layouts.

    Args (keyword-only):
        num_layers, num_attention_heads, hidden_size: transformer size.
        max_positions: learned absolute positions (the sequence length limit; 5120 released).
        video_vocab_size: tokenizer codebook size.
        token_number_per_step: k, tokens per block (1 = next-token prediction).
        hybrid: the UCF-101 layout (BOV, first block token by token, middle-BOS), also without a condition
            (which the reference forbids); ``False``: the K600 layout (first block given).
        condition_cfg: ``None`` (unconditional), ``{'type': 'text', 'vocab_size': V, 'num_tokens': P}``
            (P text ids, e.g. ``UCF101_TEXT_CONDITION``, which looks the ids of a dataset label up in its
            ``class_text_ids`` table) or ``{'type': 'label', 'num_classes': N}`` (one id); see
            ``far.conditions``. Parsed once into ``model.condition``.
        dropout: embedding and residual dropout (the reference trained with 0.1; attention has none).
        condition_dropout: training probability of replacing a sample's condition by the null condition
            (``uncond_embedding``), drawn per sample, so that classifier-free guidance can be used; 0 disables
            it.
    """

    _no_split_modules = ['Block']
    condition_kinds = ('label', 'text')
    family = 'NBP'  # what samplers and trainers accept (model_families)

    @register_to_config
    def __init__(
        self,
        *,
        num_layers: int = 24,
        num_attention_heads: int = 16,
        hidden_size: int = 1536,
        max_positions: int = 5120,
        video_vocab_size: int = 64000,
        token_number_per_step: int = 16,
        hybrid: bool = False,
        condition_cfg: Optional[dict] = None,
        dropout: float = 0.1,
        condition_dropout: float = 0.0,
    ):
        super().__init__()
        name = type(self).__name__
        if hidden_size % num_attention_heads:
            raise ValueError(f'{name}: hidden_size {hidden_size} must be divisible by num_attention_heads '
                             f'{num_attention_heads}')
        if token_number_per_step < 1:
            raise ValueError(f'{name}: token_number_per_step must be >= 1, got {token_number_per_step}')
        if condition_dropout and condition_cfg is None:
            raise ValueError(f'{name}: condition_dropout needs a condition (condition_cfg is None)')
        k = token_number_per_step
        try:
            self.condition = Condition.parse(condition_cfg, self.condition_kinds)
        except ValueError as error:
            raise ValueError(f'{name}: {error}') from None
        self.condition_length = 0 if self.condition is None else self.condition.num_tokens
        pads_found = hybrid and k == 1 and self.condition is not None and self.condition.kind == 'text'
        self.causal_pad_id = self.condition.pad_id if pads_found else None  # see the module docstring
        condition_vocab = 0 if self.condition is None else self.condition.num_classes
        # ----- vocabulary: [special ids] [condition ids] [video ids] -----
        num_special = k if hybrid else int(condition_cfg is not None)
        self.condition_offset = k if hybrid else 0
        self.video_offset = self.condition_offset + condition_vocab
        self.vocab_size = video_vocab_size + condition_vocab + num_special

        # ----- embeddings: tokens, learned absolute positions, null condition -----
        self.tok_emb = nn.Embedding(self.vocab_size, hidden_size)
        self.pos_emb = nn.Parameter(torch.zeros(1, max_positions, hidden_size))
        self.register_buffer('uncond_embedding', torch.randn(self.condition_length, hidden_size) / hidden_size ** 0.5)
        self.drop = nn.Dropout(dropout)

        # ----- transformer and head -----
        self.blocks = nn.ModuleList([Block(hidden_size, num_attention_heads, dropout) for _ in range(num_layers)])
        self.ln_f = nn.LayerNorm(hidden_size)
        self.head = nn.Linear(hidden_size, self.vocab_size, bias=False)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module):
        """GPT initialisation: N(0, 0.02) weights, zero biases (LayerNorms and positions keep theirs)."""
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
            if getattr(module, 'bias', None) is not None:
                nn.init.zeros_(module.bias)

    # ----- sequence layout -----

    @property
    def block_size(self) -> int:
        return self.config.token_number_per_step

    @property
    def num_token_by_token(self) -> int:
        """Positions after the condition that predict one token each (BOV and the first block, hybrid)."""
        return self.block_size if self.config.hybrid else 0

    def _condition_ids(self, cond_ids: Optional[torch.Tensor], batch_size: int) -> torch.Tensor:
        """Condition ids as ``[B, P]`` (a label may be given as ``[B]``); ``[B, 0]`` when unconditional."""
        length = self.condition_length
        if cond_ids is not None and cond_ids.ndim == 1 and length == 1:
            cond_ids = cond_ids[:, None]
        if cond_ids is None and length == 0:
            return torch.zeros(batch_size, 0, dtype=torch.long, device=self.device)
        if cond_ids is None or tuple(cond_ids.shape) != (batch_size, length):
            got = None if cond_ids is None else tuple(cond_ids.shape)
            raise ValueError(f'{type(self).__name__} (condition_cfg={self.config.condition_cfg}) needs cond_ids of '
                             f'shape [{batch_size}, {length}]' + (' or None' if length == 0 else '') + f', got {got}')
        return cond_ids.long()

    def layout_ids(self, video_ids: torch.Tensor, cond_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The model sequence of a condition and the first n video tokens ``[B, n]`` (raw codes), with
        every special token in place (BOV, and the middle-BOS ids once n >= k)."""
        k, batch = self.block_size, video_ids.shape[0]
        cond = self._condition_ids(cond_ids, batch) + self.condition_offset
        video = video_ids.long() + self.video_offset
        if not self.config.hybrid:
            return torch.cat([cond, video], dim=1)
        bov = torch.full((batch, 1), BOV_ID, dtype=torch.long, device=video.device)
        parts = [cond, bov, video[:, :k]]
        if video.shape[1] >= k:
            parts += [self.middle_bos_ids(batch, video.device), video[:, k:]]
        return torch.cat(parts, dim=1)

    def middle_bos_ids(self, batch_size: int, device: Optional[torch.device] = None) -> torch.Tensor:
        """The ids ``1 .. k-1`` that follow the first block in the hybrid layout, ``[B, k - 1]``."""
        return torch.arange(1, self.block_size, device=device).expand(batch_size, -1)

    def input_ids(self, z_indices: torch.Tensor, cond_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Training input: the layout of the whole video without its last block."""
        return self.layout_ids(z_indices.flatten(1), cond_ids)[:, :-self.block_size]

    def targets(self, z_indices: torch.Tensor) -> torch.Tensor:
        """What each output position predicts: every video token (hybrid) or all but the first block."""
        video = z_indices.flatten(1).long() + self.video_offset
        return video if self.config.hybrid else video[:, self.block_size:]

    def attention_mask(self, end: int, start: int = 0, device: Optional[torch.device] = None) -> torch.Tensor:
        """``[end - start, end]`` boolean mask of query positions ``start..end-1`` over keys ``0..end-1``.

        Positions form groups: the condition (group 0), then the token-by-token positions, then blocks of
        k; a position sees every position of its own and earlier groups.
        """
        positions = torch.arange(end, device=device)
        video = (positions - self.condition_length).clamp(min=0)
        ntp = self.num_token_by_token
        blocks = ntp + 1 + torch.div(video - ntp, self.block_size, rounding_mode='floor')
        groups = torch.where(video < ntp, video + 1, blocks)
        groups = torch.where(positions < self.condition_length, 0, groups)
        return groups[start:, None] >= groups[None, :]

    def sequence_mask(self, input_ids: torch.Tensor, start: int = 0) -> torch.Tensor:
        """The mask of ``input_ids [B, L]`` fed at positions ``start..``: ``attention_mask`` ``[L, start + L]``, or
        ``[B, 1, L, start + L]`` when pads fed now are seen causally (``causal_pad_id``, k = 1)."""
        end = start + input_ids.shape[1]
        mask = self.attention_mask(end, start, device=input_ids.device)
        fed = min(self.condition_length, end) - start
        if self.causal_pad_id is None or fed <= 0:
            return mask  # a pad fed before is behind every row fed now: seen either way
        pads = input_ids[:, :fed] == self.causal_pad_id + self.condition_offset          # [B, fed]
        rows = torch.arange(start, end, device=input_ids.device)[:, None]
        after = rows < torch.arange(start, start + fed, device=input_ids.device)[None]  # [L, fed]
        hidden = torch.zeros(input_ids.shape[0], *mask.shape, dtype=torch.bool, device=input_ids.device)
        hidden[:, :, start:start + fed] = pads[:, None] & after                          # [B, L, end]
        return (mask & ~hidden)[:, None]

    # ----- forward -----

    def _embed(self, input_ids: torch.Tensor, start: int, null_condition: Optional[torch.Tensor]) -> torch.Tensor:
        """Token embeddings; the condition positions of ``null_condition`` samples get the null condition."""
        x = self.tok_emb(input_ids)
        fed = min(self.condition_length, start + input_ids.shape[1]) - start
        if null_condition is None or fed <= 0:
            return x
        null = self.uncond_embedding[start:start + fed].to(x.dtype)
        cond = torch.where(null_condition[:, None, None].to(x.device), null, x[:, :fed])
        return torch.cat([cond, x[:, fed:]], dim=1)

    def make_kv_cache(self, batch_size: int, max_tokens: Optional[int] = None) -> TokenKVCache:
        """An empty KV cache for up to ``max_tokens`` positions (all of ``max_positions`` by default)."""
        cfg, device = self.config, self.device
        # keys/values are stored in the dtype they are computed in (the autocast dtype under autocast)
        dtype = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else self.dtype
        return TokenKVCache(cfg.num_layers, batch_size, cfg.num_attention_heads,
                            cfg.hidden_size // cfg.num_attention_heads, max_tokens or cfg.max_positions, device, dtype)

    def forward(self, input_ids: torch.Tensor, *, kv_cache: Optional[TokenKVCache] = None,
                null_condition: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Logits ``[B, L, vocab_size]`` of the model ids ``input_ids [B, L]``.

        Args:
            kv_cache: tokens fed before; ``input_ids`` continue them (positions ``kv_cache.length + i``),
                their keys/values are added and ``kv_cache.length`` advances.
            null_condition: ``[B]`` bool, samples whose condition tokens are replaced by the null condition.
        """
        start = 0 if kv_cache is None else kv_cache.length
        end = start + input_ids.shape[1]
        if end > self.config.max_positions:
            raise ValueError(f'{type(self).__name__}: {end} positions exceed max_positions={self.config.max_positions}')

        # ----- embeddings: tokens (null condition where asked) + absolute positions -----
        x = self._embed(input_ids, start, null_condition)              # [B, L, C]
        x = self.drop(x + self.pos_emb[:, start:end])

        # ----- transformer: bidirectional inside a block, causal across blocks -----
        mask = self.sequence_mask(input_ids, start)                    # [L or B,1,L, start + L]
        for index, block in enumerate(self.blocks):
            x = block(x, mask, kv_cache, index)                        # [B, L, C]
        if kv_cache is not None:
            kv_cache.length = end

        # ----- output: logits over the whole vocabulary -----
        return self.head(self.ln_f(x))                                 # [B, L, V]


# ----- paper sizes (reference training scripts): 5120 positions, k = 16, 64000 video codes -----
NBP_base = MODELS.register(variant(NBPTransformer, 'NBP_base', num_layers=24, num_attention_heads=16, hidden_size=1536))
NBP_xl = MODELS.register(variant(NBPTransformer, 'NBP_xl', num_layers=24, num_attention_heads=32, hidden_size=2048))
NBP_3b = MODELS.register(variant(NBPTransformer, 'NBP_3b', num_layers=32, num_attention_heads=32, hidden_size=3072))
