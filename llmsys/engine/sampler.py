"""Turn logits into tokens: temperature, top-k, top-p, min-p, seeded sampling, logprobs."""

from __future__ import annotations

from collections.abc import Callable

import torch

from llmsys.outputs import Logprob, PositionLogprobs
from llmsys.sampling_params import SamplingParams


def make_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator:
    """A private generator per request, so its samples do not depend on anything else."""
    gen = torch.Generator(device=device)
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(seed)
    return gen


def sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> int:
    """logits (V,) -> one token id."""
    logits = logits.float()
    if params.greedy:
        return int(logits.argmax())
    logits = logits / params.temperature
    if params.top_k and params.top_k < logits.shape[-1]:
        kth = logits.topk(params.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = logits.softmax(-1)
    if params.min_p > 0:
        probs = probs.masked_fill(probs < params.min_p * probs.max(), 0.0)
    if params.top_p < 1:
        sorted_probs, order = probs.sort(descending=True)
        # Drop a token when the mass before it already reaches top_p (the first always stays).
        drop = (sorted_probs.cumsum(-1) - sorted_probs) >= params.top_p
        probs = probs.scatter(-1, order, sorted_probs.masked_fill(drop, 0.0))
    return int(torch.multinomial(probs, 1, generator=generator))


def top_logprobs(logprobs: torch.Tensor, token_ids: torch.Tensor, k: int,
                 decode: Callable[[int], str]) -> list[PositionLogprobs]:
    """logprobs (T, V) log-softmaxed; token_ids (T,) the tokens actually at each position.
    Returns one dict per position: the top-k tokens and the actual token, with ranks."""
    out: list[PositionLogprobs] = []
    chosen = logprobs.gather(-1, token_ids[:, None])[:, 0]
    ranks = (logprobs > chosen[:, None]).sum(-1) + 1
    top = logprobs.topk(k, dim=-1) if k > 0 else None
    for t in range(logprobs.shape[0]):
        entry: PositionLogprobs = {}
        tok = int(token_ids[t])
        entry[tok] = Logprob(float(chosen[t]), int(ranks[t]), decode(tok))
        if top is not None:
            for r, (lp, i) in enumerate(zip(top.values[t].tolist(), top.indices[t].tolist())):
                entry.setdefault(i, Logprob(lp, r + 1, decode(i)))
        out.append(entry)
    return out


def sample_batch(logits: torch.Tensor, params: list[SamplingParams],
                 generators: list[torch.Generator]) -> list[int]:
    """logits (S, V) -> one token per row. Greedy rows are one batched argmax; the others
    sample with their own generator, so a row's result never depends on its neighbours."""
    tokens = logits.argmax(-1).tolist()
    for i, (p, g) in enumerate(zip(params, generators)):
        if not p.greedy:
            tokens[i] = sample(logits[i], p, g)
    return tokens
