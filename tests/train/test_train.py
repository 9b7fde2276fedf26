"""Training: the loss and its masks, packing, AdamW, the tokenizer trainer, resume, a tiny run.

References: `torch.optim.AdamW` for the optimizer, `F.cross_entropy` on the selected targets
for the masked / smoothed loss, separate unpacked forwards for packed attention, and an
uninterrupted run for resume.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from llmsys.model.config import ModelConfig
from llmsys.model.tokenizer import Tokenizer
from llmsys.model.transformer import Transformer
from llmsys.testing import _corpus
from llmsys.train.data import (
    IGNORE_INDEX,
    DocumentMask,
    Example,
    chat_example,
    collate,
    pack,
    token_byte_lengths,
)
from llmsys.train.optim import AdamW, lr_at
from llmsys.train.pretrain import ModelShape, pretrain
from llmsys.train.tokenizer import MARKUP_TOKENS, SPECIAL_TOKENS, save_tokenizer, train_tokenizer
from llmsys.train.trainer import TrainConfig, init_weights, token_loss_sum

SHAPE = ModelShape(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                   intermediate_size=128, max_position_embeddings=64)


@pytest.fixture(scope="module")
def model(tok: Tokenizer) -> Transformer:
    m = Transformer(ModelConfig.from_hf(SHAPE.hf_config(tok)))
    init_weights(m, seed=0)
    return m


def _examples(n: int, seed: int, vocab: int) -> list[Example]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        length = rng.randint(3, 20)
        out.append(Example([rng.randrange(vocab) for _ in range(length)],
                           [rng.random() < 0.7 for _ in range(length)]))
    return out


def _mean_loss(model, rows, label_smoothing=0.0):
    batch = collate(rows)
    count = int((batch["labels"] != IGNORE_INDEX).sum())
    return token_loss_sum(model, batch, label_smoothing) / count


# ---- loss, masks, packing -------------------------------------------------------------------


def test_masked_and_padding_positions_get_zero_gradient(model, tok):
    # Token ids below the special tokens, so only padding is <|endoftext|>.
    rows = pack(_examples(4, 0, vocab=500), seq_len=48, pad_id=tok.pad_token_id)
    batch = collate(rows)
    embedded = model.embed_tokens(batch["ids"]).detach().requires_grad_()
    hook = model.embed_tokens.register_forward_hook(lambda module, args, output: embedded)
    try:
        logits = model(batch["ids"], batch["positions"],
                       DocumentMask(batch["doc_ids"], batch["positions"]))
        logits.retain_grad()
        F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(),
                        ignore_index=IGNORE_INDEX).backward()
    finally:
        hook.remove()
    ignored = batch["labels"] == IGNORE_INDEX
    assert ignored.any() and (~ignored).any()
    assert torch.equal(logits.grad[ignored], torch.zeros_like(logits.grad[ignored]))
    # Padding tokens: nothing attends to them and their own outputs carry no loss.
    padding = batch["ids"] == tok.pad_token_id
    assert padding.any() and (~padding).any()
    assert torch.equal(embedded.grad[padding], torch.zeros_like(embedded.grad[padding]))
    assert (embedded.grad[~ignored].abs().sum(-1) > 0).all()  # each target feeds its loss


def test_padded_batch_loss_equals_unpadded(model, tok):
    examples = _examples(3, 1, tok.vocab_size)
    exact = sum(len(e.ids) for e in examples)
    tight = pack(examples, seq_len=exact, pad_id=tok.pad_token_id)
    loose = pack(examples, seq_len=exact + 29, pad_id=tok.pad_token_id)
    assert len(tight) == len(loose) == 1 and len(loose[0].ids) == exact + 29
    with torch.no_grad():
        assert _mean_loss(model, tight).item() == pytest.approx(
            _mean_loss(model, loose).item(), abs=1e-6)


def test_packed_documents_never_attend_to_each_other(model, tok):
    examples = _examples(5, 2, tok.vocab_size)
    (row,) = pack(examples, seq_len=sum(len(e.ids) for e in examples), pad_id=0)
    batch = collate([row])
    with torch.no_grad():
        packed = model(batch["ids"], batch["positions"],
                       DocumentMask(batch["doc_ids"], batch["positions"]))[0]
        alone = torch.cat([model(torch.tensor([e.ids]), torch.arange(len(e.ids))[None])[0]
                           for e in examples])
    torch.testing.assert_close(packed, alone, atol=1e-5, rtol=1e-5)


def test_labels_are_next_tokens_inside_a_document(tok):
    a, b = Example([1, 2, 3], [True, False, True]), Example([7, 8], [True, True])
    (row,) = pack([a, b], seq_len=8, pad_id=0)
    assert row.ids == [1, 2, 3, 7, 8, 0, 0, 0]
    assert row.labels == [IGNORE_INDEX, 3, IGNORE_INDEX, 8, IGNORE_INDEX] + [IGNORE_INDEX] * 3
    assert row.positions == [0, 1, 2, 0, 1, 0, 0, 0]
    assert row.doc_ids == [0, 0, 0, 1, 1, 2, 3, 4]
    rows = pack([Example(list(range(10)), [True] * 10)], seq_len=4, pad_id=0)
    assert [r.ids for r in rows] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 0, 0]]


def test_label_smoothing_matches_cross_entropy_on_the_targets(model, tok):
    rows = pack(_examples(4, 3, tok.vocab_size), seq_len=40, pad_id=tok.pad_token_id)
    batch = collate(rows)
    with torch.no_grad():
        ours = _mean_loss(model, rows, label_smoothing=0.1)
        logits = model(batch["ids"], batch["positions"],
                       DocumentMask(batch["doc_ids"], batch["positions"]))
        keep = batch["labels"] != IGNORE_INDEX
        reference = F.cross_entropy(logits[keep], batch["labels"][keep], label_smoothing=0.1)
    assert ours.item() == pytest.approx(reference.item(), abs=1e-6)


def test_chat_example_trains_on_the_assistant_turns_only(tok):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2 + 3?"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function",
         "function": {"name": "calculator", "arguments": '{"expression": "2 + 3"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "5"},
        {"role": "assistant", "content": "It is 5."},
    ]
    tools = [{"type": "function", "function": {"name": "calculator", "parameters": {}}}]
    example = chat_example(tok, messages, tools)
    trained = tok.decode([i for i, t in zip(example.ids, example.trained) if t],
                         skip_special_tokens=False)
    call = '<tool_call>\n{"name": "calculator", "arguments": {"expression": "2 + 3"}}\n</tool_call>'
    assert trained == f"{call}<|im_end|>\nIt is 5.<|im_end|>\n"
    assert tok.decode(example.ids, skip_special_tokens=False) == tok.apply_chat_template(
        messages, tools=tools)


def test_token_byte_lengths_count_the_text(tok):
    lengths = token_byte_lengths(tok)
    text = "Hello wörld 😀 <tool_call> 42"
    ids = tok.encode(text + "<|im_end|>")
    assert sum(int(lengths[i]) for i in ids) == len(text.encode())


# ---- optimizer and schedule -------------------------------------------------------------------


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_adamw_matches_torch_after_100_steps(weight_decay):
    torch.manual_seed(0)
    ours_model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(),
                                     torch.nn.Linear(32, 4))
    ref_model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(),
                                    torch.nn.Linear(32, 4))
    ref_model.load_state_dict(ours_model.state_dict())
    kwargs = dict(lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=weight_decay)
    ours, ref = AdamW(ours_model.parameters(), **kwargs), torch.optim.AdamW(
        ref_model.parameters(), **kwargs)
    for step in range(100):
        x, y = torch.randn(8, 16), torch.randn(8, 4)
        for m, opt in ((ours_model, ours), (ref_model, ref)):
            for g in opt.param_groups:
                g["lr"] = lr_at(step, max_lr=1e-2, total_steps=100, warmup_steps=10)
            opt.zero_grad()
            F.mse_loss(m(x), y).backward()
            opt.step()
    for p, q in zip(ours_model.parameters(), ref_model.parameters()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=0)


def test_adamw_rejects_bad_settings():
    with pytest.raises(ValueError, match="betas"):
        AdamW([torch.zeros(1, requires_grad=True)], betas=(0.9, 1.0))


def test_lr_schedule_warms_up_then_decays_to_min():
    lrs = [lr_at(s, max_lr=1.0, total_steps=100, warmup_steps=10, min_lr=0.1) for s in range(101)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))
    assert lrs[100] == pytest.approx(0.1)


# ---- tokenizer training --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_tok(tmp_path_factory) -> Tokenizer:
    path = tmp_path_factory.mktemp("bpe")
    save_tokenizer(train_tokenizer(_corpus(), 700), path)
    return Tokenizer.from_dir(path)


def test_trained_tokenizer_has_the_chat_tokens_and_splits_digits(trained_tok):
    assert trained_tok.vocab_size == 700
    for token in SPECIAL_TOKENS + MARKUP_TOKENS:
        assert trained_tok.token_to_id(token) is not None
    ids = trained_tok.encode("population 48200")
    digits = [trained_tok.decode([i]) for i in ids[-5:]]
    assert digits == list("48200")


def test_a_capitalised_name_is_the_same_tokens_after_a_space_and_a_quote(trained_tok):
    name = trained_tok.encode("Kadalvel")
    question, call = trained_tok.encode("the size of Kadalvel?"), trained_tok.encode('"Kadalvel"')
    assert [question[i:i + len(name)] == name for i in range(len(question))].count(True) == 1
    assert call[1:-1] == name
    assert trained_tok.decode(question) == "the size of Kadalvel?"


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_trained_tokenizer_round_trips_unicode(trained_tok, text):
    special = SPECIAL_TOKENS + MARKUP_TOKENS
    if any(s in text for s in special):
        return
    ids = trained_tok.encode(text)
    assert trained_tok.decode(ids, skip_special_tokens=False) == text


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=64))
def test_trained_tokenizer_round_trips_random_bytes(trained_tok, data):
    text = data.decode("latin-1")  # every byte value as one character
    assert trained_tok.decode(trained_tok.encode(text), skip_special_tokens=False) == text


def test_ordinary_text_never_produces_special_tokens(trained_tok):
    added = {trained_tok.token_to_id(t) for t in SPECIAL_TOKENS + MARKUP_TOKENS}
    text = "\n".join(_corpus()) + " <| im_start |> <tool call> </ tool_call >"
    assert not added & set(trained_tok.encode(text))


def test_tokenizer_refuses_a_vocabulary_the_corpus_cannot_fill():
    with pytest.raises(ValueError, match="supports vocab_size up to"):
        train_tokenizer(["tiny corpus"], 5000)
    with pytest.raises(ValueError, match="vocab_size must be at least"):
        train_tokenizer(["tiny corpus"], 100)


# ---- runs: a tiny pretraining, resume ------------------------------------------------------------


_TOY = ("The quick brown fox jumps over the lazy dog.", "Five little ducks went out one day.",
        "Hello, world! How are you today? I am fine, thank you.")


def _corpus_file(path: Path) -> Path:
    """A toy corpus a two-layer model learns in a few dozen steps."""
    file = path / "corpus.jsonl"
    texts = [" ".join(_TOY[(i + j) % 3] for j in range(3)) for i in range(120)]
    file.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return file


def _run(tmp: Path, tiny_dir: Path, out: str, steps: int, resume: bool = False):
    cfg = TrainConfig(out_dir=tmp / out, steps=steps, batch_size=4, warmup_steps=3, lr=1e-2,
                      min_lr=1e-3, eval_every=5, save_every=5, progress=False, seed=3)
    return pretrain([_corpus_file(tmp)], tiny_dir, cfg, shape=SHAPE, seq_len=64,
                    eval_fraction=0.1, resume=resume)


def test_tiny_pretraining_learns_and_reloads_through_llm(tmp_path, tiny_dir):
    from llmsys import LLM, SamplingParams

    history = _run(tmp_path, tiny_dir, "run", steps=30)
    assert history.loss[-1] < 0.5 * history.loss[0]
    assert history.eval_loss[-1] < history.eval_loss[0]
    assert (tmp_path / "run" / "loss.png").stat().st_size > 0
    llm = LLM(tmp_path / "run", dtype="float32")
    out = llm.generate(["The quick brown"], SamplingParams(max_tokens=4, temperature=0))
    assert out[0].outputs[0].token_ids


def test_resume_reproduces_the_uninterrupted_loss_curve(tmp_path, tiny_dir):
    # The schedule depends on the total step count, so the interrupted run is a run of 20
    # steps whose process "dies" after its checkpoint at step 10 (simulated by truncating it).
    full = _run(tmp_path, tiny_dir, "full", steps=20)
    cfg = TrainConfig(out_dir=tmp_path / "part", steps=20, batch_size=4, warmup_steps=3,
                      lr=1e-2, min_lr=1e-3, eval_every=5, save_every=10, progress=False, seed=3)
    _interrupt_after(10)
    try:
        with pytest.raises(_Interrupted):
            pretrain([_corpus_file(tmp_path)], tiny_dir, cfg, shape=SHAPE, seq_len=64,
                     eval_fraction=0.1)
    finally:
        _interrupt_after(None)
    resumed = pretrain([_corpus_file(tmp_path)], tiny_dir, cfg, shape=SHAPE, seq_len=64,
                       eval_fraction=0.1, resume=True)
    assert resumed.steps == full.steps
    assert resumed.loss == pytest.approx(full.loss, abs=1e-6)
    assert resumed.eval_loss == pytest.approx(full.eval_loss, abs=1e-6)


class _Interrupted(Exception):
    pass


def _interrupt_after(step: int | None) -> None:
    """Make the trainer raise after saving the checkpoint of `step` (None: restore)."""
    import llmsys.train.trainer as trainer

    if step is None:
        trainer.save = trainer._original_save  # type: ignore[attr-defined]
        return
    trainer._original_save = trainer.save  # type: ignore[attr-defined]

    def save_then_die(model, hf_config, opt, history, out, tokenizer_dir):
        trainer._original_save(model, hf_config, opt, history, out, tokenizer_dir)
        if history.steps[-1] == step:
            raise _Interrupted

    trainer.save = save_then_die


def test_two_ranks_under_torchrun_match_one_process_with_twice_the_batch(tmp_path, tiny_dir):
    """DDP over gloo on CPU: 2 ranks x 2 rows give the loss curve of 1 process x 4 rows."""
    import os
    import subprocess
    import sys

    corpus = _corpus_file(tmp_path)

    def run(out: str, launcher: list[str], batch: int) -> list[float]:
        cmd = [*launcher, "-m", "llmsys.cli", "train", "pretrain", "--data", str(corpus),
               "--tokenizer", str(tiny_dir), "--out", str(tmp_path / out), "--steps", "6",
               "--batch-size", str(batch), "--warmup-steps", "2", "--lr", "1e-2",
               "--hidden-size", "64", "--layers", "2", "--heads", "4", "--kv-heads", "2",
               "--intermediate-size", "128", "--max-position-embeddings", "64",
               "--eval-every", "3", "--save-every", "6", "--eval-fraction", "0.1"]
        env = os.environ | {"OMP_NUM_THREADS": "1"}
        subprocess.run(cmd, check=True, env=env, capture_output=True, timeout=300)
        return json.loads((tmp_path / out / "history.json").read_text())["loss"]

    single = run("one", [sys.executable], batch=4)
    ranks = run("two", [sys.executable, "-m", "torch.distributed.run", "--standalone",
                        "--nproc_per_node", "2"], batch=2)
    assert ranks == pytest.approx(single, abs=1e-4)


def test_chat_files_with_malformed_messages_are_refused_with_the_line(tmp_path):
    from llmsys.train.data import read_chats

    path = tmp_path / "chats.jsonl"
    path.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n'
                    '{"messages": [{"content": "no role"}]}\n')
    with pytest.raises(ValueError, match=r"chats.jsonl:2: message 0 must be an object"):
        list(read_chats(path))


def test_document_mask_with_a_window_matches_the_reference_attention():
    from llmsys.kernels.attention import attention

    torch.manual_seed(0)
    q, k, v = torch.randn(1, 12, 4, 8), torch.randn(1, 12, 2, 8), torch.randn(1, 12, 2, 8)
    positions = torch.arange(12)[None]
    mask = DocumentMask(torch.zeros(1, 12, dtype=torch.long), positions)
    for window in (3, 5, 3):  # the second use of a window reads the cached mask
        torch.testing.assert_close(mask.attend(0, q, k, v, positions, window),
                                   attention(q, k, v, positions, None, window))


@pytest.mark.parametrize("seed", range(4))
def test_document_mask_runs_match_the_masked_reference(seed: int) -> None:
    """Per-document causal attention (runs of a packed row, one-token padding documents
    merged) equals one masked SDPA call over the row; gradients too."""
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(3):
        lengths = torch.randint(1, 9, (5,), generator=gen).tolist()
        doc = [d for d, n in enumerate(lengths) for _ in range(n)]
        rows.append(doc + list(range(len(lengths), len(lengths) + 40 - len(doc))))  # padding
    doc_ids = torch.tensor(rows)
    positions = torch.tensor([[row[:i].count(d) for i, d in enumerate(row)] for row in rows])
    q = torch.randn(3, 40, 4, 8, generator=gen, requires_grad=True)
    k = torch.randn(3, 40, 2, 8, generator=gen, requires_grad=True)
    v = torch.randn(3, 40, 2, 8, generator=gen, requires_grad=True)
    out = DocumentMask(doc_ids, positions).attend(0, q, k, v, positions, None)
    allowed = (doc_ids[:, :, None] == doc_ids[:, None, :]) & torch.ones(40, 40).bool().tril()
    ref = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=allowed[:, None],
        enable_gqa=True).transpose(1, 2)
    torch.testing.assert_close(out, ref)
    grads = torch.autograd.grad(out.square().sum(), (q, k, v))
    ref_grads = torch.autograd.grad(ref.square().sum(), (q, k, v))
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want)


def test_document_mask_needs_contiguous_documents() -> None:
    doc_ids = torch.tensor([[0, 0, 1, 0]])
    with pytest.raises(ValueError, match="document 0 is not contiguous"):
        DocumentMask(doc_ids, torch.zeros_like(doc_ids)).runs()
