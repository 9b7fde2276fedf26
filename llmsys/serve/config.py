"""`ServerConfig`: what `llmsys serve` is started with (the model, the address, the limits)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

DEFAULT_MAX_BODY_BYTES = 4 << 20  # 4 MiB


@dataclass
class ServerConfig:
    model: str  # checkpoint directory
    host: str = "127.0.0.1"
    port: int = 8000  # 0: any free port
    api_keys: list[str] = field(default_factory=list)  # empty: no authentication
    served_model_name: str | None = None  # None: `model` as given
    # engine
    dtype: str = "auto"
    device: str = "cpu"
    max_model_len: int | None = None
    max_num_seqs: int = 64
    num_kv_blocks: int | None = None
    # limits
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_n: int = 16  # completions per request (`n`, times the prompts of a completion)
    max_concurrent_requests: int = 256  # in flight (running + queued); beyond: 429
    graceful_shutdown_s: float = 30.0  # in-flight requests get this long to end on shutdown

    def __post_init__(self) -> None:
        for name in ("max_num_seqs", "max_body_bytes", "max_n", "max_concurrent_requests"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}={value!r} is invalid: must be an integer >= 1")
        if not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise ValueError(f"port={self.port!r} is invalid: must be in [0, 65535]")
        if self.graceful_shutdown_s < 0:
            raise ValueError(f"graceful_shutdown_s={self.graceful_shutdown_s!r} is invalid: "
                             f"must be >= 0")
        bad = [k for k in self.api_keys if not isinstance(k, str) or not k]
        if bad:
            raise ValueError("api_keys must be non-empty strings")

    @property
    def model_name(self) -> str:
        return self.served_model_name or os.fspath(self.model)
