"""fleetlm: fast, self-hostable inference for compound AI systems.

The offline API mirrors vLLM: `LLM(model).generate(prompts, SamplingParams(...))`. Both are
imported on first use, so `import fleetlm` (and `fleet --help`) does not load torch."""

__all__ = ["LLM", "SamplingParams"]


def __getattr__(name: str):
    if name == "LLM":
        from fleetlm.engine.llm import LLM

        return LLM
    if name == "SamplingParams":
        from fleetlm.engine.sampling_params import SamplingParams

        return SamplingParams
    raise AttributeError(f"module 'fleetlm' has no attribute {name!r}")
