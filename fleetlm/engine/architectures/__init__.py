"""Model families the engine runs, keyed by the `architectures` / `model_type` of config.json.

Each family lives in its own module; this dict is the only registry."""

from fleetlm.engine.architectures.gemma3 import Gemma3ForCausalLM
from fleetlm.engine.architectures.llama import LlamaForCausalLM
from fleetlm.engine.architectures.qwen2 import Qwen2ForCausalLM

ARCHITECTURES = {
    "llama": LlamaForCausalLM,
    "qwen2": Qwen2ForCausalLM,
    "gemma3_text": Gemma3ForCausalLM,
}
