"""Block-by-block sampler of the NBP transformers, with a KV cache, top-k/top-p sampling and
classifier-free guidance.

The first step feeds the prompt: the condition tokens, BOV for the hybrid layout, and any given video
tokens (a prefix). Every later step feeds only the tokens drawn at the step before and reads one logit
row per token to draw: the hybrid layout (UCF-101) draws its first k tokens one by one, then adds the
k - 1 middle-BOS ids and draws k tokens per step; the K600 layout starts from at least one given block and
draws k tokens per step. With k = 16, a 1280-token UCF-101 video takes 16 + 79 = 95 steps.

As in the reference sampler, every drawn id is fed back as drawn, even when it is not a video id (the
head scores the whole vocabulary); video codes are ``clamp(id - video_offset, 0, codebook - 1)``.

Unlike the reference: batches of any size (one generator per video reproduces the reference's
one-video-per-call draws), classifier-free guidance that works (a null-condition half of the batch before the
conditional one, as ``far.pipelines.base.guide`` reads it:
the reference's guidance path cannot run, and its null embedding was never trained, so guidance needs a model
trained here with ``condition_dropout > 0``), and ``top_p`` also applies without ``top_k``.

As a :class:`~far.pipelines.base.VideoSampler` (``test.sampler: {type: NBPPipeline, top_k: 16000, top_p: 0.9}``)
it samples the experiment's NBP model through its ``VideoTokenizer`` (``NBPTokenizer``); the settings are
:class:`NBPSampling`.
"""
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch
from diffusers.pipelines.pipeline_utils import DiffusionPipeline

from ..conditions import Condition, Conditions
from ..models.interfaces import VideoTokenizer
from ..models.nbp import NBPTransformer
from ..registry import PIPELINES
from .base import VideoSampler, guide

Generators = Optional[Union[torch.Generator, Sequence[Optional[torch.Generator]]]]
StepCallback = Callable[[int, torch.Tensor, int, torch.Tensor], None]


def top_k_top_p_filtering(logits: torch.Tensor, top_k: Optional[int] = None,
                          top_p: Optional[float] = None) -> torch.Tensor:
    """Set to -inf the logits ``[..., V]`` that top-k and then nucleus (top-p) sampling exclude.

    Top-k keeps every logit >= the k-th largest (ties are kept; k is clamped to V; ``None``/0 = off).
    Top-p keeps the shortest prefix of the sorted logits whose softmax cumulative sum exceeds ``top_p``
    (the most likely token is always kept; ``None``/1.0 = off). Returns a new tensor.
    """
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float('-inf'))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        beyond = sorted_logits.softmax(dim=-1).cumsum(dim=-1) > top_p
        # a token is removed when the tokens before it already exceed top_p
        remove = torch.cat([torch.zeros_like(beyond[..., :1]), beyond[..., :-1]], dim=-1)
        logits = logits.masked_fill(remove.scatter(-1, order, remove), float('-inf'))
    return logits


@dataclass(frozen=True, kw_only=True)
class NBPSampling:
    """How :class:`NBPPipeline` samples: the keys of a ``sampler: {type: NBPPipeline, ...}`` YAML block.

    Args:
        top_k: keep the k most likely ids (``None``: all; 1: greedy decoding). The paper evaluates with 16000.
        top_p: then keep the smallest set of ids whose probability exceeds ``top_p`` (``None``: all). The
            paper evaluates with 0.9.
        temperature: logits are divided by it first (> 0).
        guidance_scale: > 1 classifier-free guidance ``uncond + s * (cond - uncond)``, 1 none; needs a model
            trained with ``condition_dropout > 0``.
    """
    top_k: Optional[int] = None
    top_p: Optional[float] = None
    temperature: float = 1.0
    guidance_scale: float = 1.0

    def __post_init__(self):
        if self.temperature <= 0:
            raise ValueError(f'temperature must be > 0 (use top_k: 1 for greedy decoding), got {self.temperature}')
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f'top_k must be >= 1 or null (all ids), got {self.top_k}')
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f'top_p must be in (0, 1] or null (all ids), got {self.top_p}')

    @property
    def guided(self) -> bool:
        return self.guidance_scale > 1


@PIPELINES.register()
class NBPPipeline(DiffusionPipeline, VideoSampler):
    """Sampler for ``NBPTransformer``.

    Args:
        transformer: an ``NBPTransformer``.
        tokenizer: a ``VideoTokenizer`` to encode context frames and decode videos (``generate``, ``predict``), or
            ``None`` to sample tokens only (``generate_indices``).
        options: :class:`NBPSampling`; every generate call may change some of them (``top_k=1``).

    The per-step progress bar is switched off with ``pipe.set_progress_bar_config(disable=True)``.
    """

    model_cpu_offload_seq = 'transformer->tokenizer'
    runtime_args = ('transformer', 'tokenizer')
    model_families = ('NBP',)
    autoencoder_families = ('NBP-tokenizer',)
    options_class = NBPSampling

    def __init__(self, *, transformer: NBPTransformer, tokenizer: Optional[VideoTokenizer] = None,
                 options: NBPSampling = NBPSampling()):
        super().__init__()
        if options.guided and transformer.condition is None:
            raise ValueError(f'guidance_scale is {options.guidance_scale}, but the transformer is unconditional: '
                             'guidance needs a conditional transformer; set it to 1')
        self.register_modules(transformer=transformer, tokenizer=tokenizer)
        self.options = options

    @property
    def condition(self) -> Optional[Condition]:
        return self.transformer.condition

    def replace(self, **options) -> 'NBPPipeline':
        pipe = NBPPipeline(transformer=self.transformer, tokenizer=self.tokenizer, options=self.options_with(**options))
        pipe.set_progress_bar_config(**getattr(self, '_progress_bar_config', {}))
        return pipe

    # ----- helpers -----

    def num_steps(self, num_tokens: int, prefix_length: int = 0) -> int:
        """Forward passes to complete ``num_tokens`` video tokens from a prefix of ``prefix_length``."""
        model = self.transformer
        one_by_one = max(model.num_token_by_token - prefix_length, 0)
        return one_by_one + (num_tokens - max(prefix_length, model.num_token_by_token)) // model.block_size

    def _check_inputs(self, num_tokens: int, cond_ids: Optional[torch.Tensor], prefix: Optional[torch.Tensor],
                      batch_size: Optional[int], guided: bool) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Validate the sampling arguments; return the prefix as ``[B, n]`` codes and the condition ids."""
        model, device = self.transformer, self.transformer.device
        batch = next((x.shape[0] for x in (cond_ids, prefix) if x is not None), batch_size)
        if batch is None:
            raise ValueError('give cond_ids, a prefix or batch_size: the batch size is unknown')
        prefix = (torch.zeros(batch, 0, dtype=torch.long) if prefix is None else prefix.flatten(1).long()).to(device)
        self._check_lengths(num_tokens, prefix.shape[1])
        if guided and model.condition is None:
            raise ValueError('guidance_scale > 1 needs a conditional transformer (this one has condition_cfg=None)')
        return prefix, None if cond_ids is None else cond_ids.to(device)

    def _check_lengths(self, num_tokens: int, prefix_length: int):
        model, k = self.transformer, self.transformer.block_size
        if num_tokens % k or num_tokens < max(prefix_length, k):
            raise ValueError(f'num_tokens ({num_tokens}) must be a positive multiple of the block size {k} and '
                             f'cover the prefix ({prefix_length} tokens)')
        if model.config.hybrid and prefix_length > k and prefix_length % k:
            raise ValueError(f'a prefix of {prefix_length} tokens must be shorter than a block ({k}) or whole blocks')
        if not model.config.hybrid and (prefix_length < k or prefix_length % k):
            raise ValueError(f'this model (hybrid=False) never predicts the first block: give a prefix of whole '
                             f'blocks of {k} tokens (at least one), got {prefix_length}')

    @staticmethod
    def _generator_list(generator: Generators, batch_size: int) -> List[Optional[torch.Generator]]:
        if generator is None or isinstance(generator, torch.Generator):
            return [generator] * batch_size
        if len(generator) != batch_size:
            raise ValueError(f'pass one generator per video: got {len(generator)} for a batch of {batch_size}')
        return list(generator)

    @staticmethod
    def _draw(logits: torch.Tensor, top_k: Optional[int], top_p: Optional[float],
              generators: List[Optional[torch.Generator]]) -> torch.Tensor:
        """Token ids ``[B, m]`` from logits ``[B, m, V]``: argmax for ``top_k=1``, else filtered sampling.

        Each video draws its tokens in order from its own generator, one ``multinomial`` call per token,
        which reproduces the reference sampler run on that video alone with the same seed.
        """
        if top_k == 1:
            return logits.argmax(dim=-1)
        probs = top_k_top_p_filtering(logits, top_k, top_p).softmax(dim=-1)
        tokens = torch.empty(probs.shape[:2], dtype=torch.long, device=probs.device)
        for b, generator in enumerate(generators):
            for i in range(probs.shape[1]):
                tokens[b, i] = torch.multinomial(probs[b, i][None], 1, generator=generator)[0, 0]
        return tokens

    # ----- sampling -----

    @torch.no_grad()
    def generate_indices(
        self,
        *,
        num_tokens: int,
        cond_ids: Optional[torch.Tensor] = None,
        prefix: Optional[torch.Tensor] = None,
        batch_size: Optional[int] = None,
        generator: Generators = None,
        callback: Optional[StepCallback] = None,
        **options,
    ) -> torch.Tensor:
        """Video codes ``[B, num_tokens]`` in (frame, row, column) order, the prefix included.

        Args:
            num_tokens: video tokens in all (e.g. 1280 for 17 frames at 128x128); a multiple of the block size.
            cond_ids: raw condition ids ``[B, P]`` (text ids) or ``[B]`` (labels), as the model is configured.
            prefix: given video codes ``[B, n]`` or ``[B, t, h, w]``: whole blocks, or for the hybrid layout
                also fewer tokens than a block.
            batch_size: only needed when neither ``cond_ids`` nor ``prefix`` gives it.
            generator: a generator, or one per video.
            callback: ``callback(step, input_ids, past_length, logits)`` after every forward pass, with the fed
                ids, their first position and their logits ``[B', L, V]`` (B' = 2B under guidance,
                null-condition half first).
            options: :class:`NBPSampling` settings for this call (``top_k=1``: greedy decoding); under guidance
                the unconditional branch uses the null condition (``uncond_embedding``).
        """
        opt = self.options_with(**options)
        model, device = self.transformer, self.transformer.device
        prefix, cond = self._check_inputs(num_tokens, cond_ids, prefix, batch_size, opt.guided)
        batch, k, guided = prefix.shape[0], model.block_size, opt.guided
        generators = self._generator_list(generator, batch)

        # ----- prompt: condition, BOV (hybrid), prefix; under guidance a null-condition half first -----
        pending = model.layout_ids(prefix, cond)                                 # [B, L0]
        null = torch.arange(2 * batch, device=device) < batch if guided else None
        cache = model.make_kv_cache(2 * batch if guided else batch,
                                    pending.shape[1] + num_tokens - prefix.shape[1] + k)

        drawn, count = [], prefix.shape[1]
        for step in self.progress_bar(range(self.num_steps(num_tokens, count))):
            width = 1 if count < model.num_token_by_token else k                 # tokens drawn this step
            past_length = cache.length
            fed = pending.repeat(2, 1) if guided else pending
            logits = model(fed, kv_cache=cache, null_condition=null)             # [B', L, V]
            if callback is not None:
                callback(step, pending, past_length, logits)
            scores = logits[:, -width:].float() / opt.temperature               # [B', width, V]
            if guided:
                scores = guide(scores, opt.guidance_scale)                       # [B, width, V]
            pending = self._draw(scores, opt.top_k, opt.top_p, generators)       # [B, width]
            drawn.append(pending)
            count += width
            if count == model.num_token_by_token:  # the first block is complete: open next-block prediction
                pending = torch.cat([pending, model.middle_bos_ids(batch, device)], dim=1)

        ids = torch.cat(drawn, dim=1) if drawn else prefix[:, :0]
        codes = (ids - model.video_offset).clamp(0, model.config.video_vocab_size - 1)
        return torch.cat([prefix, codes], dim=1)

    @torch.no_grad()
    def generate(self, *, num_frames: int = 17, context: Optional[torch.Tensor] = None, **sampling) -> torch.Tensor:
        """Videos ``[B, Tc + num_frames, 3, H, W]`` in [0, 1] (frames second, clamped), decoded by the tokenizer.

        Args:
            num_frames: new frames after the context (as in every sampler, see ``VideoSampler.predict``); the whole
                video, ``Tc + num_frames``, is ``1 + 4 m`` frames (17: 5 latent frames).
            context: given first frames ``[B, Tc, 3, H, W]`` in [0, 1], ``1 + 4 m`` of them (K600: 5); they
                are tokenized into the prefix and come back as reconstructions.
            sampling: the arguments of :meth:`generate_indices` (``cond_ids``, ``generator``, ``batch_size``,
                :class:`NBPSampling` settings, ...), except ``num_tokens`` and ``prefix``.
        """
        tokenizer = self._tokenizer('generate')
        total = num_frames + (0 if context is None else context.shape[1])
        prefix = None if context is None else tokenizer.encode_tokens(context.to(self.device))
        indices = self.generate_indices(num_tokens=tokenizer.latent_frames(total) * tokenizer.latent_size ** 2,
                                        prefix=prefix, **sampling)
        return tokenizer.decode_tokens(indices)

    def predict(self, *, context: Optional[torch.Tensor], num_frames: int, conditions: Conditions,
                generators: Sequence[torch.Generator], height: int, width: int) -> torch.Tensor:
        size = self._tokenizer('predict').image_size
        if (height, width) != (size, size):
            raise ValueError(f'the tokenizer reads {size}x{size} frames (its image_size), the videos are '
                             f'{height}x{width}: set the dataset resolution or the tokenizer image_size to match')
        cond_ids = None
        if self.condition is not None:
            total = num_frames + (0 if context is None else context.shape[1])
            cond_ids = self.condition.check(conditions, len(generators), total, 'the transformer')
        elif conditions is not None:
            raise ValueError('the transformer is unconditional: pass conditions=None')
        return self.generate(num_frames=num_frames, context=context, cond_ids=cond_ids, generator=list(generators),
                             batch_size=len(generators))

    def _tokenizer(self, method: str) -> VideoTokenizer:
        if self.tokenizer is None:
            raise ValueError(f'NBPPipeline.{method} decodes videos: build the pipeline with a tokenizer (or use '
                             'generate_indices)')
        return self.tokenizer
