"""The OpenAI-compatible HTTP server (`llmsys serve`); needs the `serve` extra.

    from llmsys.serve import BackgroundServer, ServerConfig
    with BackgroundServer(ServerConfig(model="path/to/checkpoint", port=0)) as server:
        ...  # any OpenAI client at server.base_url

Files: config.py (ServerConfig), server.py (uvicorn, signals, BackgroundServer), app.py
(routes, auth, limits, errors), chat.py and completions.py (the two generation endpoints),
serving.py (what they share), async_engine.py (the engine loop thread), sampling.py (request
-> SamplingParams), tool_parsers.py, protocol.py (request/response models), metrics.py,
errors.py. See docs/server.md.
"""

from llmsys.serve.config import ServerConfig
from llmsys.serve.server import BackgroundServer, run_server

__all__ = ["BackgroundServer", "ServerConfig", "run_server"]
