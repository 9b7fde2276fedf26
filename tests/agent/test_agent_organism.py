"""End to end: the agent, with the bundled model behind `llmsys serve`, on the held-out tool
tasks. It must do at least as well as the direct server evaluation of the same tasks (the
same requests, plus a last call at the step limit) and stay inside its token budget."""

from __future__ import annotations

from llmsys.serve.config import ServerConfig
from llmsys.serve.server import BackgroundServer
from llmsys.train.organism import BUNDLED_NAME, DEFAULT_OUT
from llmsys.train.organism_data import eval_tasks, make_knowledge_base
from llmsys.train.organism_eval import evaluate, evaluate_agent


def test_agent_matches_the_direct_evaluation_within_budget() -> None:
    kb = make_knowledge_base(0)
    tasks = [t for t in eval_tasks(kb, 6, seed=2) if t.kind in
             ("calculator", "search", "two_step")]
    config = ServerConfig(model=str(DEFAULT_OUT), port=0, served_model_name=BUNDLED_NAME,
                          dtype="float32")
    with BackgroundServer(config) as server:
        direct = evaluate(server.base_url, BUNDLED_NAME, tasks, kb, progress=False)
        agent = evaluate_agent(server.base_url, BUNDLED_NAME, tasks, kb, progress=False,
                               max_total_tokens=4096)
    for kind, scores in direct["kinds"].items():
        assert agent["kinds"][kind]["accuracy"] >= scores["accuracy"], (kind, agent, direct)
    assert agent["kinds"]["calculator"]["accuracy"] >= 0.8
    assert agent["valid_tool_call_rate"] >= 0.9
    assert 0 < agent["max_task_tokens"] <= 4096
