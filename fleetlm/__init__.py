"""fleetlm: fast, self-hostable inference for compound AI systems.

The offline API mirrors vLLM: `LLM(model).generate(prompts, SamplingParams(...))`."""

from fleetlm.engine.llm import LLM
from fleetlm.engine.sampling_params import SamplingParams

__all__ = ["LLM", "SamplingParams"]
