"""llmsys: the whole LLM agent stack in one readable Python package.

    from llmsys import LLM, SamplingParams
"""

from llmsys.llm import LLM  # noqa: E402
from llmsys.outputs import CompletionOutput, Logprob, RequestOutput
from llmsys.sampling_params import SamplingParams, StructuredOutputsParams

__all__ = ["LLM", "SamplingParams", "StructuredOutputsParams", "RequestOutput",
           "CompletionOutput", "Logprob"]
__version__ = "0.1.0"
