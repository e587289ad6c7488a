"""Multi-LoRA: many PEFT adapters on one base model, mixed row by row in the same batch.

Contract:
- `LoRARequest(name, path)` names an adapter folder in PEFT's format (`adapter_config.json`
  + `adapter_model.safetensors`). `read_adapter` parses and validates it against the model:
  a missing folder is `LoRANotFoundError`, anything it cannot serve exactly (DoRA, trained
  biases or extra modules, unknown or mis-shaped projections, rank > max_lora_rank) is
  `LoRAError` with the reason; both are raised before a request is queued.
- `LoRAPool` owns `max_loras` slots. Slot 0 is the base model (all-zero weights). For every
  adapted projection it keeps stacked weights A (slots, r, in) and Bt (slots, r, out) (B
  transposed, the adapter's scale folded in), so that one step serves any mix of adapters:
  row t adds Bt[s_t]^T (A[s_t] x_t) with s_t its sequence's slot. On CPU a native kernel
  (kernels/lora_bgmv.cpp) reads each row's weights in place; elsewhere, or if it cannot be
  built, batched torch ops compute the same. The scheduler `acquire`s a slot when it
  admits a sequence (None: every slot is held by running sequences, so the sequence waits)
  and `release`s it when the sequence stops running; free slots are reused least recently
  used first, loading from disk on demand. Adapters of different ranks sit side by side (the
  stacks are as wide as the largest rank loaded; narrower ones are zero-padded).
- `attach_lora(model, pool)` wraps the fused projections of a finalized model; the runner
  calls `pool.set_batch(slots per token)` before each forward (as vLLM's punica wrapper does).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from fleetlm.engine.errors import InvalidRequestError

# projection name -> (fused module attribute, slice index within it)
_PROJECTIONS = {"q_proj": ("self_attn.qkv_proj", 0), "k_proj": ("self_attn.qkv_proj", 1),
                "v_proj": ("self_attn.qkv_proj", 2), "o_proj": ("self_attn.o_proj", 0),
                "gate_proj": ("mlp.gate_up_proj", 0), "up_proj": ("mlp.gate_up_proj", 1),
                "down_proj": ("mlp.down_proj", 0)}
_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.[\w-]+)?\.weight$")


class LoRAError(InvalidRequestError):
    """The adapter exists but cannot be served (corrupt, unsupported or mismatched)."""

    def __init__(self, message: str):
        super().__init__(message, param="model")


class LoRANotFoundError(LoRAError):
    """No adapter folder at the given path."""


@dataclass(frozen=True)
class LoRARequest:
    name: str  # the public name (`base:name` in the API)
    path: str  # PEFT adapter folder


@dataclass(eq=False)  # identity: each parse is its own slot, even under a reused name
class AdapterWeights:
    """A parsed adapter: module key (model.layers.N.self_attn.q_proj) -> (A (r, in), B*scale (out, r))."""

    request: LoRARequest
    rank: int
    cache_salt: bytes  # seeds the prefix-cache hash chain: KV computed under it is its own
    modules: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)


def read_adapter(req: LoRARequest, shapes: dict[str, tuple[int, int]], *, max_rank: int) -> AdapterWeights:
    """Parse and validate a PEFT LoRA folder against the model's projection shapes
    (module key -> (in, out)). Tensors stay fp32 on CPU; the pool casts them."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    root = Path(req.path)
    try:
        found = root.is_dir()
    except OSError as exc:  # not "no such file" (that is False) but, say, a name too long
        raise LoRANotFoundError(f"adapter {req.name!r}: no folder at {req.path[:200]} ({exc.strerror})") from None
    if not found:
        raise LoRANotFoundError(f"adapter {req.name!r}: no folder at {req.path}")
    try:
        cfg = json.loads((root / "adapter_config.json").read_text())
    except (OSError, ValueError) as exc:  # ValueError: not JSON, or not UTF-8
        raise LoRAError(f"adapter {req.name!r}: unreadable adapter_config.json ({exc})") from None
    if not isinstance(cfg, dict):
        raise LoRAError(f"adapter {req.name!r}: adapter_config.json is not a JSON object")
    problems = [
        (cfg.get("peft_type", "LORA") != "LORA", f"peft_type {cfg.get('peft_type')!r} is not LORA"),
        (bool(cfg.get("use_dora")), "DoRA adapters are not supported"),
        (cfg.get("bias", "none") != "none", f"bias={cfg.get('bias')!r} (trained biases) is not supported"),
        (bool(cfg.get("modules_to_save")), "modules_to_save (fully trained extra modules) is not supported"),
        (bool(cfg.get("fan_in_fan_out")), "fan_in_fan_out=True is not supported"),
    ]
    for bad, why in problems:
        if bad:
            raise LoRAError(f"adapter {req.name!r}: {why}")
    try:
        blob = (root / "adapter_model.safetensors").read_bytes()
        tensors = load(blob)
    except (OSError, SafetensorError) as exc:
        raise LoRAError(f"adapter {req.name!r}: unreadable adapter_model.safetensors ({exc})") from None
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        m = _KEY.match(key)
        if m is None:
            raise LoRAError(f"adapter {req.name!r}: unexpected tensor {key!r}; only LoRA A/B weights of "
                            f"q/k/v/o/gate/up/down projections can be served")
        pairs.setdefault(m["module"], {})[m["ab"]] = t.float()
    if not pairs:
        raise LoRAError(f"adapter {req.name!r}: no LoRA weights in adapter_model.safetensors")
    salt = hashlib.blake2b(json.dumps(cfg, sort_keys=True).encode() + blob, digest_size=16).digest()
    out = AdapterWeights(req, rank=0, cache_salt=salt)
    for module, ab in pairs.items():
        if module not in shapes:
            raise LoRAError(f"adapter {req.name!r}: module {module!r} is not an adaptable projection "
                            f"of this model (q/k/v/o/gate/up/down_proj of a layer)")
        if set(ab) != {"A", "B"}:
            raise LoRAError(f"adapter {req.name!r}: {module} lacks lora_{'A' if 'A' not in ab else 'B'}")
        a, b = ab["A"], ab["B"]
        (d_in, d_out), r = shapes[module], a.shape[0]
        if a.ndim != 2 or b.ndim != 2 or a.shape[1] != d_in or b.shape != (d_out, r):
            raise LoRAError(f"adapter {req.name!r}: {module} has A {tuple(a.shape)}, B {tuple(b.shape)}; "
                            f"this model needs A (r, {d_in}) and B ({d_out}, r)")
        if r > max_rank:
            raise LoRAError(f"adapter {req.name!r}: rank {r} > max_lora_rank {max_rank}")
        if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
            raise LoRAError(f"adapter {req.name!r}: {module} has non-finite weights")
        alpha = _pattern_value(cfg.get("alpha_pattern") or {}, module, cfg.get("lora_alpha", r))
        scale = alpha / (r**0.5 if cfg.get("use_rslora") else r)
        out.modules[module] = (a, b * scale)
        out.rank = max(out.rank, r)
    return out


def _pattern_value(patterns: dict, module: str, default):
    """PEFT's per-module override: a key matches a module name ending with it."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?{key}$", module):
            return value
    return default


class LoRABatch:
    """One step's row -> slot mapping, and the batched LoRA product for it."""

    GATHER_MIN_UNIQUE = 4  # torch path: with more distinct adapters than this, gather per row

    def __init__(self, slots: torch.Tensor, kernel=None):
        self.slots = slots  # (T,) int64
        self.kernel = kernel  # kernels.load_lora_bgmv() op, or None
        self.rows = None
        if kernel is None:
            unique = torch.unique(slots).tolist()
            if len(unique) <= self.GATHER_MIN_UNIQUE:  # few adapters: one matmul pair each
                self.rows = {s: (slots == s).nonzero().squeeze(1) for s in unique if s != 0}

    def add_to(self, y: torch.Tensor, x: torch.Tensor, a: torch.Tensor, bt: torch.Tensor) -> None:
        """y (T, out) += each row's LoRA product; x (T, in), a (S, r, in), bt (S, r, out)."""
        if self.kernel is not None:
            self.kernel(x.contiguous(), a, bt, self.slots, y)
        elif self.rows is not None:
            for s, rows in self.rows.items():
                y.index_add_(0, rows, (x.index_select(0, rows) @ a[s].t()) @ bt[s])
        else:
            shrink = torch.bmm(a.index_select(0, self.slots), x.unsqueeze(-1))  # (T, r, 1)
            y += torch.bmm(shrink.transpose(1, 2), bt.index_select(0, self.slots)).squeeze(1)


class LoRAPool:
    def __init__(self, shapes: dict[str, tuple[int, int]], *, max_loras: int, max_rank: int,
                 dtype: torch.dtype, device: torch.device):
        self.shapes = shapes  # module key -> (in, out)
        self.max_loras, self.max_rank = max_loras, max_rank
        self.dtype, self.device = dtype, device
        self.rank = 0  # current width of the stacks
        self.stacks: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # module -> (A, Bt)
        self.kernel = None  # native CPU op (kernels.load_lora_bgmv), set by the engine
        self.slot_of: OrderedDict[AdapterWeights, int] = OrderedDict()  # LRU order, oldest first
        self.refs = [0] * (max_loras + 1)  # running sequences per slot
        self.batch: LoRABatch | None = None
        self._parsed: OrderedDict[LoRARequest, AdapterWeights] = OrderedDict()
        self._lock = threading.Lock()  # check/unload come from API threads

    # ---- validation (any thread) -------------------------------------------------------
    def check(self, req: LoRARequest) -> AdapterWeights:
        """Parse + validate (raises LoRAError / LoRANotFoundError). The same object is
        returned for the same request until `unload`, so its slot is shared."""
        with self._lock:
            if req in self._parsed:
                self._parsed.move_to_end(req)
                return self._parsed[req]
        weights = read_adapter(req, self.shapes, max_rank=self.max_rank)
        with self._lock:
            weights = self._parsed.setdefault(req, weights)
            while len(self._parsed) > self.max_loras:
                self._parsed.popitem(last=False)
        return weights

    def unload(self, name: str) -> None:
        """Forget adapters called `name`: later `check`s read them from disk again. Sequences
        already holding their weights finish with them; idle slots are freed now."""
        with self._lock:
            for req in [r for r in self._parsed if r.name == name]:
                del self._parsed[req]
            for w in [w for w, s in self.slot_of.items() if w.request.name == name and self.refs[s] == 0]:
                self._clear(self.slot_of.pop(w))

    # ---- slots (engine thread) ---------------------------------------------------------
    def acquire(self, weights: AdapterWeights | None) -> int | None:
        """A slot holding `weights` (0: the base model), or None when every slot is held by
        running sequences."""
        if weights is None:
            return 0
        with self._lock:
            slot = self.slot_of.get(weights)
            fresh = slot is None
            if fresh:
                slot = self._free_slot()
                if slot is None:
                    return None
            self.slot_of[weights] = slot
            self.slot_of.move_to_end(weights)
            self.refs[slot] += 1
        if fresh:
            self._write(slot, weights)
        return slot

    def release(self, slot: int) -> None:
        if slot:
            with self._lock:
                self.refs[slot] -= 1

    def set_batch(self, slots: torch.Tensor | None) -> None:
        """Per-token slots of the next forward (None: no adapter rows this step)."""
        self.batch = None if slots is None else LoRABatch(slots, self.kernel)

    def _free_slot(self) -> int | None:
        used = set(self.slot_of.values())
        for s in range(1, self.max_loras + 1):
            if s not in used:
                return s
        for w, s in self.slot_of.items():  # least recently used among the idle ones
            if self.refs[s] == 0:
                del self.slot_of[w]
                return s
        return None

    def _clear(self, slot: int) -> None:
        for a, bt in self.stacks.values():
            a[slot].zero_()
            bt[slot].zero_()

    def _write(self, slot: int, w: AdapterWeights) -> None:
        """Copy an adapter into `slot` of every stack (growing the stacks' rank if needed)."""
        if w.rank > self.rank:
            self._grow(w.rank)
        self._clear(slot)
        for module, (a, b) in w.modules.items():
            if module not in self.stacks:
                d_in, d_out = self.shapes[module]
                n = self.max_loras + 1
                self.stacks[module] = (torch.zeros(n, self.rank, d_in, dtype=self.dtype, device=self.device),
                                       torch.zeros(n, self.rank, d_out, dtype=self.dtype, device=self.device))
            sa, sbt = self.stacks[module]
            r = a.shape[0]
            sa[slot, :r].copy_(a)
            sbt[slot, :r].copy_(b.t())

    def _grow(self, rank: int) -> None:
        for module, (a, bt) in list(self.stacks.items()):
            na = a.new_zeros(a.shape[0], rank, a.shape[2])
            nbt = bt.new_zeros(bt.shape[0], rank, bt.shape[2])
            na[:, : self.rank].copy_(a)
            nbt[:, : self.rank].copy_(bt)
            self.stacks[module] = (na, nbt)
        self.rank = rank


class LoRALinear(nn.Module):
    """A (fused) projection plus the batched LoRA deltas of its parts (q|k|v, gate|up, ...)."""

    def __init__(self, base: nn.Module, parts: list[tuple[str, int, int]], pool: LoRAPool):
        super().__init__()
        self.base = base
        self.parts = parts  # (module key, output offset, output size)
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        batch = self.pool.batch
        if batch is None:
            return y
        for key, off, size in self.parts:
            stack = self.pool.stacks.get(key)
            if stack is not None:
                batch.add_to(y[:, off : off + size], x, *stack)
        return y


def projection_shapes(model: nn.Module) -> dict[str, tuple[int, int]]:
    """Adaptable module keys (HF names) -> (in, out) for a finalized model."""
    shapes = {}
    for i, layer in enumerate(model.model.layers):
        for name, (attr, part) in _PROJECTIONS.items():
            shapes[f"model.layers.{i}.{attr.split('.')[0]}.{name}"] = _part_shape(layer, name, attr, part)
    return shapes


def _part_shape(layer, name: str, attr: str, part: int) -> tuple[int, int]:
    owner, fused = attr.split(".")
    mod = getattr(getattr(layer, owner), fused)
    d_in = mod.in_features
    return d_in, _part_sizes(layer, attr)[part]


def _part_sizes(layer, attr: str) -> list[int]:
    owner, fused = attr.split(".")
    mod = getattr(getattr(layer, owner), fused)
    if fused == "qkv_proj":
        att = layer.self_attn
        return [att.n_heads * att.head_dim, att.n_kv * att.head_dim, att.n_kv * att.head_dim]
    if fused == "gate_up_proj":
        return [mod.out_features // 2] * 2
    return [mod.out_features]


def attach_lora(model: nn.Module, pool: LoRAPool) -> None:
    """Wrap every fused projection of a finalized model in a LoRALinear bound to `pool`."""
    for i, layer in enumerate(model.model.layers):
        for attr in ("self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj"):
            owner_name, fused = attr.split(".")
            owner = getattr(layer, owner_name)
            names = [n for n, (a, _) in _PROJECTIONS.items() if a == attr]
            sizes = _part_sizes(layer, attr)
            offsets = [sum(sizes[:k]) for k in range(len(sizes))]
            parts = [(f"model.layers.{i}.{owner_name}.{n}", off, size)
                     for n, off, size in zip(names, offsets, sizes)]
            setattr(owner, fused, LoRALinear(getattr(owner, fused), parts, pool))
