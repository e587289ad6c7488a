"""Request traces and length buckets.

Contract: `load_azure_trace(path)` reads the Azure LLM inference trace CSV (TIMESTAMP,
ContextTokens, GeneratedTokens; Patel et al., Splitwise, ISCA 2024) into a `Trace` of
arrival seconds from the first request and token counts. `bucketize` groups requests by
prompt length, and optionally output length (as Mélange does); each `Bucket` carries its
request rate, its mean lengths (for load) and the 90th percentile of each length inside it
(for latency). The gateway only knows a prompt's length when it routes, so plans route on
prompt buckets by default (no output edges). `bucket_of` maps any (prompt, output) to its bucket index,
which is also what the gateway uses at run time.
"""

from __future__ import annotations

import bisect
import csv
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from fleetlm.config import shared_data

DEFAULT_PROMPT_EDGES = (256, 512, 1024, 2048, 3072, 4096, 6144)  # bucket i: edges[i-1] <= prompt < edges[i]
DEFAULT_OUTPUT_EDGES: tuple[int, ...] = ()  # the gateway cannot know a request's output length


def shared_trace() -> Path:
    """The Azure LLM inference trace (code, 2023) in the public data folder."""
    return shared_data("traces", "azure_llm_inference_2023_code.csv")


@dataclass(frozen=True)
class Trace:
    arrival_s: np.ndarray  # (N,) seconds since the first request, non-decreasing
    prompt: np.ndarray  # (N,) prompt tokens
    output: np.ndarray  # (N,) generated tokens

    def __len__(self) -> int:
        return len(self.prompt)

    @property
    def duration_s(self) -> float:
        return float(self.arrival_s[-1] - self.arrival_s[0]) if len(self) > 1 else 0.0

    def scaled(self, rate_scale: float) -> "Trace":
        """The same requests arriving `rate_scale` times faster (compressed in time)."""
        if rate_scale <= 0:
            raise ValueError("rate_scale must be > 0")
        return Trace(self.arrival_s / rate_scale, self.prompt, self.output)

    def head(self, n: int) -> "Trace":
        return Trace(self.arrival_s[:n], self.prompt[:n], self.output[:n])


def _parse_time(s: str) -> float:
    date, _, frac = s.strip().partition(".")
    base = datetime.strptime(date, "%Y-%m-%d %H:%M:%S").timestamp()
    return base + (float("0." + frac) if frac else 0.0)


def load_azure_trace(path: str | Path) -> Trace:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"trace not found: {path}")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        need = {"TIMESTAMP", "ContextTokens", "GeneratedTokens"}
        if not need <= set(reader.fieldnames or []):
            raise ValueError(f"{path}: expected columns {sorted(need)}, got {reader.fieldnames}")
        rows = [(_parse_time(r["TIMESTAMP"]), int(r["ContextTokens"]), int(r["GeneratedTokens"])) for r in reader]
    if not rows:
        raise ValueError(f"{path}: no requests")
    rows.sort()
    t = np.array([r[0] for r in rows])
    return Trace(t - t[0], np.maximum(1, np.array([r[1] for r in rows])),
                 np.maximum(1, np.array([r[2] for r in rows])))


@dataclass(frozen=True)
class Bucket:
    index: int
    prompt_range: tuple[int, int | None]  # [lo, hi) tokens; hi None: unbounded
    output_range: tuple[int, int | None]
    rate: float  # requests per second in the trace
    count: int
    prompt: int  # p90 prompt length inside the bucket
    output: int  # p90 output length inside the bucket
    prompt_mean: float = 0.0
    output_mean: float = 0.0

    @property
    def label(self) -> str:
        def r(lo, hi):
            return f"{lo}+" if hi is None else f"{lo}-{hi}"
        o = "" if self.output_range == (0, None) else f"/o{r(*self.output_range)}"
        return f"p{r(*self.prompt_range)}{o}"


@dataclass(frozen=True)
class Buckets:
    prompt_edges: tuple[int, ...]
    output_edges: tuple[int, ...]
    buckets: list[Bucket]  # non-empty buckets only
    of_request: np.ndarray  # (N,) index into `buckets` for each trace request

    def bucket_of(self, prompt: int, output: int) -> int | None:
        """Index into `buckets` of a request of this size; None if its cell was empty in the trace."""
        cell = (bisect.bisect_right(self.prompt_edges, prompt), bisect.bisect_right(self.output_edges, output))
        for b in self.buckets:
            if _cell(b, self.prompt_edges, self.output_edges) == cell:
                return b.index
        return None


def _cell(b: Bucket, pe, oe) -> tuple[int, int]:
    return bisect.bisect_right(pe, b.prompt_range[0]), bisect.bisect_right(oe, b.output_range[0])


def bucketize(trace: Trace, prompt_edges=DEFAULT_PROMPT_EDGES, output_edges=DEFAULT_OUTPUT_EDGES) -> Buckets:
    pe, oe = tuple(sorted(prompt_edges)), tuple(sorted(output_edges))
    pi = np.searchsorted(pe, trace.prompt, side="right")
    oi = np.searchsorted(oe, trace.output, side="right")
    duration = max(trace.duration_s, 1e-9)
    buckets, of_request = [], np.full(len(trace), -1)
    for i in range(len(pe) + 1):
        for j in range(len(oe) + 1):
            mask = (pi == i) & (oi == j)
            n = int(mask.sum())
            if not n:
                continue
            p_lo, p_hi = (pe[i - 1] if i else 0), (pe[i] if i < len(pe) else None)
            o_lo, o_hi = (oe[j - 1] if j else 0), (oe[j] if j < len(oe) else None)
            b = Bucket(len(buckets), (p_lo, p_hi), (o_lo, o_hi), n / duration, n,
                       int(np.percentile(trace.prompt[mask], 90)), int(np.percentile(trace.output[mask], 90)),
                       float(trace.prompt[mask].mean()), float(trace.output[mask].mean()))
            of_request[mask] = b.index
            buckets.append(b)
    return Buckets(pe, oe, buckets, of_request)
