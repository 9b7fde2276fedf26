"""The requests of a serving benchmark: their lengths, cancellation points and prompts.

Prompts: when the server offers `/tokenize` and `/detokenize` (as vLLM and llmsys do),
random token ids (drawn from the tokens of a fixed word list) are decoded by the server and
re-tokenized until the text holds exactly the sampled input length. Otherwise a prompt is
that many random English words, which is only roughly that many tokens.
`client` is an `httpx.AsyncClient` whose base URL is the server root.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np

# Common English words: the fallback prompt vocabulary, and the text whose tokens seed the
# random token ids when the server can tokenize.
WORDS = """the of and to in is that it was for on are with as his they be at one have this
from or had by word but what some we can out other were all there when up use your how said
an each she which do their time if will way about many then them write would like so these
her long make thing see him two has look more day could go come did number sound no most
people my over know water than call first who may down side been now find any new work part
take get place made live where after back little only round man year came show every good
me give our under name very through just form sentence great think say help low line differ
turn cause much mean before move right boy old too same tell does set three want air well
also play small end put home read hand port large spell add even land here must big high
such follow act why ask men change went light kind off need house picture try us again
animal point mother world near build self earth father head stand own page should country
found answer school grow study still learn plant cover food sun four between state keep eye
never last let thought city tree cross farm hard start might story saw far sea draw left
late run while press close night real life few north open seem together next white children
begin got walk example ease paper group always music those both mark often letter until
mile river car feet care second book carry took science eat room friend began idea fish
mountain stop once base hear horse cut sure watch color face wood main enough plain girl
usual young ready above ever red list though feel talk bird soon body dog family direct pose
leave song measure door product black short numeral class wind question happen complete ship
area half rock order fire south problem piece told knew pass since top whole king space heard
best hour better true during hundred five remember step early hold west ground interest reach
fast verb sing listen six table travel less morning ten simple several vowel toward war lay
against pattern slow center love person money serve appear road map rain rule govern pull
cold notice voice unit power town fine certain fly fall lead cry dark machine note wait plan
figure star box noun field rest correct able pound done beauty drive stood contain front
teach week final gave green quick develop ocean warm free minute strong special mind behind
clear tail produce fact street inch multiply nothing course stay wheel full force blue object
decide surface deep moon island foot system busy test record boat common gold possible plane
stead dry wonder laugh thousand ago ran check game shape equate hot miss brought heat snow
tire bring yes distant fill east paint language among""".split()


@dataclass
class BenchRequest:
    index: int
    prompt: str
    prompt_len: int  # the sampled input length
    output_len: int  # max_tokens
    cancel_after: int | None = None  # close the stream after this many text chunks


async def _tokenize(client, model: str, text: str) -> list[int] | None:
    """Token ids of `text` from the server's /tokenize, or None if it has none."""
    body = {"model": model, "prompt": text, "add_special_tokens": False}
    try:
        r = await client.post("/tokenize", json=body)
        tokens = r.json().get("tokens") if r.status_code == 200 else None
    except Exception:  # any failure means: no usable /tokenize
        return None
    return tokens if isinstance(tokens, list) else None


async def _detokenize(client, model: str, ids: list[int]) -> str | None:
    try:
        r = await client.post("/detokenize", json={"model": model, "tokens": ids})
        text = r.json().get("prompt") if r.status_code == 200 else None
    except Exception:
        return None
    return text if isinstance(text, str) else None


async def token_pool(client, model: str) -> list[int] | None:
    """The distinct token ids of the word list, if the server can tokenize and detokenize."""
    ids = await _tokenize(client, model, " ".join(WORDS))
    if not ids or await _detokenize(client, model, ids[:4]) is None:
        return None
    return sorted(set(ids))


async def token_prompt(client, model: str, pool: list[int], length: int,
                       rng: np.random.Generator) -> str | None:
    """Text of exactly `length` tokens (when a few decode/encode rounds can make it so)."""
    ids = [int(t) for t in rng.choice(pool, size=length)]
    text = None
    for _ in range(4):
        text = await _detokenize(client, model, ids)
        got = None if text is None else await _tokenize(client, model, text)
        if got is None or len(got) == length:
            return text
        extra = [int(t) for t in rng.choice(pool, size=max(0, length - len(got)))]
        ids = got[:length] + extra
    return text


def word_prompt(length: int, rng: np.random.Generator) -> str:
    return " ".join(rng.choice(WORDS, size=length))


async def make_requests(client, model: str, n: int, input_len: tuple[int, int],
                        output_len: tuple[int, int], cancel_fraction: float,
                        seed: int) -> tuple[list[BenchRequest], str]:
    """Sample `n` requests' lengths (uniform in the inclusive ranges), which of them to
    cancel and where, and their prompts; reproducible from `seed`. Also returns where the
    prompts came from: "tokens" or "words"."""
    rng = np.random.default_rng(seed)
    in_lens = rng.integers(input_len[0], input_len[1] + 1, size=n)
    out_lens = rng.integers(output_len[0], output_len[1] + 1, size=n)
    cancelled = set(rng.choice(n, size=round(cancel_fraction * n), replace=False).tolist())
    pool = await token_pool(client, model)
    slots = asyncio.Semaphore(32)

    async def prompt(i: int) -> str:
        req_rng = np.random.default_rng([seed, 0, i])  # independent of completion order
        if pool is None:
            return word_prompt(int(in_lens[i]), req_rng)
        async with slots:
            text = await token_prompt(client, model, pool, int(in_lens[i]), req_rng)
        return text if text is not None else word_prompt(int(in_lens[i]), req_rng)

    prompts = await asyncio.gather(*(prompt(i) for i in range(n)))
    requests = [BenchRequest(index=i, prompt=prompts[i], prompt_len=int(in_lens[i]),
                             output_len=int(out_lens[i]),
                             cancel_after=int(rng.integers(0, out_lens[i])) if i in cancelled
                             else None)
                for i in range(n)]
    return requests, "words" if pool is None else "tokens"
