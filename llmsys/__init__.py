"""llmsys: the whole LLM agent stack in one readable Python package.

    from llmsys import LLM, SamplingParams

The names below are imported on first use, so `import llmsys.agent` (which needs no torch)
stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_EXPORTS = {"LLM": "llmsys.llm", "SamplingParams": "llmsys.sampling_params",
            "StructuredOutputsParams": "llmsys.sampling_params",
            "RequestOutput": "llmsys.outputs", "CompletionOutput": "llmsys.outputs",
            "Logprob": "llmsys.outputs"}
__all__ = ["LLM", "SamplingParams", "StructuredOutputsParams", "RequestOutput",
           "CompletionOutput", "Logprob"]
__version__ = "0.1.0"

if TYPE_CHECKING:
    from llmsys.llm import LLM
    from llmsys.outputs import CompletionOutput, Logprob, RequestOutput
    from llmsys.sampling_params import SamplingParams, StructuredOutputsParams


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'llmsys' has no attribute {name!r}")
