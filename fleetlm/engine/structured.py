"""Structured output: grammars enforced while decoding (OpenAI `response_format`, later tools).

A request's `StructuredOutput` is compiled once per engine by `GrammarCompiler` (LRU-cached
by the spec) and each sequence that decodes under it gets its own `GrammarMatcher`. Every
step the sampler calls `apply_masks(logits, matchers)`, which sets the logits of tokens the
grammar forbids to -inf, and after sampling the engine calls `matcher.accept(token)`.

Library: llguidance (https://github.com/guidance-ai/llguidance), chosen over xgrammar by
`benchmarks/grammar_backends.py` on the Gemma 3 tokenizer (262k ids, 2 CPU cores). The mask
per token, paid every decode step, is a tie on a nested schema (5.2 vs 6.0 us warm, p99 14.7
vs 23.2 us) and llguidance leads on json_object (5.6 vs 13.3 us); compiling, paid on the
first token of every new schema, is 20-35x faster (0.8 / 1.4 ms vs 27 / 30 ms). On Gemma
xgrammar also lets control tokens (<start_of_turn>, <pad>, <unusedN>) appear inside JSON
strings and drops compact separators inside schema-less objects. llguidance's cost is its
tokenizer build, 2.6-4 s for Gemma's vocabulary (xgrammar 0.7-1.2 s), once per engine and
off the request path with `GrammarCompiler.prepare`.

Whitespace policy: JSON is compact -- no whitespace between tokens, separators "," and ":"
(llguidance `whitespace_flexible: False`). Free whitespace is where a small model loops
("\\n\\n\\n..." until max_tokens); compact output cannot. Whitespace inside strings is data
and stays allowed. Strings are still unbounded, so `max_tokens` is the only length limit;
when it hits, the JSON is truncated (finish_reason "length"), as with OpenAI.

EOS: while the document is incomplete no EOS id is allowed; once it may end, the model's EOS
ids (all of `eos_token_ids`) are allowed, and once nothing else can follow (`is_finished()`)
they are the only tokens allowed. Control tokens and padding ids (>= len(tokenizer)) are
never allowed.
"""

from __future__ import annotations

import copy
import json
import threading
from collections import OrderedDict
from dataclasses import dataclass

import llguidance
import torch

from fleetlm.engine.errors import InvalidRequestError

KINDS = ("json_object", "json_schema", "grammar", "regex")

# Compact JSON for every schema; applied as llguidance "overrides" so that a schema's own
# "x-guidance" block cannot turn free whitespace back on.
_JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ",", "key_separator": ":"}


class GrammarError(InvalidRequestError):
    """The schema, grammar or regex cannot be compiled; the message says why."""

    def __init__(self, message: str, *, param: str = "response_format"):
        super().__init__(message, param=param)


class GrammarStateError(RuntimeError):
    """A matcher was given a token its grammar forbids (a masking bug, not a user error)."""


@dataclass(frozen=True)
class StructuredOutput:
    """What a request's output must match. Hashable: it is the compile cache key.

    kind: "json_object" (any JSON object), "json_schema", "grammar" (llguidance Lark, or GBNF),
    or "regex". schema: the JSON text of the schema, or the grammar / regex text; None for
    json_object. Two specs that differ only in schema formatting compile twice (use
    `from_response_format`, which writes schemas in one canonical form)."""

    kind: str
    schema: str | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise GrammarError(f"unknown structured output kind {self.kind!r}; expected one of {KINDS}")
        if self.kind == "json_object" and self.schema is not None:
            raise GrammarError("json_object takes no schema")
        if self.kind != "json_object" and not (isinstance(self.schema, str) and self.schema.strip()):
            raise GrammarError(f"{self.kind} needs its schema/grammar text")

    @classmethod
    def from_response_format(cls, response_format: dict | None) -> StructuredOutput | None:
        """OpenAI `response_format` (as a plain dict) -> spec; None for `{"type": "text"}` or
        no format.

        json_schema: `{"type": "json_schema", "json_schema": {"name": ..., "schema": {...},
        "strict": true}}`. The schema is enforced whatever `strict` says (a constraint we can
        keep for free is better than a hint). Key order is kept: it is the output's order."""
        if response_format is None:
            return None
        kind = response_format.get("type")
        if kind in (None, "text"):
            return None
        if kind == "json_object":
            return cls("json_object")
        if kind == "json_schema":
            body = response_format.get("json_schema")
            schema = body.get("schema") if isinstance(body, dict) else None
            if not isinstance(schema, dict):
                raise GrammarError("response_format.json_schema.schema must be a JSON object")
            return cls("json_schema", json.dumps(schema, separators=(",", ":"), ensure_ascii=False))
        raise GrammarError(f"unknown response_format type {kind!r}; expected text, json_object or json_schema")


@dataclass(frozen=True, eq=False)
class CompiledGrammar:
    """A spec compiled against one tokenizer. `pristine` is an llguidance matcher that never
    consumes a token: llguidance has no separate compiled-grammar object, and deep-copying a
    fresh matcher is its cheap way to start a new sequence (~microseconds)."""

    spec: StructuredOutput
    grammar: str  # llguidance's serialized grammar
    pristine: llguidance.LLMatcher


class GrammarCompiler:
    """One per engine: compiles `StructuredOutput` specs for one tokenizer + vocab.

    `vocab_size` is the model's (logits width); it may exceed len(tokenizer), and the ids past
    the tokenizer are never allowed. `eos_token_ids` are the ids that end a finished document.

    Thread safety: `compile` may be called from the API thread (to reject a bad schema with a
    4xx before queueing) and from the engine thread at once; the cache is locked, compiling
    is not (llguidance releases the GIL while compiling), so two threads racing on one new
    spec may both compile it and the first result is kept. Matchers are per sequence and must
    stay on one thread (the engine's).

    The llguidance tokenizer (a token trie over the whole vocabulary, 2.6-4 s for Gemma's
    262k ids) is built on first use; call `prepare()` at startup, e.g. from a background thread,
    to keep that off the first structured request."""

    def __init__(self, tokenizer, vocab_size: int, eos_token_ids: list[int], *, cache_size: int = 256,
                 mask_threads: int = 1):
        if vocab_size < len(tokenizer):
            raise ValueError(f"vocab_size {vocab_size} is smaller than the tokenizer ({len(tokenizer)} ids)")
        if not eos_token_ids:
            raise ValueError("eos_token_ids must not be empty")
        self.vocab_size = vocab_size
        self.eos_token_ids = list(eos_token_ids)
        self.cache_size = cache_size
        # Threads that fill a batch's masks. 1 fills them one by one on the caller's thread:
        # a warm mask takes ~5-20 us, and waking llguidance's pool cost more than it saved on
        # a 2-core host (8 rows: 36 us one by one, 116 us pooled). Raise it on big hosts
        # serving many constrained rows at once.
        self.mask_threads = mask_threads
        self._hf_tokenizer = tokenizer
        self._ll_tokenizer: llguidance.LLTokenizer | None = None
        self._executor: llguidance.LLExecutor | None = None
        self._cache: OrderedDict[StructuredOutput, CompiledGrammar] = OrderedDict()
        self._lock = threading.Lock()  # guards the cache and the lazy members
        self._build_lock = threading.Lock()  # one tokenizer build at a time

    def prepare(self) -> None:
        """Build the llguidance tokenizer now (idempotent)."""
        self._tokenizer()

    def _tokenizer(self) -> llguidance.LLTokenizer:
        with self._build_lock:
            if self._ll_tokenizer is None:
                self._ll_tokenizer = _ll_tokenizer(self._hf_tokenizer, self.vocab_size, self.eos_token_ids)
            return self._ll_tokenizer

    def fill_bitmasks(self, matchers: list[GrammarMatcher], bitmask: torch.Tensor) -> None:
        """Row k of `bitmask` ((len(matchers), words) int32, contiguous, CPU) <- the next-token
        mask of matchers[k]; with `mask_threads` > 1, filled in parallel."""
        assert bitmask.dtype == torch.int32 and bitmask.is_contiguous() and bitmask.device.type == "cpu"
        assert bitmask.shape == (len(matchers), _words(self.vocab_size))
        if self.mask_threads <= 1 or len(matchers) == 1:
            for k, m in enumerate(matchers):
                m.fill_bitmask(bitmask[k])
            return
        with self._lock:
            if self._executor is None:
                self._executor = llguidance.LLExecutor(self.mask_threads)
        self._executor.unsafe_compute_mask_ptr([(m._ll, k) for k, m in enumerate(matchers)],
                                               bitmask.data_ptr(), bitmask.shape[1] * 4, len(matchers))

    def compile(self, spec: StructuredOutput) -> CompiledGrammar:
        """spec -> compiled grammar, from the cache when seen recently.
        Raises GrammarError (synchronously) when the schema/grammar is invalid."""
        with self._lock:
            hit = self._cache.get(spec)
            if hit is not None:
                self._cache.move_to_end(spec)
                return hit
        grammar = _grammar_text(spec)
        pristine = llguidance.LLMatcher(self._tokenizer(), grammar, log_level=0)
        if pristine.is_error():
            raise GrammarError(f"invalid {_what(spec)}: {pristine.get_error()}")
        compiled = CompiledGrammar(spec, grammar, pristine)
        with self._lock:
            compiled = self._cache.setdefault(spec, compiled)
            self._cache.move_to_end(spec)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return compiled

    def matcher(self, spec: StructuredOutput) -> GrammarMatcher:
        """A fresh per-sequence matcher at the start of the grammar."""
        compiled = self.compile(spec)
        with self._lock:  # deep_copy borrows the shared pristine matcher
            ll = compiled.pristine.deep_copy()
        return GrammarMatcher(ll, self)


class GrammarMatcher:
    """Per-sequence grammar state: which tokens may come next, and the tokens so far.
    Not thread-safe; lives on the engine thread with its sequence."""

    def __init__(self, ll: llguidance.LLMatcher, compiler: GrammarCompiler):
        self._ll = ll
        self.compiler = compiler
        self.vocab_size = compiler.vocab_size

    def fill_bitmask(self, row: torch.Tensor) -> None:
        """Writes the next-token mask into `row`: (ceil(vocab_size / 32),) int32, contiguous,
        on CPU; bit j of word i set <=> token 32 * i + j is allowed."""
        assert row.dtype == torch.int32 and row.is_contiguous() and row.device.type == "cpu"
        assert row.numel() == _words(self.vocab_size)
        self._ll.unsafe_compute_mask_ptr(row.data_ptr(), row.numel() * 4)

    def allowed_mask(self) -> torch.Tensor:
        """(vocab_size,) bool on CPU: the tokens allowed next. Slow path (tests, debugging);
        the sampler uses `apply_masks`."""
        row = torch.empty(_words(self.vocab_size), dtype=torch.int32)
        self.fill_bitmask(row)
        bits = (row.unsqueeze(-1) >> torch.arange(32, dtype=torch.int32)) & 1
        return bits.view(-1)[: self.vocab_size].bool()

    def accept(self, token_id: int) -> None:
        """Advance past `token_id`, which the last mask must have allowed. An EOS id after the
        document is finished is accepted and changes nothing. Raises GrammarStateError
        otherwise (the matcher is then dead: every later mask allows only EOS)."""
        if not self._ll.consume_token(token_id):
            raise GrammarStateError(f"token {token_id} is not allowed by the grammar: {self._ll.get_error()}")

    def valid_prefix(self, tokens: list[int]) -> int:
        """How many leading `tokens` the grammar would accept from here (state unchanged)."""
        return self._ll.validate_tokens(tokens)

    def forced_tokens(self) -> list[int]:
        """The tokens the grammar forces next (nothing else is allowed), possibly none."""
        return self._ll.compute_ff_tokens()

    def is_finished(self) -> bool:
        """True when the document is complete and nothing but EOS can follow."""
        return self._ll.is_stopped() and not self._ll.is_error()

    def is_accepting(self) -> bool:
        """True when the document could end here (it may also go on, e.g. a number's digits)."""
        return self._ll.is_accepting()


def apply_masks(logits: torch.Tensor, matchers: list[GrammarMatcher | None]) -> None:
    """In place: logits (N, V) (fp32, any device) -> -inf where row i's matcher forbids the
    token; rows whose matcher is None are untouched. Allowed logits keep their exact values.

    The masks are filled on CPU (`GrammarCompiler.fill_bitmasks`), copied to the logits'
    device and added as a 0 / -inf bias (on CPU ~90 us per 262k-wide row, ~10x faster than
    masked_fill). Assumes finite logits: +inf plus -inf would be NaN. The one per-batch
    Python loop is over the constrained rows, inside fill_bitmasks."""
    rows = [i for i, m in enumerate(matchers) if m is not None]
    if not rows:
        return
    active = [matchers[i] for i in rows]
    vocab = logits.shape[1]
    if any(m.vocab_size != vocab for m in active):
        raise ValueError(f"logits have {vocab} columns, matchers expect {active[0].vocab_size}")
    bitmask = torch.empty((len(rows), _words(vocab)), dtype=torch.int32, pin_memory=logits.is_cuda)
    active[0].compiler.fill_bitmasks(active, bitmask)
    bias = _bias(bitmask.to(logits.device, non_blocking=True), vocab, logits.dtype)
    if len(rows) == logits.shape[0]:
        logits.add_(bias)
    else:
        logits.index_add_(0, torch.tensor(rows, device=logits.device), bias)


def _bias(bitmask: torch.Tensor, vocab: int, dtype: torch.dtype) -> torch.Tensor:
    """(n, words) int32 bitmask -> (n, vocab) bias, 0 where allowed and -inf elsewhere.
    Looks each byte up in a 256 x 8 table (little-endian words: byte b of a word holds ids
    8b..8b+7), which beats shifting every word 32 times."""
    byte = torch.arange(256, device=bitmask.device).unsqueeze(-1)
    allowed = ((byte >> torch.arange(8, device=bitmask.device)) & 1).bool()
    table = torch.zeros((256, 8), dtype=dtype, device=bitmask.device).masked_fill_(~allowed, float("-inf"))
    bytes_ = bitmask.view(torch.uint8).long()  # (n, words * 4)
    return torch.nn.functional.embedding(bytes_, table).view(bitmask.shape[0], -1)[:, :vocab]


def _words(vocab: int) -> int:
    return (vocab + 31) // 32


def _what(spec: StructuredOutput) -> str:
    return {"json_object": "JSON object grammar", "json_schema": "JSON schema",
            "grammar": "grammar", "regex": "regex"}[spec.kind]


def _grammar_text(spec: StructuredOutput) -> str:
    """spec -> llguidance grammar (serialized). Raises GrammarError for text that is not even
    shaped right (a schema that is not a JSON object, a grammar in no known syntax)."""
    if spec.kind in ("json_object", "json_schema"):
        if spec.kind == "json_object":
            schema = {"type": "object"}
        else:
            try:
                schema = json.loads(spec.schema)
            except json.JSONDecodeError as e:
                raise GrammarError(f"invalid JSON schema: not valid JSON ({e})") from None
            if not isinstance(schema, dict):
                raise GrammarError("invalid JSON schema: the schema must be a JSON object")
        try:
            return llguidance.LLMatcher.grammar_from_json_schema(schema, overrides=_JSON_OPTIONS)
        except ValueError as e:
            raise GrammarError(f"invalid JSON schema: {e}") from None
    if spec.kind == "regex":
        return llguidance.LLMatcher.grammar_from_regex(spec.schema)
    try:  # Lark as is; GBNF (llama.cpp's syntax) is converted to Lark
        return llguidance.grammar_from("grammar", spec.schema)
    except ValueError as e:
        raise GrammarError(f"invalid grammar: {e}") from None


def _ll_tokenizer(tokenizer, vocab_size: int, eos_token_ids: list[int]) -> llguidance.LLTokenizer:
    """HF fast tokenizer -> llguidance tokenizer over `vocab_size` ids (as llguidance.hf does;
    inlined to say why each step is there)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ValueError(f"structured output needs a fast (Rust) tokenizer, got {type(tokenizer).__name__}")
    # Serialize a copy: the JSON carries added tokens from tokenizer_config.json too, and
    # padding/truncation settings must not reach llguidance's own tokenize calls.
    backend = copy.copy(backend)
    backend.no_padding()
    backend.no_truncation()
    return llguidance.LLTokenizer(backend.to_str(), n_vocab=vocab_size, eos_token=list(eos_token_ids))
