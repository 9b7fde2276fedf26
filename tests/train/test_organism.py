"""The bundled model's recipe (at toy sizes), its evaluation harness, and the committed model
itself answering held-out tool-use tasks through the real server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmsys.train.organism import DEFAULT_OUT, Recipe, build, evaluate_bundled
from llmsys.train.organism_data import EvalTask
from llmsys.train.organism_eval import TaskResult, check_call, format_report, report


def test_check_call_validates_name_json_and_schema():
    assert check_call("calculator", '{"expression": "2 + 3"}') == ({"expression": "2 + 3"}, None)
    assert "unknown tool" in check_call("weather", "{}")[1]
    assert "not JSON" in check_call("search", '{"query": ')[1]
    assert "schema" in check_call("search", '{"query": 3}')[1]
    assert "schema" in check_call("search", '{"query": "x", "extra": 1}')[1]


def test_report_counts_per_kind():
    tasks = [EvalTask("calculator", [], "5", ["calculator"]),
             EvalTask("calculator", [], "6", ["calculator"]),
             EvalTask("decline", [], None, [])]
    results = [TaskResult("calculator", correct=True, tools_called=["calculator"], calls=1,
                          valid_calls=1),
               TaskResult("calculator", correct=False, tools_called=[], calls=1, valid_calls=0,
                          declined=True),
               TaskResult("decline", correct=True, declined=True)]
    rep = report(tasks, results)
    assert rep["valid_tool_call_rate"] == 0.5
    assert rep["kinds"]["calculator"]["accuracy"] == 0.5
    assert rep["kinds"]["calculator"]["expected_tools_rate"] == 0.5
    assert rep["kinds"]["decline"]["accuracy"] == 1.0
    assert rep["wrong_declines"] == 1
    assert "| calculator | 2 | 50.0% |" in format_report(rep)


def test_quick_recipe_runs_end_to_end(tmp_path):
    """Every stage at toy sizes: data, tokenizer, pretraining, SFT, export, evaluation through
    the real server, model card; a second run finds every stage done."""
    from llmsys import LLM

    out = tmp_path / "model"
    summary = build(Recipe.quick(), tmp_path / "work", out)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "README.md",
                 "knowledge.jsonl", "training/loss_pretrain.png", "training/loss_sft.png",
                 "training/eval.json"):
        assert (out / name).is_file(), name
    assert summary["histories"]["sft"]["steps"] == Recipe.quick().sft_steps
    assert summary["eval"]["tasks"] == 5 * Recipe.quick().num_eval_per_kind
    assert "| calculator |" in (out / "README.md").read_text()
    assert LLM(out, dtype="float32").generate(["Hello"])[0].token_ids
    again = build(Recipe.quick(), tmp_path / "work", out, evaluate_model=False)
    assert again["histories"] == summary["histories"]


bundled = pytest.mark.skipif(not (DEFAULT_OUT / "config.json").is_file(),
                             reason="the bundled model is not built (make organism)")


@bundled
def test_bundled_model_card_matches_its_files():
    card = (DEFAULT_OUT / "README.md").read_text()
    summary = json.loads((DEFAULT_OUT / "training" / "summary.json").read_text())
    assert f"{summary['recipe']['num_train_chats']} synthetic conversations" in card
    assert Path(DEFAULT_OUT / "training" / "loss_sft.png").stat().st_size > 0


@bundled
def test_bundled_model_uses_its_tools_through_the_server():
    """Eight held-out tasks of each kind through `llmsys serve` with the official client: the
    model's tool calls parse and validate, and it solves the arithmetic, the greetings and
    most look-ups and two-step tasks drawn here (measured: 100%, 100%, 75%, 75%; over 50
    per kind see its model card)."""
    rep = evaluate_bundled(DEFAULT_OUT, n_per_kind=8, concurrency=8)
    kinds = json.dumps(rep["kinds"])
    assert rep["valid_tool_call_rate"] >= 0.9
    assert rep["kinds"]["calculator"]["accuracy"] >= 0.85, kinds
    assert rep["kinds"]["greeting"]["accuracy"] >= 0.85, kinds
    assert rep["kinds"]["search"]["accuracy"] >= 0.6, kinds
    assert rep["kinds"]["two_step"]["accuracy"] >= 0.6, kinds
