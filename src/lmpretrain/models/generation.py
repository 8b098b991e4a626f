"""Decoding for the generative networks: a GPT continues a prompt, an EncoderDecoder writes a target
for a source. Greedy, beam search (length penalty as in `transformers`) and sampling (temperature,
top-k, top-p), with a key/value cache so each step runs only the new token through the network.

Plain PyTorch (no Lightning): `generate(network, input_ids, ...)` returns the new token ids.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lmpretrain.models.encdec import EncoderDecoder
from lmpretrain.models.gpt import GPT

STRATEGIES = ("greedy", "beam", "sample")


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """logits (..., V) with every token outside the k likeliest set to -inf."""
    kth = torch.topk(logits, min(k, logits.size(-1))).values[..., [-1]]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filtering (Holtzman et al. 2020): keep the smallest set of likeliest tokens whose
    probability reaches p (a token stays when the tokens likelier than it hold less than p), set
    the rest to -inf. The likeliest token always stays."""
    if p >= 1.0:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    before = probs.cumsum(dim=-1) - probs  # probability of the tokens likelier than this one
    remove = torch.zeros_like(before, dtype=torch.bool).scatter(-1, order, before >= p)
    return logits.masked_fill(remove, float("-inf"))


def ban_repeated_ngrams(logits: torch.Tensor, generated: torch.Tensor, n: int) -> torch.Tensor:
    """logits (N, V) with -inf on every token that would repeat an n-gram already in its row of
    `generated` (N, t) (the new tokens so far), as `transformers`' no_repeat_ngram_size does.
    n=0 leaves them as they are."""
    t = generated.size(1)
    if n < 1 or t < n - 1:
        return logits
    banned = []
    for row, seq in enumerate(generated.tolist()):
        prefix = tuple(seq[t - n + 1:]) if n > 1 else ()
        banned += [(row, seq[i + n - 1]) for i in range(t - n + 1) if tuple(seq[i:i + n - 1]) == prefix]
    if not banned:
        return logits
    rows, cols = zip(*banned)
    return logits.index_put((torch.tensor(rows, device=logits.device), torch.tensor(cols, device=logits.device)),
                            torch.tensor(float("-inf"), device=logits.device, dtype=logits.dtype))


def pick_tokens(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """One sampled token per row of logits (N, V) -> (N,). temperature=0 is the argmax."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None:
        logits = top_p_filter(logits, top_p)
    return torch.multinomial(F.softmax(logits, dim=-1), num_samples=1, generator=generator).squeeze(1)


class _DecoderSteps:
    """A GPT's next-token logits for a batch of left-padded sequences that grow by one token a step.

    With a cache, only the new token runs through the network. Once the sequence outgrows
    `block_size` the window slides over the last block_size tokens, recomputed without a cache
    (positions restart at the window's first token).
    """

    def __init__(self, net: GPT, ids: torch.Tensor, mask: torch.Tensor | None, use_cache: bool):
        self.net, self.block_size = net, net.config.block_size
        self.ids, self.mask = ids, mask  # (B, L); mask None = no padding
        self.cache = net.new_cache() if use_cache else None

    def _full(self) -> torch.Tensor:
        if self.ids.size(1) > self.block_size:
            self.cache = None
        ids = self.ids[:, -self.block_size :]
        mask = None if self.mask is None else self.mask[:, -self.block_size :]
        positions = None if mask is None else (mask.cumsum(1) - 1).clamp(min=0)  # each row's tokens from 0
        if self.cache is not None:
            self.cache = self.net.new_cache()
        return self.net(ids, mask, positions=positions, cache=self.cache)[:, -1]

    def first(self) -> torch.Tensor:
        return self._full()

    def next(self, tokens: torch.Tensor) -> torch.Tensor:
        self.ids = torch.cat((self.ids, tokens[:, None]), dim=1)
        if self.mask is not None:
            self.mask = torch.cat((self.mask, self.mask.new_ones(self.mask.size(0), 1)), dim=1)
        if self.cache is None or self.ids.size(1) > self.block_size:
            return self._full()
        positions = None if self.mask is None else self.mask.sum(1, keepdim=True) - 1  # (B, 1)
        return self.net(tokens[:, None], self.mask, positions=positions, cache=self.cache)[:, -1]

    def select(self, index: torch.Tensor, same_source: bool = True) -> None:
        """Keep (or repeat) rows `index` of the state."""
        self.ids = self.ids.index_select(0, index)
        self.mask = None if self.mask is None else self.mask.index_select(0, index)
        if self.cache is not None:
            self.cache.reorder(index)


class _EncoderDecoderSteps:
    """An EncoderDecoder's next-token logits: the encoder runs once; the decoder starts from
    `start_id` and, with a cache, runs only the new token, cross-attending to cached keys/values."""

    def __init__(self, net: EncoderDecoder, src: torch.Tensor, src_mask: torch.Tensor | None, start_id: int,
                 use_cache: bool):
        self.net, self.src, self.src_mask = net, src, src_mask  # src: a copy head's source ids
        self.memory = net.features(src, src_mask)  # (B, S, C), once
        self.ids = src.new_full((src.size(0), 1), start_id)
        self.cache = net.new_cache() if use_cache else None

    def first(self) -> torch.Tensor:
        return self.net.decode(self.ids, self.memory, self.src_mask, cache=self.cache, source_ids=self.src)[:, -1]

    def next(self, tokens: torch.Tensor) -> torch.Tensor:
        self.ids = torch.cat((self.ids, tokens[:, None]), dim=1)
        if self.cache is None:
            return self.net.decode(self.ids, self.memory, self.src_mask, source_ids=self.src)[:, -1]
        return self.net.decode(tokens[:, None], self.memory, self.src_mask, cache=self.cache,
                               source_ids=self.src)[:, -1]

    def select(self, index: torch.Tensor, same_source: bool = False) -> None:
        """Keep (or repeat) rows `index`. `same_source`: each row keeps its source (beams of one
        input trading places), so the memory and cross-attention keys need no copy."""
        self.ids = self.ids.index_select(0, index)
        if not same_source:
            self.memory, self.src = self.memory.index_select(0, index), self.src.index_select(0, index)
            self.src_mask = None if self.src_mask is None else self.src_mask.index_select(0, index)
        if self.cache is not None:
            self.cache.reorder(index, cross=not same_source)


def _sample(steps, logits: torch.Tensor, max_new_tokens: int, eos_id: int | None, pad_id: int,
            pick, no_repeat: int = 0) -> torch.Tensor:
    done = torch.zeros(logits.size(0), dtype=torch.bool, device=logits.device)
    out = []
    for t in range(max_new_tokens):
        if no_repeat and out:
            logits = ban_repeated_ngrams(logits, torch.stack(out, dim=1), no_repeat)
        tokens = pick(logits)
        if eos_id is None:
            out.append(tokens)
        else:
            out.append(tokens.masked_fill(done, pad_id))  # stopped rows: pad_id out, any token in
            done = done | (tokens == eos_id)
        if t + 1 == max_new_tokens or (eos_id is not None and bool(done.all())):
            break
        logits = steps.next(tokens)
    return torch.stack(out, dim=1)


def _beam_search(steps, logits: torch.Tensor, max_new_tokens: int, num_beams: int, length_penalty: float,
                 eos_id: int | None, pad_id: int, no_repeat: int = 0) -> torch.Tensor:
    """Beam search as `transformers` does it (early_stopping=False): a hypothesis ending in EOS is
    scored sum(log p) / length**length_penalty (length: its new tokens, EOS included); only EOS
    candidates ranked within the top num_beams of a step finish; an input is done once it holds
    num_beams finished hypotheses and the best running beam, normalised at the current length,
    cannot beat the worst of them; at max_new_tokens the running beams join the finished ones."""
    B, V = logits.shape
    K, N = num_beams, max_new_tokens
    dev = logits.device
    steps.select(torch.arange(B, device=dev).repeat_interleave(K))  # K copies of each input
    logits = logits.repeat_interleave(K, dim=0)
    scores = torch.full((B, K), float("-inf"), device=dev)
    scores[:, 0] = 0.0  # the copies are identical: start from one of them
    seqs = torch.zeros(B, K, 0, dtype=torch.long, device=dev)
    fin_scores = torch.full((B, K), float("-inf"), device=dev)  # sorted, best first
    fin_seqs = torch.full((B, K, N), pad_id, dtype=torch.long, device=dev)
    done = torch.zeros(B, dtype=torch.bool, device=dev)
    n_cand = min(2 * K, K * V)
    for t in range(N):
        logp = F.log_softmax(logits.float(), dim=-1)
        if no_repeat:
            logp = ban_repeated_ngrams(logp, seqs.reshape(B * K, t), no_repeat)
        logp = logp.view(B, K, V)
        vals, idx = (scores[..., None] + logp).view(B, K * V).topk(n_cand, dim=1)  # (B, 2K), best first
        beam, tokens = idx // V, idx % V
        cand = torch.cat((seqs.gather(1, beam[..., None].expand(-1, -1, t)), tokens[..., None]), dim=2)
        if eos_id is not None:
            is_eos = tokens == eos_id
            ranked = torch.arange(n_cand, device=dev) < K
            finish = is_eos & ranked & ~done[:, None]
            new = torch.where(finish, vals / (t + 1) ** length_penalty, float("-inf"))
            fin_scores, fin_seqs = _keep_best(fin_scores, fin_seqs, new, cand, K, pad_id)
            vals = vals.masked_fill(is_eos, float("-inf"))
        scores, keep = vals.topk(K, dim=1)  # the best K that go on
        seqs = cand.gather(1, keep[..., None].expand(-1, -1, t + 1))
        if eos_id is not None:
            worst = fin_scores[:, -1]
            done = done | ((worst > float("-inf")) & (worst >= scores[:, 0] / (t + 1) ** length_penalty))
        if t + 1 == N or bool(done.all()):
            break
        parent = torch.arange(B, device=dev)[:, None] * K + beam.gather(1, keep)
        steps.select(parent.view(-1), same_source=True)
        logits = steps.next(tokens.gather(1, keep).view(-1))
    running = torch.where(done[:, None], float("-inf"), scores / seqs.size(2) ** length_penalty)
    fin_scores, fin_seqs = _keep_best(fin_scores, fin_seqs, running, seqs, K, pad_id)
    return fin_seqs[:, 0, : seqs.size(2)]


def _keep_best(scores, seqs, new_scores, new_seqs, k: int, pad_id: int):
    """Merge candidate hypotheses (B, n) / (B, n, t) into the best-k store (B, k) / (B, k, N)."""
    new_seqs = F.pad(new_seqs, (0, seqs.size(2) - new_seqs.size(2)), value=pad_id)
    all_scores, all_seqs = torch.cat((scores, new_scores), 1), torch.cat((seqs, new_seqs), 1)
    scores, best = all_scores.topk(k, dim=1)
    return scores, all_seqs.gather(1, best[..., None].expand(-1, -1, seqs.size(2)))


@torch.no_grad()
def generate(
    network: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    max_new_tokens: int,
    strategy: str = "greedy",
    num_beams: int = 4,
    length_penalty: float = 1.0,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_id: int | None = None,
    pad_id: int = 0,
    decoder_start_id: int | None = None,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
    no_repeat_ngram_size: int = 0,
) -> torch.Tensor:
    """New token ids (B, n) for `input_ids` (B, T), n <= max_new_tokens.

    `network`: a GPT (input_ids is the prompt; the output continues it) or an EncoderDecoder
    (input_ids is the source; the decoder starts from `decoder_start_id`). `attention_mask` (B, T),
    1 = token, 0 = padding: a GPT's prompts may be padded on either side (they are left-aligned to
    their last token, each row's positions starting at its first real token), an EncoderDecoder's
    source as its encoder expects.

    strategy: "greedy"; "sample" (temperature, then top_k, then top_p; temperature=0 = greedy;
    `generator` makes it reproducible); "beam" (`num_beams`, `length_penalty`: a finished
    hypothesis scores sum(log p) / length**length_penalty, as in `transformers`).
    A row stops at `eos_id` (kept in the output); its later columns are `pad_id`. Decoding ends
    when every row has stopped or after max_new_tokens, so n is the number of steps run.
    `no_repeat_ngram_size` n > 0: no n-gram occurs twice among a row's new tokens (the prompt or
    source is not counted, unlike `transformers`, which also bans a decoder's prompt n-grams).
    `use_cache=False` recomputes every position each step (same tokens, slower; for checking).
    The network is put in eval mode for the call and restored after.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy={strategy!r} must be one of {STRATEGIES}")
    if max_new_tokens < 0 or num_beams < 1 or temperature < 0:
        raise ValueError("max_new_tokens and temperature must be >= 0 and num_beams >= 1")
    if no_repeat_ngram_size < 0:
        raise ValueError(f"no_repeat_ngram_size={no_repeat_ngram_size} must be >= 0 (0 = off)")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k={top_k} must be >= 1 (or None)")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p={top_p} must be in (0, 1] (or None)")
    B = input_ids.size(0)
    if max_new_tokens == 0:
        return input_ids.new_zeros(B, 0)
    if attention_mask is not None and bool(attention_mask.all()):
        attention_mask = None  # no padding: the plain causal path
    was_training = network.training
    network.eval()
    try:
        if isinstance(network, EncoderDecoder):
            if decoder_start_id is None:
                raise ValueError("an EncoderDecoder needs decoder_start_id (its first decoder input)")
            if max_new_tokens > network.config.block_size:
                raise ValueError(f"max_new_tokens={max_new_tokens} exceeds the decoder's "
                                 f"block_size={network.config.block_size}")
            steps = _EncoderDecoderSteps(network, input_ids, attention_mask, decoder_start_id, use_cache)
        elif isinstance(network, GPT):
            if attention_mask is not None:  # left-align: padding first, each row's order kept
                order = attention_mask.long().argsort(dim=1, stable=True)
                input_ids, attention_mask = input_ids.gather(1, order), attention_mask.long().gather(1, order)
            steps = _DecoderSteps(network, input_ids, attention_mask, use_cache)
        else:
            raise TypeError(f"generate() needs a GPT or an EncoderDecoder, not {type(network).__name__}")
        logits = steps.first()
        if strategy == "beam":
            return _beam_search(steps, logits, max_new_tokens, num_beams, length_penalty, eos_id, pad_id,
                                no_repeat_ngram_size)
        if strategy == "greedy":
            temperature = 0.0
        return _sample(steps, logits, max_new_tokens, eos_id, pad_id,
                       lambda lg: pick_tokens(lg, temperature, top_k, top_p, generator), no_repeat_ngram_size)
    finally:
        network.train(was_training)
