"""Optional kernels: native CPU ones compiled once per machine with the local C++ compiler,
and Triton ones for CUDA (triton_paged.py).

`load_paged_decode(build_root)` returns the CPU paged decode-attention op and
`load_lora_bgmv(build_root)` the batched multi-LoRA op, or None when they cannot be built (no
compiler, no ninja): the engine then uses its pure-PyTorch paths, which give the same results
more slowly. Builds are keyed by the source, the torch version and
the CPU model (the code is compiled for the host's instruction set), and cached on disk.
`attention_kernels(...)` picks the (decode, prompt-chunk) attention kernels for a backend,
device and dtype.
"""

from __future__ import annotations

import hashlib
import logging
import platform
import time
from pathlib import Path

import torch

log = logging.getLogger("fleetlm.kernels")

def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


STALE_LOCK_S = 300.0  # a build takes 20-60 s; a lock this old was left by a process killed mid-build


def clear_stale_lock(build_dir: Path, max_age_s: float = STALE_LOCK_S) -> bool:
    """Remove torch's build lock if it is older than `max_age_s`: a process killed while it
    held the lock leaves it behind, and every later load would wait on it forever."""
    lock = Path(build_dir) / "lock"
    try:
        if time.time() - lock.stat().st_mtime <= max_age_s:
            return False
        lock.unlink()
    except FileNotFoundError:
        return False
    log.warning("removed a stale kernel build lock %s (left by a process stopped mid-build)", lock)
    return True


def load_paged_decode(build_root: Path, *, progress=print):
    """The compiled op `paged_decode_attention(q, k_cache, v_cache, block_tables, ctx_lens,
    window, scale)`, or None if it cannot be built here."""
    return _load("paged_decode", "paged_decode_attention", "CPU paged-attention kernel", build_root, progress)


def load_lora_bgmv(build_root: Path, *, progress=print):
    """The compiled op `lora_bgmv(x, a, bt, slots, y)` (y += per-row LoRA product, in place),
    or None if it cannot be built here."""
    return _load("lora_bgmv", "lora_bgmv", "CPU multi-LoRA kernel", build_root, progress)


def _load(stem: str, function: str, what: str, build_root: Path, progress):
    src = Path(__file__).with_name(f"{stem}.cpp").read_text()
    key = hashlib.sha256(f"{src}|{torch.__version__}|{_cpu_model()}".encode()).hexdigest()[:16]
    build_dir = Path(build_root) / f"{stem}-{key}"
    build_dir.mkdir(parents=True, exist_ok=True)
    clear_stale_lock(build_dir)
    fresh = not any(build_dir.glob("*.so"))
    try:
        from torch.utils.cpp_extension import load_inline

        if fresh and progress:
            progress(f"fleetlm: compiling the {what} (one-time, about a minute)...")
        t0 = time.monotonic()
        module = load_inline(
            name=f"fleetlm_{stem}_{key}", cpp_sources=[src], functions=[function],
            extra_cflags=["-O3", "-march=native", "-fopenmp"], extra_ldflags=["-fopenmp"],
            build_directory=str(build_dir), verbose=False)
        if fresh and progress:
            progress(f"fleetlm: kernel ready in {time.monotonic() - t0:.0f} s (cached in {build_dir})")
        return getattr(module, function)
    except Exception as exc:  # noqa: BLE001 - any build failure means "use the torch path"
        log.warning("%s unavailable (%s); using the PyTorch path", what, exc)
        return None


def load_triton_paged():
    """The `triton_paged` module (Triton paged attention), or None where triton does not import."""
    try:
        from fleetlm.engine.kernels import triton_paged
    except Exception as exc:  # noqa: BLE001 - not installed, or a triton that fails to initialise
        log.info("Triton paged attention unavailable (%s)", exc)
        return None
    return triton_paged


def attention_kernels(backend: str, device: torch.device, dtype: torch.dtype, build_root: Path,
                      *, progress=print) -> tuple:
    """(decode kernel, chunk kernel) for `backend` (EngineConfig.attention_backend) on `device`;
    None for either means PyTorch SDPA. Raises RuntimeError when a forced kernel is unavailable.

    auto: the CPU decode kernel on CPU (fp32/bf16), Triton decode + chunk kernels on CUDA when
    triton imports. triton: the Triton kernels, on CUDA, or on a CPU when they were imported
    under TRITON_INTERPRET=1 (Triton's interpreter: the tests' way to run them without a GPU)."""
    if backend == "torch":
        return None, None
    if backend == "triton" or (backend == "auto" and device.type == "cuda"):
        module = load_triton_paged()
        if module is not None and (device.type == "cuda" or module.INTERPRETED):
            if backend == "auto" and not _triton_runs(module, device, dtype):
                return None, None
            return module.paged_decode_attention, module.paged_chunk_attention
        if backend == "triton":
            why = "triton is not installed (pip install 'fleetlm[gpu]')" if module is None else \
                f"the Triton kernels need a CUDA device, not {device.type} (or TRITON_INTERPRET=1)"
            raise RuntimeError(f"attention_backend='triton' but {why}")
        log.warning("triton does not import: attention on %s uses PyTorch SDPA over gathered blocks", device)
        return None, None
    if device.type != "cpu" or dtype not in (torch.float32, torch.bfloat16):
        return None, None
    kernel = load_paged_decode(build_root, progress=progress)
    if kernel is None and backend == "cpu_kernel":
        raise RuntimeError("attention_backend='cpu_kernel' but the kernel could not be built")
    return kernel, None


def _triton_runs(module, device: torch.device, dtype: torch.dtype) -> bool:
    """Compile and run both Triton kernels once at their largest tiles (head_dim 256), so that a
    machine where Triton cannot compile (no C compiler for its launcher, an unsupported GPU)
    falls back to SDPA at start-up instead of failing in the first step."""
    try:
        q = torch.zeros(1, 1, 8, 256, dtype=dtype, device=device)
        cache = torch.zeros(2, 16, 1, 256, dtype=dtype, device=device)
        table = torch.zeros(1, 2, dtype=torch.long, device=device)
        module.paged_decode_attention(q, cache, cache, table, torch.ones(1, dtype=torch.long, device=device), 0, 1.0)
        module.paged_chunk_attention(q[0].transpose(0, 1), cache, cache, table[0], 0, 0, 1.0)
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # a fault in the kernels shows here, not in a later step
        return True
    except Exception as exc:  # noqa: BLE001 - any failure here means "use SDPA"
        log.warning("Triton paged attention does not run here (%s); using PyTorch SDPA", exc)
        return False
