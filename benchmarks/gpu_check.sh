#!/usr/bin/env bash
# The engine's CUDA checks in one run, about 5 minutes on one H100 (each step has a time limit:
# together at most 450 s, under 8 minutes with the set-up):
#   1. the Triton paged-attention kernels against SDPA, compiled on the GPU, and the engine on
#      CUDA against transformers (tests/engine/test_triton_paged.py, tests/engine/test_cuda.py)
#   2. the rest of tests/engine on CUDA (device "auto": the Triton kernels where triton imports)
#   3. benchmarks/engine_throughput.py --device cuda (fleetlm vs transformers generate, batch 64)
#   4. its --profile mode: where a batch-64 decode step's time goes
# Results land in $OUT (default /tmp/gpu_check): summary.txt, one log per step, and the two
# benchmark tables (engine_throughput_cuda.txt, engine_step_profile_cuda.txt): 7 files.
#
#   OUT=/tmp/out bash benchmarks/gpu_check.sh            # from the repository root, on the GPU machine
#
# Python packages the machine lacks travel as wheels in .whl/ (installed here into /tmp/site);
# the benchmarks' model is gemma-3-270m's shape with random weights: the config.json and
# tokenizer files in $MODEL_DIR (default .gpu/gemma-3-270m) if there, else the config written
# below and a byte-level tokenizer (ids past its 264 decode to nothing: throughput does not
# depend on the text).
# docs/gpu.md says how to prepare both.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_check}
MODEL_DIR=${MODEL_DIR:-.gpu/gemma-3-270m}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD"
if compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
unset TRITON_INTERPRET  # the kernels run compiled here

status=0
step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to $OUT/NAME.txt, note the outcome
    local name=$1 limit=$2
    shift 2
    local t0=$SECONDS
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$OUT/$name.txt"
    local rc=${PIPESTATUS[0]}
    [ "$rc" -eq 0 ] || status=1
    echo "$name: exit $rc after $((SECONDS - t0)) s" | tee -a "$OUT/summary.txt"
}

{
    date -u
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    "$PY" -c 'import sys, torch; print("python", sys.version.split()[0], "torch", torch.__version__,
"cuda", torch.version.cuda, "device", torch.cuda.get_device_name())'
    "$PY" -c 'import triton; print("triton", triton.__version__)' || echo "triton: not importable (SDPA only)"
    for m in transformers tokenizers safetensors llguidance jsonschema peft; do
        "$PY" -c "import $m" 2>/dev/null || echo "missing Python package: $m (carry it as a wheel in .whl/)"
    done
} 2>&1 | tee "$OUT/summary.txt"

step kernels_and_cuda 100 "$PY" -m pytest -q -p no:cacheprovider -rs \
    tests/engine/test_triton_paged.py tests/engine/test_cuda.py
step engine_tests_cuda 110 "$PY" -m pytest -q -p no:cacheprovider -rs tests/engine -m "not slow" \
    --ignore=tests/engine/test_real_gemma.py --ignore=tests/engine/test_triton_paged.py \
    --ignore=tests/engine/test_cuda.py

# one random-weight copy for both benchmarks (initialising 270M weights on the CPU takes a while)
MODEL=/tmp/gemma-3-270m-random
timeout 45 "$PY" - "$MODEL_DIR" "$MODEL" 2>&1 <<'PYEOF' | tee -a "$OUT/summary.txt" || status=1
import shutil
import sys
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, Gemma3TextConfig

from tests.tiny_models import byte_tokenizer

given, folder = Path(sys.argv[1]), Path(sys.argv[2])
if (given / "config.json").exists():
    config = AutoConfig.from_pretrained(given)
else:
    sliding, full = "sliding_attention", "full_attention"
    config = Gemma3TextConfig(  # gemma-3-270m's config.json, the fields that shape the computation
        vocab_size=262144, hidden_size=640, intermediate_size=2048, num_hidden_layers=18,
        num_attention_heads=4, num_key_value_heads=1, head_dim=256, query_pre_attn_scalar=256,
        max_position_embeddings=32768, sliding_window=512, layer_types=([sliding] * 5 + [full]) * 3,
        rope_parameters={full: {"rope_type": "default", "rope_theta": 1e6},
                         sliding: {"rope_type": "default", "rope_theta": 1e4}},
        hidden_activation="gelu_pytorch_tanh", rms_norm_eps=1e-6, tie_word_embeddings=True,
        bos_token_id=2, eos_token_id=[1, 106], pad_token_id=0)
torch.manual_seed(0)
AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).save_pretrained(folder)
tokenizer_files = [f for f in given.glob("*") if f.name.startswith(("tokenizer", "special_tokens"))]
for f in tokenizer_files:
    shutil.copy(f, folder / f.name)
if not tokenizer_files:
    byte_tokenizer().save_pretrained(folder)
print(f"model: {folder}, gemma-3-270m's shape, random weights; config and tokenizer from "
      f"{given if tokenizer_files else 'this script and tests/tiny_models.py (bytes)'}")
PYEOF

step throughput 140 "$PY" benchmarks/engine_throughput.py --device cuda --model "$MODEL" --hf-batch-sizes 64 \
    --budget 8192
cp benchmarks/results/engine_throughput_cuda.txt "$OUT/" 2>/dev/null
step profile 55 "$PY" benchmarks/engine_throughput.py --device cuda --profile --model "$MODEL" --budget 8192
cp benchmarks/results/engine_step_profile_cuda.txt "$OUT/" 2>/dev/null

echo "gpu_check: $([ $status -eq 0 ] && echo all steps passed || echo some steps failed, see above)" \
    | tee -a "$OUT/summary.txt"
exit $status
