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
one-video-per-call draws), classifier-free guidance (a second, null-condition half of the batch), and
``top_p`` also applies without ``top_k``.
"""
from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch
from diffusers.pipelines.pipeline_utils import DiffusionPipeline

from ..models.nbp import NBPTransformer
from ..models.nbp_tokenizer import NBPTokenizer
from ..registry import PIPELINES

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


@PIPELINES.register()
class NBPPipeline(DiffusionPipeline):
    """Sampler for ``NBPTransformer``.

    Args:
        transformer: an ``NBPTransformer``.
        tokenizer: an ``NBPTokenizer`` to encode context frames and decode videos (``generate``), or ``None``
            to sample tokens only (``generate_indices``).

    The per-step progress bar is switched off with ``pipe.set_progress_bar_config(disable=True)``.
    """

    model_cpu_offload_seq = 'transformer->tokenizer'

    def __init__(self, *, transformer: NBPTransformer, tokenizer: Optional[NBPTokenizer] = None):
        super().__init__()
        self.register_modules(transformer=transformer, tokenizer=tokenizer)

    # ----- helpers -----

    def num_steps(self, num_tokens: int, prefix_length: int = 0) -> int:
        """Forward passes to complete ``num_tokens`` video tokens from a prefix of ``prefix_length``."""
        model = self.transformer
        one_by_one = max(model.num_token_by_token - prefix_length, 0)
        return one_by_one + (num_tokens - max(prefix_length, model.num_token_by_token)) // model.block_size

    def _check_inputs(self, num_tokens: int, cond_ids: Optional[torch.Tensor], prefix: Optional[torch.Tensor],
                      batch_size: Optional[int], temperature: float,
                      guidance_scale: float) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Validate the sampling arguments; return the prefix as ``[B, n]`` codes and the condition ids."""
        model, device = self.transformer, self.transformer.device
        batch = next((x.shape[0] for x in (cond_ids, prefix) if x is not None), batch_size)
        if batch is None:
            raise ValueError('give cond_ids, a prefix or batch_size: the batch size is unknown')
        prefix = (torch.zeros(batch, 0, dtype=torch.long) if prefix is None else prefix.flatten(1).long()).to(device)
        self._check_lengths(num_tokens, prefix.shape[1])
        if temperature <= 0:
            raise ValueError(f'temperature must be > 0 (use top_k=1 for greedy decoding), got {temperature}')
        if guidance_scale > 1 and model.condition_length == 0:
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
        top_k: Optional[int] = None,
        top_p: Optional[float] = None,
        temperature: float = 1.0,
        guidance_scale: float = 1.0,
        generator: Generators = None,
        callback: Optional[StepCallback] = None,
    ) -> torch.Tensor:
        """Video codes ``[B, num_tokens]`` in (frame, row, column) order, the prefix included.

        Args:
            num_tokens: video tokens in all (e.g. 1280 for 17 frames at 128x128); a multiple of the block size.
            cond_ids: raw condition ids ``[B, P]`` (text ids) or ``[B]`` (labels), as the model is configured.
            prefix: given video codes ``[B, n]`` or ``[B, t, h, w]``: whole blocks, or for the hybrid layout
                also fewer tokens than a block.
            batch_size: only needed when neither ``cond_ids`` nor ``prefix`` gives it.
            top_k, top_p: filtering (see :func:`top_k_top_p_filtering`); ``top_k=1`` is greedy decoding.
            temperature: logits are divided by it first.
            guidance_scale: > 1 mixes the logits as ``uncond + s * (cond - uncond)``, where the unconditional
                branch uses the null condition (``uncond_embedding``).
            generator: a generator, or one per video.
            callback: ``callback(step, input_ids, past_length, logits)`` after every forward pass, with the fed
                ids, their first position and their logits ``[B', L, V]`` (B' = 2B under guidance,
                conditional half first).
        """
        model, device = self.transformer, self.transformer.device
        prefix, cond = self._check_inputs(num_tokens, cond_ids, prefix, batch_size, temperature, guidance_scale)
        batch, k, guided = prefix.shape[0], model.block_size, guidance_scale > 1
        generators = self._generator_list(generator, batch)

        # ----- prompt: condition, BOV (hybrid), prefix; under guidance a second, null-condition half -----
        pending = model.layout_ids(prefix, cond)                                 # [B, L0]
        null = torch.arange(2 * batch, device=device) >= batch if guided else None
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
            scores = logits[:, -width:].float() / temperature                   # [B', width, V]
            if guided:
                cond_scores, uncond_scores = scores.chunk(2)
                scores = uncond_scores + guidance_scale * (cond_scores - uncond_scores)
            pending = self._draw(scores, top_k, top_p, generators)               # [B, width]
            drawn.append(pending)
            count += width
            if count == model.num_token_by_token:  # the first block is complete: open next-block prediction
                pending = torch.cat([pending, model.middle_bos_ids(batch, device)], dim=1)

        ids = torch.cat(drawn, dim=1) if drawn else prefix[:, :0]
        codes = (ids - model.video_offset).clamp(0, model.config.video_vocab_size - 1)
        return torch.cat([prefix, codes], dim=1)

    @torch.no_grad()
    def generate(self, *, num_frames: int = 17, context: Optional[torch.Tensor] = None, **sampling) -> torch.Tensor:
        """Videos ``[B, T, 3, H, W]`` in [0, 1] (frames second, clamped), decoded by the tokenizer.

        Args:
            num_frames: frames of the video, ``1 + 4 m`` (17: 5 latent frames).
            context: given first frames ``[B, Tc, 3, H, W]`` in [0, 1], ``1 + 4 m`` of them (K600: 5); they
                are tokenized into the prefix and come back as reconstructions.
            sampling: the arguments of :meth:`generate_indices` (``cond_ids``, ``top_k``, ``top_p``,
                ``guidance_scale``, ``generator``, ...), except ``num_tokens`` and ``prefix``.
        """
        tokenizer = self.tokenizer
        if tokenizer is None:
            raise ValueError('NBPPipeline.generate decodes videos: build the pipeline with a tokenizer (or use '
                             'generate_indices)')
        tokens_per_frame = tokenizer.latent_size ** 2
        prefix = None
        if context is not None:
            prefix = tokenizer.encode(context.transpose(1, 2).to(self.device))[1]
        indices = self.generate_indices(num_tokens=tokenizer.latent_frames(num_frames) * tokens_per_frame,
                                        prefix=prefix, **sampling)
        video = tokenizer.decode_indices(indices)                                # [B, 3, T, H, W]
        return video.float().clamp(0, 1).transpose(1, 2)
