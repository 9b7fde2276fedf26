"""POST /v1/completions through the official `openai` client: every prompt shape, n, echo,
streaming, usage against the tokenizer, and prompt logprobs against the transformers model
(the reference), the way lm-eval-harness asks for log-likelihoods."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from serve_helpers import MODEL


def test_text_prompt_and_usage(client, hf_tokenizer):
    prompt = "The quick brown fox"
    r = client.completions.create(model=MODEL, prompt=prompt, max_tokens=5, temperature=0,
                                  extra_body={"ignore_eos": True})
    assert r.object == "text_completion" and r.id.startswith("cmpl-") and r.model == MODEL
    assert r.usage.prompt_tokens == len(hf_tokenizer(prompt)["input_ids"])
    assert r.usage.completion_tokens == 5 and r.choices[0].finish_reason == "length"


def test_default_max_tokens_is_16(client):
    r = client.completions.create(model=MODEL, prompt="Hello", extra_body={"ignore_eos": True})
    assert r.usage.completion_tokens == 16


def test_prompt_shapes_and_choice_order(client, hf_tokenizer):
    ids = hf_tokenizer("Hello, world")["input_ids"]
    alone = [client.completions.create(model=MODEL, prompt=p, max_tokens=6, temperature=0)
             .choices[0].text for p in ("Hello, world", ids)]
    assert alone[0] == alone[1]  # text and its token ids are the same prompt
    other = hf_tokenizer("The quick")["input_ids"]
    r = client.completions.create(model=MODEL, prompt=[ids, other], max_tokens=6,
                                  temperature=0, n=2)
    assert [c.index for c in r.choices] == [0, 1, 2, 3]  # prompt-major
    assert r.choices[0].text == r.choices[1].text == alone[0]
    assert r.usage.prompt_tokens == len(ids) + len(other)
    r = client.completions.create(model=MODEL, prompt=["Hello, world", "The quick"],
                                  max_tokens=6, temperature=0)
    assert r.choices[0].text == alone[0]


def test_echo_and_streaming(client):
    kwargs = dict(model=MODEL, prompt=["Hello", "Fox"], max_tokens=8, temperature=0.8,
                  seed=5, n=2)
    full = client.completions.create(**kwargs)
    texts: dict[int, str] = {}
    reasons: dict[int, str] = {}
    usage = None
    for chunk in client.completions.create(stream=True, stream_options={"include_usage": True},
                                           **kwargs):
        usage = chunk.usage or usage
        for c in chunk.choices:
            texts[c.index] = texts.get(c.index, "") + c.text
            reasons[c.index] = c.finish_reason or reasons.get(c.index)
    assert [texts[i] for i in range(4)] == [c.text for c in full.choices]
    assert [reasons[i] for i in range(4)] == [c.finish_reason for c in full.choices]
    assert usage.completion_tokens == full.usage.completion_tokens
    echoed = client.completions.create(echo=True, **kwargs)  # same seed: same samples
    prompts = ["Hello", "Hello", "Fox", "Fox"]
    assert [c.text for c in echoed.choices] == [p + c.text for p, c in zip(prompts, full.choices)]


@pytest.fixture(scope="module")
def hf_model(checkpoint):
    transformers = pytest.importorskip("transformers")
    return transformers.AutoModelForCausalLM.from_pretrained(checkpoint,
                                                             dtype=torch.float32).eval()


@torch.no_grad()
def _reference_logprobs(hf_model, ids: list[int]) -> list[float]:
    logits = hf_model(torch.tensor([ids])).logits[0].float()
    lp = torch.log_softmax(logits, -1)
    return [lp[i - 1, ids[i]].item() for i in range(1, len(ids))]


def test_echo_logprobs_match_the_reference_model(client, hf_tokenizer, hf_model):
    ids = hf_tokenizer("The weather in Paris is sunny, 21 degrees.")["input_ids"]
    r = client.completions.create(model=MODEL, prompt=ids, max_tokens=1, temperature=0,
                                  logprobs=2, echo=True)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(ids) + 1
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert lp.token_logprobs[1:len(ids)] == pytest.approx(_reference_logprobs(hf_model, ids),
                                                          abs=1e-3)
    assert all(len(top) >= 2 for top in lp.top_logprobs[1:])
    assert lp.text_offset == sorted(lp.text_offset)


def test_lm_eval_loglikelihood_payload(client, http, hf_tokenizer, hf_model):
    """lm-eval-harness's own payload builder and response parser (local-completions)."""
    api = pytest.importorskip("lm_eval.models.openai_completions").LocalCompletionsAPI
    context, continuation = "The quick brown fox", " jumps over the lazy dog."
    ctx = hf_tokenizer(context)["input_ids"]
    whole = hf_tokenizer(context + continuation)["input_ids"]
    payload = api._create_payload(SimpleNamespace(model=MODEL), [whole], generate=False)
    r = http.post("/v1/completions", json=payload)
    assert r.status_code == 200, r.text
    [(logprob, greedy)] = api.parse_logprobs(r.json(), tokens=[whole], ctxlens=[len(ctx)])
    reference = _reference_logprobs(hf_model, whole)[len(ctx) - 1:]
    assert logprob == pytest.approx(sum(reference), abs=1e-3)
    assert isinstance(greedy, bool)


def test_lm_eval_local_completions_end_to_end(server, checkpoint, hf_tokenizer, hf_model):
    """The real `local-completions` model of lm-eval-harness (needs lm-eval[api])."""
    pytest.importorskip("tenacity", reason="lm-eval's API models need lm-eval[api]")
    from lm_eval.api.instance import Instance
    from lm_eval.models.openai_completions import LocalCompletionsAPI

    lm = LocalCompletionsAPI(base_url=f"{server.base_url}/completions", model=MODEL,
                             tokenizer=str(checkpoint), tokenizer_backend="huggingface",
                             max_length=512)
    pairs = [("The quick brown", " fox jumps"), ("Hello,", " world!")]
    requests = [Instance(request_type="loglikelihood", doc={}, arguments=p, idx=i)
                for i, p in enumerate(pairs)]
    results = lm.loglikelihood(requests, disable_tqdm=True)
    for (context, continuation), (logprob, _) in zip(pairs, results):
        ctx = hf_tokenizer(context)["input_ids"]
        whole = hf_tokenizer(context + continuation)["input_ids"]
        reference = sum(_reference_logprobs(hf_model, whole)[len(ctx) - 1:])
        assert logprob == pytest.approx(reference, abs=1e-3)
