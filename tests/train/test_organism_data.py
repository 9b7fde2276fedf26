"""The organism's synthetic data: safe calculator (against Python's eval), knowledge base and
search, training conversations (valid tool calls whose results match the tools, checked with
jsonschema), and the held-out splits (entities, phrasings, calculator operands)."""

from __future__ import annotations

import json
import random
import re

import jsonschema
import pytest

from llmsys.train import organism_data as od
from llmsys.train.organism_data import (
    EVAL_KINDS,
    KIND_MIX,
    NO_RESULTS,
    SYSTEM_PROMPT,
    TOOLS,
    EvalTask,
    answer_is_correct,
    calculator,
    eval_tasks,
    is_decline,
    is_eval_operands,
    make_knowledge_base,
    training_conversations,
    write_dataset,
)

NUM_TRAIN = 1500


@pytest.fixture(scope="module")
def kb() -> od.KnowledgeBase:
    return make_knowledge_base(seed=0)


@pytest.fixture(scope="module")
def convs(kb: od.KnowledgeBase) -> list[dict]:
    return training_conversations(kb, NUM_TRAIN, seed=1)


@pytest.fixture(scope="module")
def tasks(kb: od.KnowledgeBase) -> list[EvalTask]:
    return eval_tasks(kb, 60, seed=2)


def user_texts(conversation: dict) -> list[str]:
    return [m["content"] for m in conversation["messages"] if m["role"] == "user"]


# --------------------------------------------------------------------------- calculator

@pytest.mark.parametrize(("expression", "result"), [
    ("37 * 12", "444"), ("1200 / 8", "150"), ("25 / 2", "12.5"), ("10 / 3", "3.3333"),
    ("2 ** 10", "1024"), ("-(3 + 4) * 2", "-14"), ("7 // 2", "3"), ("7 % 4", "3"),
    ("0.1 + 0.2", "0.3"), ("48200 * 2", "96400"), (" 12 * (3 + 4) ", "84"), ("2 / 3", "0.6667"),
    ("1 / 3 * 3", "1"), ("-1 / 100000", "0"),
])
def test_calculator_examples(expression: str, result: str) -> None:
    assert calculator(expression) == result


def random_expression(rng: random.Random, depth: int = 0) -> str:
    if depth > 2 or rng.random() < 0.3:
        return str(rng.randint(0, 200))
    left, right = random_expression(rng, depth + 1), random_expression(rng, depth + 1)
    op = rng.choice(["+", "-", "*", "/", "//", "%"])
    text = f"{left} {op} {right}"
    return f"({text})" if rng.random() < 0.5 else text


def test_calculator_matches_python_eval() -> None:
    rng = random.Random(0)
    for _ in range(500):
        expression = random_expression(rng)
        try:
            reference = eval(expression)  # noqa: S307 - digits and operators only
        except ZeroDivisionError:
            assert calculator(expression) == "Error: division by zero", expression
            continue
        assert float(calculator(expression)) == pytest.approx(reference, abs=1e-4), expression


@pytest.mark.parametrize(("expression", "problem"), [
    ("__import__('os')", "unsupported syntax"), ("x + 1", "unsupported syntax"),
    ("abs(-3)", "unsupported syntax"), ("[1, 2]", "unsupported syntax"),
    ("'a' * 3", "unsupported syntax"), ("True + 1", "unsupported syntax"),
    ("(1).real", "unsupported syntax"), ("2 ^ 3", "unsupported syntax"),
    ("1 if 1 else 2", "unsupported syntax"), ("1 / 0", "division by zero"),
    ("5 % 0", "division by zero"), ("0 ** -1", "division by zero"),
    ("2 ** 1000", "exponent"), ("9 ** 9 ** 9", "exponent"), ("(10 ** 20) ** 2", "too large"),
    ("1e400", "too large"), ("(-8) ** 0.5", "not a real number"), ("1 +", "invalid"),
    ("", "invalid"), ("1" * 300, "too long"),
])
def test_calculator_rejects(expression: str, problem: str) -> None:
    result = calculator(expression)
    assert result.startswith("Error: ") and problem in result, result


# ------------------------------------------------------------------------ knowledge base

def test_knowledge_base_is_deterministic() -> None:
    assert make_knowledge_base(seed=3, num_entities=50) == make_knowledge_base(seed=3,
                                                                             num_entities=50)
    assert make_knowledge_base(seed=3, num_entities=50) != make_knowledge_base(seed=4,
                                                                             num_entities=50)


def test_knowledge_base_shape(kb: od.KnowledgeBase) -> None:
    assert len(kb.entities) == 300
    assert {e.kind for e in kb.entities} == {"city", "person", "company"}
    held = sum(e.held_out for e in kb.entities)
    assert 0.15 * 300 <= held <= 0.25 * 300
    open_cities = {e.name for e in kb.entities if e.kind == "city" and not e.held_out}
    for entity in kb.entities:
        text = entity.passage()
        for value in entity.facts.values():
            assert str(value) in text
        town = entity.facts.get("hometown", entity.facts.get("headquarters"))
        if town is not None and not entity.held_out:
            assert town in open_cities
    words = [w.lower() for e in kb.entities for w in e.name.split()]
    assert len(words) == len(set(words))
    assert not [(a, b) for a in words for b in words if a != b and a in b]


def test_documents_are_beir_style(kb: od.KnowledgeBase) -> None:
    documents = kb.documents()
    assert len({d["_id"] for d in documents}) == len(documents) == len(kb.entities)
    assert documents[0] == {"_id": kb.entities[0].name.lower(), "title": kb.entities[0].name,
                            "text": kb.entities[0].passage()}


def test_search_finds_every_entity(kb: od.KnowledgeBase) -> None:
    for entity in kb.entities:
        expected = f"{entity.name}: {entity.passage()}"
        assert kb.search(entity.name) == expected
        assert kb.search(entity.name.lower() + "?") == expected
        assert kb.search(f"Tell me about {entity.name.upper()}, please!") == expected
        assert kb.get(entity.name.lower()) is entity


def test_search_without_match(kb: od.KnowledgeBase) -> None:
    assert kb.search("xyzzy qwerty") == NO_RESULTS
    assert kb.search("") == NO_RESULTS
    assert kb.search("what is the") == NO_RESULTS
    with pytest.raises(KeyError, match="Nowhere"):
        kb.get("Nowhere")


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="num_entities"):
        make_knowledge_base(num_entities=3)
    with pytest.raises(ValueError, match="held_out_fraction"):
        make_knowledge_base(held_out_fraction=1.0)
    kb = make_knowledge_base(num_entities=20)
    with pytest.raises(ValueError, match="n must be"):
        training_conversations(kb, -1)
    with pytest.raises(ValueError, match="unknown eval kind"):
        EvalTask("poetry", [], None, [])


# ------------------------------------------------------------------ training conversations

def test_training_is_deterministic(kb: od.KnowledgeBase) -> None:
    first = training_conversations(kb, 200, seed=1)
    assert first == training_conversations(kb, 200, seed=1)
    assert first != training_conversations(kb, 200, seed=5)
    assert training_conversations(make_knowledge_base(seed=1), 200, seed=1) != first


def test_kind_mix(convs: list[dict]) -> None:
    counts = {kind: sum(c["kind"] == kind for c in convs) for kind in KIND_MIX}
    for kind, share in KIND_MIX.items():
        assert abs(counts[kind] - share * NUM_TRAIN) <= 1, counts
    multi = [c for c in convs if len(user_texts(c)) > 1]
    tool_kinds = sum(counts[k] for k in ("calculator", "search", "two_step"))
    assert 0.05 * tool_kinds < len(multi) < 0.15 * tool_kinds
    with_system = sum(c["messages"][0]["role"] == "system" for c in convs)
    assert 0.6 * NUM_TRAIN < with_system < 0.95 * NUM_TRAIN


def test_training_conversations_are_valid(kb: od.KnowledgeBase, convs: list[dict]) -> None:
    validators = {}
    for tool in TOOLS:
        schema = tool["function"]["parameters"]
        jsonschema.Draft202012Validator.check_schema(schema)
        validators[tool["function"]["name"]] = jsonschema.Draft202012Validator(schema)
    open_names = {e.name for e in kb.entities if not e.held_out}
    for conv in convs:
        assert conv["tools"] == TOOLS
        messages = conv["messages"]
        if messages[0]["role"] == "system":
            assert messages[0]["content"] == SYSTEM_PROMPT
            messages = messages[1:]
        assert messages[0]["role"] == "user" and messages[-1]["role"] == "assistant"
        last_result, last_tool, searched, last_query = None, None, None, None
        for i, message in enumerate(messages):
            if message["role"] == "assistant" and message.get("tool_calls"):
                assert message["content"] is None and len(message["tool_calls"]) == 1
                call = message["tool_calls"][0]
                name, raw = call["function"]["name"], call["function"]["arguments"]
                assert call["type"] == "function" and re.fullmatch(r"call_\d+", call["id"])
                assert raw == json.dumps(json.loads(raw))
                arguments = json.loads(raw)
                validators[name].validate(arguments)
                reply = messages[i + 1]
                assert reply["role"] == "tool" and reply["tool_call_id"] == call["id"]
                if name == "calculator":
                    assert reply["content"] == calculator(arguments["expression"])
                    assert not reply["content"].startswith("Error")
                    if last_tool == "search":  # two-step: numbers copied from the passage
                        numbers = re.findall(r"\d+", arguments["expression"])
                        assert any(n in last_result for n in numbers), (arguments, last_result)
                elif reply["content"] == NO_RESULTS:  # only in a not_found chat's first turn
                    assert conv["kind"] == "not_found" and searched is None
                    assert kb.search(arguments["query"]) == NO_RESULTS
                else:
                    assert arguments["query"] in open_names
                    assert reply["content"] == kb.search(arguments["query"])
                    assert reply["content"].startswith(arguments["query"] + ":")
                    searched = kb.get(arguments["query"])
                last_result, last_tool = reply["content"], name
                last_query = arguments.get("query")
            elif message["role"] == "assistant":
                assert isinstance(message["content"], str) and message["content"]
                if last_tool == "calculator":
                    assert od.contains_answer(message["content"], last_result), message
                elif last_tool == "search" and searched is None:  # says it found nothing
                    assert last_query in message["content"], (message, last_query)
                elif last_tool == "search":
                    values = [str(v) for v in searched.facts.values()]
                    assert any(od.contains_answer(message["content"], v) for v in values)
                if conv["kind"] == "decline":
                    assert is_decline(message["content"])
                last_tool = None
        if conv["kind"] in ("greeting", "decline"):
            assert len(messages) == 2
    assert any(c["kind"] == "not_found" for c in convs)


def test_conversations_stay_short(convs: list[dict]) -> None:
    def size(message: dict) -> int:
        return len(message.get("content") or "") + len(json.dumps(message.get("tool_calls", "")))

    assert max(sum(size(m) for m in c["messages"]) for c in convs) < 1100


def test_no_held_out_entity_in_training(kb: od.KnowledgeBase, convs: list[dict],
                                        tasks: list[EvalTask]) -> None:
    held_words = {w for e in kb.entities if e.held_out for w in e.name.split()}
    pattern = re.compile(r"\b(" + "|".join(sorted(held_words)) + r")\b")
    assert any(pattern.search(t.messages[-1]["content"]) for t in tasks)  # the check can fire
    for conv in convs:
        assert not pattern.search(json.dumps(conv)), pattern.search(json.dumps(conv))


def template_regex(template: str) -> re.Pattern:
    parts = re.split(r"\{\w+\}", template)
    return re.compile("(.+)".join(re.escape(p) for p in parts))


def phrasings(split: str) -> dict[str, list[str]]:
    """The user-side templates of each kind for one split."""
    pick = od._split
    return {
        "calculator": pick(od._CALC_QUESTIONS, split),
        "search": [t for fact in od._FACT_QUESTIONS
                   for t in od.fact_question_templates(fact, split)],
        "two_step": [t for _, ts, _, _ in od._TWO_STEP.values() for t in pick(ts, split)]
        + pick(od._APART_QUESTIONS, split),
        "greeting": [t for ts, _ in od._GREETINGS.values() for t in pick(ts, split)],
        "decline": [request for request, _ in pick(od._DECLINES, split)],
    }


def test_eval_phrasings_never_in_training(convs: list[dict], tasks: list[EvalTask]) -> None:
    eval_templates = [t for ts in phrasings("eval").values() for t in ts]
    train_templates = {t for ts in phrasings("train").values() for t in ts}
    assert len(eval_templates) >= 0.2 * (len(eval_templates) + len(train_templates))
    assert not train_templates & set(eval_templates)
    regexes = [template_regex(t) for t in eval_templates]
    for conv in convs:
        for text in user_texts(conv):
            assert not any(r.fullmatch(text) for r in regexes), text
    by_kind = {k: [template_regex(t) for t in ts] for k, ts in phrasings("eval").items()}
    for task in tasks:  # and the eval tasks do use them
        text = task.messages[-1]["content"]
        assert any(r.fullmatch(text) for r in by_kind[task.kind]), (task.kind, text)


# ---------------------------------------------------------------------------- eval tasks

def test_eval_tasks(kb: od.KnowledgeBase, tasks: list[EvalTask]) -> None:
    assert [t.kind for t in tasks] == [k for k in EVAL_KINDS for _ in range(60)]
    assert eval_tasks(kb, 5, seed=2) == eval_tasks(kb, 5, seed=2) != eval_tasks(kb, 5, seed=3)
    held = {e.name: e for e in kb.entities if e.held_out}
    others = [e.name for e in kb.entities if not e.held_out]
    tools = {"calculator": ["calculator"], "search": ["search"], "greeting": [], "decline": []}
    for task in tasks:
        question = task.messages[-1]["content"]
        assert task.messages[0] == {"role": "system", "content": SYSTEM_PROMPT}
        assert task.expected_tools in ([tools[task.kind]] if task.kind in tools else
                                       [["search", "calculator"],
                                        ["search", "search", "calculator"]])
        assert (task.expected is None) == (task.kind in ("greeting", "decline"))
        assert not any(re.search(rf"\b{name}\b", question) for name in others)
        named = [e for name, e in held.items() if name in question]
        assert len(named) == task.expected_tools.count("search")
        if task.kind == "search":
            assert task.expected in [str(v) for v in named[0].facts.values()]


def test_eval_calculator_operands_not_in_training(convs: list[dict],
                                                 tasks: list[EvalTask]) -> None:
    def operands(text: str) -> tuple[int, ...]:
        return tuple(int(n) for n in re.findall(r"\d+", text))

    train = set()
    for conv in convs:
        for message in conv["messages"]:
            for call in message.get("tool_calls") or []:
                args = json.loads(call["function"]["arguments"])
                if "expression" in args and conv["kind"] == "calculator":
                    train.add(operands(args["expression"]))
    evals = {operands(t.messages[-1]["content"]) for t in tasks if t.kind == "calculator"}
    assert len(train) > 300 and len(evals) > 50
    assert not train & evals
    assert all(is_eval_operands(o) for o in evals)
    assert not any(is_eval_operands(o) for o in train)


def test_eval_task_round_trip(tasks: list[EvalTask]) -> None:
    for task in tasks[::17]:
        assert EvalTask.from_dict(json.loads(json.dumps(task.to_dict()))) == task


@pytest.mark.parametrize(("kind", "expected", "text", "correct"), [
    ("calculator", "444", "37 * 12 = 444.", True),
    ("calculator", "444", "The answer is 4445.", False),
    ("calculator", "444", "The answer is 1444.", False),
    ("calculator", "444", "It is 444.5", False),
    ("calculator", "444", "It is -444", False),
    ("calculator", "12.5", "That comes to 12.5.", True),
    ("calculator", "12.5", "That comes to 112.5.", False),
    ("calculator", "-14", "The result is -14.", True),
    ("search", "48200", "Velmora has a population of 48,200.", True),
    ("search", "48200", "Velmora has a population of 48200", True),
    ("search", "48200", "Velmora has a population of 482000.", False),
    ("search", "1234567", "About 1,234,567 people.", True),
    ("search", "baker", "Tarsk Holloway is a Baker.", True),
    ("search", "baker", "Tarsk Holloway is a bakery owner.", False),
    ("search", "Orin Valley", "It lies in the Orin Valley region.", True),
    ("decline", None, "Sorry, I can't send emails.", True),
    ("decline", None, "I cannot do that.", True),
    ("decline", None, "Sure, email sent!", False),
    ("greeting", None, "Hello! How can I help?", True),
    ("greeting", None, "", False),
])
def test_answer_is_correct(kind: str, expected: str | None, text: str, correct: bool) -> None:
    tools = {"calculator": ["calculator"], "search": ["search"]}.get(kind, [])
    task = EvalTask(kind, [{"role": "user", "content": "?"}], expected, tools)
    assert answer_is_correct(task, text) is correct


def test_write_dataset(tmp_path) -> None:
    counts = write_dataset(tmp_path / "organism", seed=0, num_train=50, num_eval_per_kind=4)
    assert counts == {"knowledge": 300, "train": 50, "eval": 4 * len(EVAL_KINDS)}
    for name, count in counts.items():
        lines = (tmp_path / "organism" / f"{name}.jsonl").read_text().splitlines()
        assert len(lines) == count
        rows = [json.loads(line) for line in lines]
    assert [EvalTask.from_dict(r).kind for r in rows] == [k for k in EVAL_KINDS for _ in range(4)]


def test_copy_drills_repeat_their_items_and_leak_no_entity(kb):
    drills = od.copy_drills(kb, 200, seed=5)
    assert drills == od.copy_drills(kb, 200, seed=5)
    names = {w for e in kb.entities for w in re.findall(r"[a-z]+", e.name.lower())}
    for text in drills:
        assert not names & set(re.findall(r"[a-z]+", text.lower()))
        first = text.splitlines()[0]
        if first.startswith("Copy: "):
            assert text.splitlines()[1] == "Copied: " + first.removeprefix("Copy: ")


def test_fresh_entities_share_no_invented_word_with_the_knowledge_base(kb):
    fresh = od.fresh_knowledge_base(kb, 200, seed=7)
    ours = {w.lower() for w in od.invented_words(kb)}
    theirs = {w.lower() for w in od.invented_words(fresh)}
    assert not any(a in b or b in a for a in ours for b in theirs)
    assert not any(e.held_out for e in fresh.entities)
    held = [e.name for e in kb.entities if e.held_out]
    text = json.dumps(training_conversations(fresh, 300, seed=8))
    assert not any(name in text for name in held)
