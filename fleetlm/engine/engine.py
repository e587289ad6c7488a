"""`LLMEngine`: the synchronous core. `step()` is schedule -> run -> update.

Contract: the engine knows nothing about HTTP or threads. `make_request` validates and
tokenizes (pure, safe from any thread) and raises typed errors before anything is queued;
`add` queues a validated request; `step` advances every running sequence by one scheduled
chunk and returns the outputs of the requests it touched; `abort` frees a request's KV
blocks at once. `AsyncLLM` (async_engine.py) runs this core on a thread.
"""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fleetlm.config import EngineConfig
from fleetlm.engine.cpu_memory import bound_onednn_caches, keep_freed_memory_in_heap
from fleetlm.engine.detokenizer import IncrementalDetokenizer
from fleetlm.engine.errors import InvalidRequestError, PromptTooLongError, RequestFailedError
from fleetlm.engine.kv_cache import KVCacheManager
from fleetlm.engine.loader import load_model
from fleetlm.engine.model_runner import ModelRunner, kv_bytes_per_block
from fleetlm.engine.outputs import CompletionOutput, RequestMetrics, RequestOutput
from fleetlm.engine.sampling import sample
from fleetlm.engine.sampling_params import SamplingParams
from fleetlm.engine.scheduler import Scheduler
from fleetlm.engine.sequence import Sequence
from fleetlm.engine.speculative import NgramProposer, verify


@dataclass(eq=False)
class Request:
    request_id: str
    prompt: str | None
    prompt_ids: list[int]
    params: SamplingParams
    max_tokens: int  # params.max_tokens clamped to the context left after the prompt
    lora: object | None = None  # lora.AdapterWeights serving it; None: the base model
    seqs: list[Sequence] = field(default_factory=list)
    detoks: list[IncrementalDetokenizer] = field(default_factory=list)
    arrival_time: float = field(default_factory=time.monotonic)
    finished_time: float | None = None

    @property
    def finished(self) -> bool:
        return all(s.finished for s in self.seqs)


class LLMEngine:
    def __init__(self, config: EngineConfig):
        from fleetlm.models.embedded import resolve_model_path

        self.config = config
        bound_onednn_caches()
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        path = resolve_model_path(config.model, cache_dir=config.cache_dir)
        self.loaded = load_model(path, dtype=config.dtype, device=config.device,
                                 max_model_len=config.max_model_len, quantization=config.quantization,
                                 quantization_group_size=config.quantization_group_size)
        self.tokenizer = self.loaded.tokenizer
        self._fast_tok = getattr(self.tokenizer, "backend_tokenizer", None) or self.tokenizer._tokenizer
        self.max_model_len = self.loaded.max_model_len
        self.vocab_size = self.loaded.hf_config.vocab_size
        bs = config.block_size
        per_block = kv_bytes_per_block(self.loaded.model, bs, self.loaded.dtype)
        # never more blocks than max_num_seqs full-length sequences could use
        cap = config.max_num_seqs * -(-self.max_model_len // bs)
        num_blocks = config.num_kv_blocks or min(cap, int(config.kv_cache_memory_gb * 2**30 // per_block))
        if num_blocks * bs < self.max_model_len:
            raise ValueError(f"KV cache of {num_blocks} blocks x {bs} tokens cannot hold one "
                             f"{self.max_model_len}-token sequence; raise kv_cache_memory_gb")
        self.kv = KVCacheManager(num_blocks=num_blocks, block_size=bs,
                                 enable_prefix_caching=config.enable_prefix_caching)
        self.lora_pool = self._lora_pool() if config.enable_lora else None
        self.scheduler = Scheduler(self.kv, max_num_seqs=config.max_num_seqs,
                                   max_num_batched_tokens=config.max_num_batched_tokens,
                                   lora_pool=self.lora_pool, proposer=self._proposer(),
                                   max_model_len=self.max_model_len)
        decode_kernel, chunk_kernel = self._attention_kernels()
        self.runner = ModelRunner(self.loaded.model, num_blocks=num_blocks, block_size=bs,
                                  dtype=self.loaded.dtype, device=self.loaded.device, decode_kernel=decode_kernel,
                                  chunk_kernel=chunk_kernel, lora_pool=self.lora_pool)
        self.gen = torch.Generator(device=self.loaded.device).manual_seed(config.seed)
        if config.tune_malloc and self.loaded.device.type == "cpu":
            # only now: the load-time temporaries (fp32 weights) went back to the OS
            keep_freed_memory_in_heap()
        self.requests: dict[str, Request] = {}
        self.failed: list[tuple[str, RequestFailedError]] = []  # (request id, why), ended in the last steps
        self._grammar = None
        self._grammar_lock = threading.Lock()
        self._seq_ids = itertools.count()
        self._req_ids = itertools.count()

    def _proposer(self) -> NgramProposer | None:
        cfg = self.config
        if cfg.speculative is None:
            return None
        return NgramProposer(cfg.num_draft_tokens, max_batch=cfg.speculative_max_batch)

    def _lora_pool(self):
        from fleetlm.engine.lora import LoRAPool, attach_lora, projection_shapes

        model = self.loaded.model
        pool = LoRAPool(projection_shapes(model), max_loras=self.config.max_loras,
                        max_rank=self.config.max_lora_rank, dtype=self.loaded.dtype, device=self.loaded.device)
        attach_lora(model, pool)
        if self.loaded.device.type == "cpu" and self.loaded.dtype in (torch.float32, torch.bfloat16):
            from fleetlm.engine.kernels import load_lora_bgmv
            from fleetlm.models.embedded import default_cache_dir

            root = Path(self.config.cache_dir) if self.config.cache_dir else default_cache_dir()
            pool.kernel = load_lora_bgmv(root / "kernels")
        return pool

    def _attention_kernels(self) -> tuple:
        """(decode, chunk) paged-attention kernels for this backend and device; None: SDPA."""
        from fleetlm.engine.kernels import attention_kernels
        from fleetlm.models.embedded import default_cache_dir

        cfg = self.config
        root = (Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir()) / "kernels"
        return attention_kernels(cfg.attention_backend, self.loaded.device, self.loaded.dtype, root)

    # ---- requests --------------------------------------------------------------------
    def make_request(self, prompt: str | list[int], params: SamplingParams | None = None, *,
                     request_id: str | None = None, lora_request=None) -> Request:
        """Validate and tokenize; raises InvalidRequestError / PromptTooLongError, and
        LoRAError / LoRANotFoundError for an adapter that cannot be served (lora_request:
        a `lora.LoRARequest`, or None for the base model)."""
        params = params or SamplingParams()
        if not isinstance(params, SamplingParams):
            raise InvalidRequestError("params must be a SamplingParams", param="sampling_params")
        text = prompt if isinstance(prompt, str) else None
        if text is not None:
            if not text:
                raise InvalidRequestError("prompt must not be empty", param="prompt")
            ids = self.tokenizer(text).input_ids
        else:
            ids = [int(t) for t in prompt]
            bad = [t for t in ids if not 0 <= t < self.vocab_size]
            if bad:
                raise InvalidRequestError(f"token id {bad[0]} is outside the vocabulary "
                                          f"[0, {self.vocab_size})", param="prompt")
        if not ids:
            raise InvalidRequestError("prompt must not be empty", param="prompt")
        if len(ids) >= self.max_model_len:
            raise PromptTooLongError(len(ids), self.max_model_len)
        room = self.max_model_len - len(ids)
        max_tokens = room if params.max_tokens is None else min(params.max_tokens, room)
        if params.structured is not None:
            self.grammar().compile(params.structured)  # invalid schema: GrammarError (400) now
        lora = None
        if lora_request is not None:
            if self.lora_pool is None:
                raise InvalidRequestError("this engine was started without LoRA support "
                                          "(EngineConfig.enable_lora)", param="model")
            lora = self.lora_pool.check(lora_request)
        rid = request_id if request_id is not None else f"req-{next(self._req_ids)}"
        return Request(rid, text, ids, params, max_tokens, lora=lora)

    def grammar(self):
        """The engine's grammar compiler, built on first use (its tokenizer table takes a few
        seconds for a 262k vocabulary). Safe to call from the API thread."""
        with self._grammar_lock:
            if self._grammar is None:
                from fleetlm.engine.structured import GrammarCompiler

                self._grammar = GrammarCompiler(self.tokenizer, self.vocab_size, self.loaded.eos_token_ids)
            return self._grammar

    def add(self, req: Request) -> None:
        """Queue a validated request: one sequence per completion (n), siblings after the first."""
        if req.request_id in self.requests:
            raise InvalidRequestError(f"duplicate request id {req.request_id!r}", param="request_id")
        p = req.params
        for i in range(p.n):
            gen = None
            if p.seed is not None:
                gen = torch.Generator(device=self.loaded.device).manual_seed(p.seed * 1_000_003 + i)
            seq = Sequence(next(self._seq_ids), req.request_id, i, list(req.prompt_ids), len(req.prompt_ids),
                           p, generator=gen, wait_for=req.seqs[0] if i else None,
                           arrival_time=req.arrival_time, lora=req.lora,
                           cache_salt=req.lora.cache_salt if req.lora is not None else b"")
            if p.structured is not None:
                seq.matcher = self.grammar().matcher(p.structured)
            req.seqs.append(seq)
            req.detoks.append(IncrementalDetokenizer(
                self._fast_tok, req.prompt_ids, skip_special_tokens=p.skip_special_tokens,
                stop=p.stop, include_stop=p.include_stop_str_in_output))
            self.scheduler.add(seq)
        self.requests[req.request_id] = req

    def add_request(self, request_id: str, prompt: str | list[int], params: SamplingParams | None = None) -> None:
        self.add(self.make_request(prompt, params, request_id=request_id))

    def abort(self, request_id: str) -> RequestOutput | None:
        """Stop a request now and free all its KV blocks; returns its final output."""
        req = self.requests.pop(request_id, None)
        if req is None:
            return None
        for seq in req.seqs:
            if not seq.finished:
                self.scheduler.finish(seq, "abort")
        req.finished_time = time.monotonic()
        return self._output(req)

    def has_unfinished_requests(self) -> bool:
        return bool(self.requests)

    # ---- the step --------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        sched = self.scheduler.schedule()
        if not sched:
            return []
        logits, sampling_seqs = self.runner.execute(sched)
        verifying: dict[Sequence, torch.Tensor] = {}
        if any(s.draft_ids for s in sched.seqs):
            logits, sampling_seqs, verifying = self._split_drafts(logits, sampling_seqs)
        tokens, logprobs = [], []
        if sampling_seqs:
            try:
                tokens, logprobs = sample(logits, sampling_seqs, self.gen)
            except Exception:  # noqa: BLE001 - find the row that fails; only its request ends
                sampling_seqs, tokens, logprobs = self._sample_apart(logits, sampling_seqs)
        return self._update(sched, sampling_seqs, tokens, logprobs, verifying)

    @staticmethod
    def _split_drafts(logits, seqs) -> tuple[torch.Tensor, list[Sequence], dict[Sequence, torch.Tensor]]:
        """Rows of sequences verifying drafts (several consecutive rows each) apart from the
        one-row-per-sequence rest, which is sampled as a batch."""
        plain, verifying, i = [], {}, 0
        while i < len(seqs):
            seq = seqs[i]
            n = 1 + len(seq.draft_ids)
            if seq.draft_ids:
                verifying[seq] = logits[i : i + n]
            else:
                plain.append(i)
            i += n
        rows = torch.tensor(plain, dtype=torch.long, device=logits.device)
        return logits.index_select(0, rows), [seqs[i] for i in plain], verifying

    def _sample_apart(self, logits: torch.Tensor, seqs: list[Sequence]) -> tuple[list, list, list]:
        """Sample row by row after the batch failed: a row that fails again ends its request
        (`failed`); the others get their tokens. Only taken when something is already wrong."""
        kept, tokens, logprobs = [], [], []
        for i, seq in enumerate(seqs):
            if seq.request_id not in self.requests:
                continue  # a sibling failed a moment ago
            try:
                tok, lp = self._sample_one(logits[i : i + 1], seq)
            except Exception as exc:  # noqa: BLE001
                self._fail(seq.request_id, exc)
                continue
            kept.append(seq)
            tokens.append(tok)
            logprobs.append(lp)
        return kept, tokens, logprobs

    def _fail(self, request_id: str, exc: Exception) -> None:
        """End one request for the engine's own failure on it (blocks freed at once)."""
        self.abort(request_id)
        self.failed.append((request_id, RequestFailedError(
            f"the engine failed on this request: {type(exc).__name__}: {exc}")))

    def _update(self, sched, sampling_seqs, tokens, logprobs, verifying) -> list[RequestOutput]:
        for seq, n in zip(sched.seqs, sched.num_new_tokens):
            if seq.finished or seq in verifying:
                # finished: ended by a failure while sampling this step (its blocks are free);
                # verifying: _verify commits only the tokens its drafts kept
                continue
            seq.num_computed_tokens += n
            self.kv.cache_computed_blocks(seq)
            if seq.num_computed_tokens >= seq.prompt_len:
                seq.prompt_computed = True
        now = time.monotonic()
        touched: dict[str, Request] = {}
        for seq, tok, lp in zip(sampling_seqs, tokens, logprobs):
            req = self.requests.get(seq.request_id)
            if req is None:
                continue  # a sibling of this step failed, ending the request
            try:
                self._take_token(seq, req, tok, lp, now)
            except Exception as exc:  # noqa: BLE001 - this request's failure must not stop the others
                self._fail(req.request_id, exc)
                touched.pop(req.request_id, None)
                continue
            touched[req.request_id] = req
        for seq, rows in verifying.items():
            req = self.requests.get(seq.request_id)
            if req is None:  # a sibling failed this step
                seq.draft_ids = []
            elif self._verify(seq, req, rows, now):
                touched[req.request_id] = req
        outputs = []
        for req in touched.values():
            if req.finished:
                req.finished_time = now
                del self.requests[req.request_id]
            outputs.append(self._output(req))
        return outputs

    def _verify(self, seq: Sequence, req: Request, rows: torch.Tensor, now: float) -> bool:
        """Take seq's verified tokens (speculative.verify) and commit the drafts it kept;
        False when the request failed on the way (it is then ended)."""
        drafted = len(seq.draft_ids)
        try:
            accepted = verify(seq, rows, self._sample_one, lambda s, tok, lp: self._take_token(s, req, tok, lp, now))
        except Exception as exc:  # noqa: BLE001 - as for a plain row: only this request ends
            self._fail(req.request_id, exc)
            return False
        finally:
            seq.draft_ids = []
        self.scheduler.proposer.feedback(seq, drafted, accepted)
        if not seq.finished:  # its last token and the accepted drafts are now in the cache
            seq.num_computed_tokens += 1 + accepted
            self.kv.cache_computed_blocks(seq)
        return True

    def _sample_one(self, row: torch.Tensor, seq: Sequence) -> tuple[int, object]:
        """One sequence's token (and logprob entry) from one row (1, V) of logits."""
        (tok,), (lp,) = sample(row, [seq], self.gen)
        return tok, lp

    def _take_token(self, seq: Sequence, req: Request, tok: int, lp, now: float) -> None:
        """Append a sampled token to seq: grammar, logprobs, text, and whether it finishes."""
        seq.token_ids.append(tok)
        if seq.matcher is not None:
            seq.matcher.accept(tok)
        if seq.first_token_time is None:
            seq.first_token_time = now
        if lp is not None:
            seq.logprobs.append(lp)
        p = seq.params
        eos = not p.ignore_eos and tok in self.loaded.eos_token_ids
        stop_id = tok in p.stop_token_ids
        # a matched stop token's text is left out unless asked for (as vLLM does)
        keep_text = not (eos or stop_id) or p.include_stop_str_in_output
        stop_str = req.detoks[seq.index].add(tok) if keep_text else None
        reason = self._finish_reason(seq, req, tok, eos=eos, stop_id=stop_id, stop_str=stop_str)
        if reason is not None:
            self.scheduler.finish(seq, reason)

    def _finish_reason(self, seq: Sequence, req: Request, tok: int, *, eos: bool, stop_id: bool,
                       stop_str: str | None) -> str | None:
        """Why seq stops after sampling tok (setting seq.stop_reason), or None to go on."""
        if eos or stop_id:
            seq.stop_reason = None if eos else tok
            return "stop"
        if stop_str is not None:
            seq.stop_reason = stop_str
            return "stop"
        if seq.matcher is not None and seq.matcher.is_finished():
            return "stop"  # the document is complete; nothing but EOS could follow
        if seq.num_output_tokens >= req.max_tokens or seq.num_tokens >= self.max_model_len:
            return "length"
        return None

    def _output(self, req: Request) -> RequestOutput:
        outs = []
        for seq, detok in zip(req.seqs, req.detoks):
            outs.append(CompletionOutput(
                index=seq.index, text=detok.visible_text(seq.finished), token_ids=seq.output_ids,
                finish_reason=seq.finish_reason, stop_reason=seq.stop_reason,
                logprobs=list(seq.logprobs) if seq.params.logprobs is not None else None))
        first = [s.first_token_time for s in req.seqs if s.first_token_time is not None]
        metrics = RequestMetrics(req.arrival_time, min(first) if first else None, req.finished_time)
        return RequestOutput(req.request_id, req.prompt, req.prompt_ids, outs, req.finished,
                             num_cached_tokens=req.seqs[0].num_cached_prompt_tokens, metrics=metrics)
