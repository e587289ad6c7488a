"""Weight-only quantized linears: int8 per output channel, int4 in groups along the input.

Single-stream decode reads every weight once per token, so its speed is bounded by bytes
read; storing weights in 8 or 4 bits reads 2x or 4x fewer bytes than bf16. Activations stay
in the model dtype; only the weights are narrow.

Contract:
- `quantize_int8` / `quantize_int4` turn a full-precision weight (N, K) into integer codes
  plus scales (and zeros) stored in the compute dtype; `dequantize_int8` / `dequantize_int4`
  are their exact inverses, the reference the modules are held to: a module's output equals
  `F.linear(x, dequantized weight)` up to the compute dtype's rounding.
- `Int8Linear` / `Int4Linear` are drop-in inference replacements for an nn.Linear: same
  `in_features` / `out_features`, forward (..., K) -> (..., N) in the compute dtype. On CPU
  they run torch's weight-only kernels (`_weight_int8pack_mm`, `_weight_int4pack_mm_for_cpu`,
  the ones gpt-fast and torchao use); elsewhere (CUDA, or a torch without the kernels) they
  dequantize the weight in slices and run `F.linear`: the same numbers and the memory saved,
  no speed gained.
- `quantize_model(model, mode, group_size=...)` replaces every projection of a fused model's
  decoder layers and its LM head. A tied LM head gets its own quantized copy; the input
  embedding keeps the model dtype. Call it after fusion, before oneDNN packing
  (`CausalLM.finalize` does).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

MODES = ("int8", "int4")
GROUP_SIZES = (32, 64, 128, 256)  # what the CPU int4 kernel accepts
DEFAULT_GROUP_SIZE = 64
# Above this many rows per call (long prefill chunks) the CPU int8 kernel, which re-reads the
# weight for every few rows, loses to dequantizing the weight and running oneDNN's GEMM on it
# (measured, bf16, 2 cores: see docs/quantization.md). Decode batches stay on the kernel.
INT8_KERNEL_MAX_ROWS = 32
SLICE_ELEMENTS = 1 << 23  # weight elements dequantized at once on the dense path (16 MiB bf16)
ROW_CHUNK = 8192  # weight rows quantized at once


# ---- quantization (pure functions) --------------------------------------------------------

def _by_rows(quantize):
    """Quantize ROW_CHUNK rows at a time: the fp32 temporaries of a 262k-row LM head would
    otherwise take ~2 GB at load."""

    @functools.wraps(quantize)
    def wrapper(w: torch.Tensor, *args):
        parts = [quantize(w[i : i + ROW_CHUNK], *args) for i in range(0, w.shape[0], ROW_CHUNK)]
        return tuple(torch.cat(p) for p in zip(*parts))

    return wrapper


@_by_rows
def quantize_int8(w: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """w (N, K) -> (codes (N, K) int8, scales (N,) in `dtype`); w ~= codes * scales[:, None].

    Symmetric, one scale per output row (absmax / 127). The scale is rounded to `dtype` first
    and the codes computed against the rounded scale, so storing it narrow adds no error."""
    w = w.detach().float()
    scales = (w.abs().amax(dim=1) / 127).to(dtype)
    scales = torch.where(scales > 0, scales, torch.ones_like(scales))  # an all-zero row: codes 0
    codes = (w / scales.float()[:, None]).round().clamp(-128, 127).to(torch.int8)
    return codes, scales


def dequantize_int8(codes: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """The fp32 weight (N, K) that (codes, scales) stand for."""
    return codes.float() * scales.float()[:, None]


@_by_rows
def quantize_int4(w: torch.Tensor, group_size: int,
                  dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """w (N, K) -> (codes (N, K) uint8 in 0..15, scales (N, K/G), zeros (N, K/G) in `dtype`);
    w ~= (codes - 8) * scale + zero within each group of G inputs.

    Asymmetric min/max per group; `zero` is the value of the middle code 8, the convention of
    torch's int4 kernels. Scales and zeros are rounded to `dtype` before the codes are chosen."""
    n, k = w.shape
    if k % group_size:
        raise ValueError(f"int4: in_features {k} is not a multiple of the group size {group_size}")
    g = w.detach().float().reshape(n, k // group_size, group_size)
    lo, hi = g.amin(dim=-1), g.amax(dim=-1)
    # a constant group (hi == lo) still needs a scale that keeps its value exact
    scales = torch.where(hi > lo, (hi - lo) / 15, lo.abs() / 8)
    scales = scales.to(dtype)
    scales = torch.where(scales > 0, scales, torch.ones_like(scales))
    zeros = (lo + scales.float() * 8).to(dtype)
    codes = ((g - zeros.float()[..., None]) / scales.float()[..., None] + 8).round().clamp(0, 15)
    return codes.to(torch.uint8).reshape(n, k), scales, zeros


def dequantize_int4(codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor) -> torch.Tensor:
    """The fp32 weight (N, K) that (codes, scales, zeros) stand for."""
    n, k = codes.shape
    groups = scales.shape[1]
    q = codes.float().reshape(n, groups, k // groups) - 8
    return (q * scales.float()[..., None] + zeros.float()[..., None]).reshape(n, k)


# ---- kernels ------------------------------------------------------------------------------

@functools.cache
def cpu_kernel_available(mode: str, dtype: torch.dtype) -> bool:
    """torch's CPU kernel for `mode` exists in this build and runs with `dtype` activations
    (checked once on a tiny weight against the dequantized reference)."""
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        return False
    w, x = torch.randn(32, 64), torch.randn(2, 64, dtype=dtype)
    try:
        if mode == "int8":
            mod = Int8Linear(*quantize_int8(w, dtype), kernel=True)
            ref = F.linear(x.float(), dequantize_int8(mod.codes, mod.scales))
        else:
            codes, scales, zeros = quantize_int4(w, 32, dtype)
            mod = Int4Linear(codes, scales, zeros, kernel=True)
            ref = F.linear(x.float(), dequantize_int4(codes, scales, zeros))
        return bool(torch.allclose(mod(x).float(), ref, atol=0.1, rtol=0.02))
    except (RuntimeError, AttributeError, NotImplementedError):
        return False


class _QuantLinear(nn.Module):
    """Shared forward: the CPU kernel where it runs, else dequantized slices through F.linear."""

    in_features: int
    out_features: int
    bias: torch.Tensor | None
    kernel: bool  # CPU weight-only kernel usable for this module's dtype
    kernel_max_rows: int | None = None  # more rows than this take the dense path (None: never)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, self.in_features).to(self.dtype)
        limit = self.kernel_max_rows
        if self.kernel and (limit is None or x2.shape[0] <= limit):
            y = self._kernel_mm(x2.contiguous())
        else:
            y = self._dense_mm(x2)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features)

    def _dense_mm(self, x2: torch.Tensor) -> torch.Tensor:
        """x2 (M, K) @ W^T with W dequantized a slice of output rows at a time, so that the
        full weight never exists in the model dtype (the LM head would be 335 MB in bf16)."""
        n = self.out_features
        step = max(16, SLICE_ELEMENTS // self.in_features)
        if step >= n:
            return F.linear(x2, self.dequantize_rows(0, n))
        y = x2.new_empty(x2.shape[0], n)
        for start in range(0, n, step):
            stop = min(n, start + step)
            y[:, start:stop] = F.linear(x2, self.dequantize_rows(start, stop))
        return y

    @property
    def dtype(self) -> torch.dtype:
        return self.scales.dtype

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, kernel={self.kernel}"


class Int8Linear(_QuantLinear):
    """Linear with int8 weights, one scale per output channel."""

    kernel_max_rows = INT8_KERNEL_MAX_ROWS

    def __init__(self, codes: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None = None, *,
                 kernel: bool | None = None):
        """codes (N, K) int8, scales (N,) in the compute dtype (see `quantize_int8`); kernel:
        None picks the CPU kernel where it runs (CPU tensors, a dtype it supports)."""
        super().__init__()
        self.out_features, self.in_features = codes.shape
        self.register_buffer("codes", codes.contiguous())
        self.register_buffer("scales", scales.contiguous())
        self.register_buffer("bias", None if bias is None else bias.detach().to(scales.dtype).clone())
        if kernel is None:
            kernel = codes.device.type == "cpu" and cpu_kernel_available("int8", scales.dtype)
        self.kernel = kernel

    @classmethod
    def from_linear(cls, linear: nn.Module) -> Int8Linear:
        w = linear.weight.detach()
        return cls(*quantize_int8(w, w.dtype), linear.bias)

    def _kernel_mm(self, x2: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten._weight_int8pack_mm(x2, self.codes, self.scales)

    def dequantize_rows(self, start: int, stop: int) -> torch.Tensor:
        """Rows start:stop of the weight in the compute dtype (codes up to 127 are exact in
        bf16, so one rounding, of the product)."""
        return self.codes[start:stop].to(self.dtype) * self.scales[start:stop, None]


class Int4Linear(_QuantLinear):
    """Linear with int4 weights, a scale and zero per group of `group_size` inputs.

    Stored as two codes per byte: in the CPU kernel's packed layout where the kernel is used
    (N rounded up to a multiple of 16, as it requires), else in plain nibble pairs. The
    kernel serves every row count: unlike int8's it stays within ~2x of bf16 on long prefill
    chunks, and its packed layout is private to torch (not unpacked here)."""

    def __init__(self, codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                 bias: torch.Tensor | None = None, *, kernel: bool | None = None):
        """codes (N, K) uint8 in 0..15, scales and zeros (N, K/G) in the compute dtype (see
        `quantize_int4`); kernel: as for Int8Linear."""
        super().__init__()
        self.out_features, self.in_features = codes.shape
        self.group_size = self.in_features // scales.shape[1]
        if kernel is None:
            kernel = codes.device.type == "cpu" and cpu_kernel_available("int4", scales.dtype)
        self.kernel = kernel
        self.register_buffer("scales", scales.contiguous())
        self.register_buffer("zeros", zeros.contiguous())
        self.register_buffer("bias", None if bias is None else bias.detach().to(scales.dtype).clone())
        # the dense path reads plain nibbles; the kernel its own layout (and no second copy)
        self.register_buffer("nibbles", None if kernel else codes[:, 1::2] << 4 | codes[:, ::2])
        self.register_buffer("packed", None)
        self.register_buffer("scales_zeros", None)
        if kernel:
            pad = -self.out_features % 16
            padded = F.pad(codes, (0, 0, 0, pad), value=8).to(torch.int32)
            self.packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(padded, 2)
            # (K/G, N_padded, 2): each group's scale and zero side by side, as the kernel reads them
            sz = torch.stack([scales, zeros], dim=-1).transpose(0, 1)
            self.scales_zeros = F.pad(sz, (0, 0, 0, pad)).contiguous()

    @classmethod
    def from_linear(cls, linear: nn.Module, group_size: int) -> Int4Linear:
        w = linear.weight.detach()
        return cls(*quantize_int4(w, group_size, w.dtype), linear.bias)

    def _kernel_mm(self, x2: torch.Tensor) -> torch.Tensor:
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2, self.packed, self.group_size, self.scales_zeros)
        return y if y.shape[1] == self.out_features else y[:, : self.out_features].contiguous()

    def dequantize_rows(self, start: int, stop: int) -> torch.Tensor:
        """Rows start:stop of the weight in the compute dtype (dense path: no kernel here)."""
        b = self.nibbles[start:stop]
        codes = torch.stack([b & 15, b >> 4], dim=-1).reshape(stop - start, self.in_features)
        return dequantize_int4(codes, self.scales[start:stop], self.zeros[start:stop]).to(self.dtype)


def quantize_model(model: nn.Module, mode: str, *, group_size: int = DEFAULT_GROUP_SIZE) -> int:
    """Replace each decoder layer's nn.Linear projections (q/k/v/o, gate/up/down, fused or
    not) and the LM head by quantized modules; returns how many. The replaced full-precision
    weights are freed (a tied head's weight lives on as the embedding, in the model dtype).

    int4 needs in_features divisible by `group_size`; a projection where it is not is
    quantized to int8 instead."""
    if mode not in MODES:
        raise ValueError(f"quantization must be one of {', '.join(MODES)} (or None), got {mode!r}")
    if group_size not in GROUP_SIZES:
        raise ValueError(f"quantization group size must be one of {GROUP_SIZES}, got {group_size}")
    targets = [(owner, name, child)
               for layer in model.model.layers
               for owner in (layer.self_attn, layer.mlp)
               for name, child in owner.named_children() if isinstance(child, nn.Linear)]
    targets.append((model, "lm_head", model.lm_head))
    for owner, name, linear in targets:
        if mode == "int4" and linear.in_features % group_size == 0:
            quantized = Int4Linear.from_linear(linear, group_size)
        else:
            quantized = Int8Linear.from_linear(linear)
        setattr(owner, name, quantized)
    return len(targets)
