"""The agent's model: any OpenAI-compatible chat endpoint, through the official `openai` client.

    model = ChatModel("http://127.0.0.1:8000/v1", "llmsys-tiny-chat")
    reply = model.complete([{"role": "user", "content": "hi"}], max_tokens=64)
    reply.message, reply.usage, reply.latency_s

`llmsys serve`, vLLM, Ollama and hosted APIs all work. Prices (per million tokens) turn
usage into cost; the client retries transient failures itself (`max_retries`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    calls: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def add(self, other: Usage) -> None:
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.calls += other.calls

    def to_dict(self) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.total_tokens, "calls": self.calls}


@dataclass
class ModelReply:
    message: dict  # the assistant message: role, content, tool_calls (OpenAI shape)
    usage: Usage
    finish_reason: str | None
    latency_s: float


class ModelError(RuntimeError):
    """The endpoint failed (after the client's retries) or rejected the request."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


@dataclass
class ChatModel:
    base_url: str
    model: str
    api_key: str = "none"
    temperature: float = 0.0
    max_tokens: int = 512  # per call
    timeout_s: float = 120.0
    max_retries: int = 2
    prompt_price: float = 0.0  # currency units per million prompt tokens
    completion_price: float = 0.0
    _client: object = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got "
                             f"{self.base_url!r}")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.prompt_price < 0 or self.completion_price < 0:
            raise ValueError("prices must be >= 0")

    @property
    def client(self):
        if self._client is None:
            try:
                import openai
            except ImportError as e:
                raise ImportError("the agent needs the openai client: "
                                  "pip install 'llmsys[agent]'") from e
            self._client = openai.OpenAI(base_url=self.base_url, api_key=self.api_key,
                                         timeout=self.timeout_s, max_retries=self.max_retries)
        return self._client

    def cost(self, usage: Usage) -> float:
        return (usage.prompt_tokens * self.prompt_price
                + usage.completion_tokens * self.completion_price) / 1e6

    def complete(self, messages: list[dict], *, max_tokens: int | None = None,
                 timeout_s: float | None = None, extra: dict | None = None) -> ModelReply:
        """One chat completion. `extra` holds the tool protocol's fields (tools, tool_choice,
        response_format, stop)."""
        import openai

        t0 = time.perf_counter()
        try:
            response = self.client.chat.completions.create(
                model=self.model, messages=messages, temperature=self.temperature,
                max_tokens=max_tokens or self.max_tokens,
                timeout=timeout_s if timeout_s is not None else self.timeout_s, **(extra or {}))
        except openai.APIStatusError as e:
            raise ModelError(f"{self.base_url} answered {e.status_code}: {_error_text(e)}",
                             e.status_code) from None
        except openai.APIError as e:  # connection errors and timeouts, after the retries
            raise ModelError(f"{self.base_url}: {type(e).__name__}: {e}") from None
        choice = response.choices[0]
        message = choice.message.model_dump(exclude_none=True)
        message.setdefault("content", None)
        usage = Usage(calls=1)
        if response.usage is not None:
            usage.prompt_tokens = response.usage.prompt_tokens or 0
            usage.completion_tokens = response.usage.completion_tokens or 0
        return ModelReply(message, usage, choice.finish_reason, time.perf_counter() - t0)


def _error_text(error) -> str:
    body = getattr(error, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
    return str(error)
