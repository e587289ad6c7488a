"""Batch tensors in, logits out. Owns the KV-cache tensors (one (k, v) pair per layer,
each (num_blocks, block_size, num_kv_heads, head_dim)).

`prepare_inputs` is the only per-batch Python loop of a step: it flattens the scheduled
sequences into one ragged token batch (no padding) and builds the attention metadata.
Logits are computed only at the rows that sample this step — with a 262k-token vocabulary
the LM head costs more than the rest of the model, so prompt positions must not pay it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fleetlm.engine.attention import AttentionMetadata, ChunkRow, DecodeRows, kv_context_mask
from fleetlm.engine.scheduler import SchedulerOutput
from fleetlm.engine.sequence import Sequence


@dataclass
class ModelInputs:
    input_ids: torch.Tensor  # (T,) int64
    positions: torch.Tensor  # (T,) int64
    meta: AttentionMetadata
    logit_rows: torch.Tensor  # (N,) int64, rows of the flat batch whose next token is sampled
    # (N,) the sequences those rows belong to; a sequence with drafts has 1 + len(drafts)
    # consecutive rows, one per position it verifies
    sampling_seqs: list[Sequence]
    lora_slots: torch.Tensor | None = None  # (T,) int64 adapter slot per token; None: all base


def kv_bytes_per_block(model: torch.nn.Module, block_size: int, dtype: torch.dtype) -> int:
    layers, n_kv, head_dim = model.kv_shape
    return 2 * layers * block_size * n_kv * head_dim * torch.empty((), dtype=dtype).element_size()


class ModelRunner:
    def __init__(self, model: torch.nn.Module, *, num_blocks: int, block_size: int,
                 dtype: torch.dtype, device: torch.device, decode_kernel=None, chunk_kernel=None,
                 lora_pool=None):
        self.model = model
        self.lora_pool = lora_pool  # lora.LoRAPool whose LoRALinear wrappers are in the model
        self.decode_kernel = decode_kernel  # paged decode attention (CPU or Triton), or None: PyTorch path
        self.chunk_kernel = chunk_kernel  # paged prompt-chunk attention (Triton), or None: PyTorch path
        self.block_size = block_size
        self.device = device
        self.windows = model.windows  # layer type -> sliding window or None
        layers, n_kv, head_dim = model.kv_shape
        shape = (num_blocks, block_size, n_kv, head_dim)
        self.caches = [(torch.zeros(shape, dtype=dtype, device=device),
                        torch.zeros(shape, dtype=dtype, device=device)) for _ in range(layers)]

    def prepare_inputs(self, sched: SchedulerOutput) -> ModelInputs:
        bs, dev = self.block_size, self.device
        ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        chunks: list[ChunkRow] = []
        dec_index, dec_tables, dec_pos = [], [], []
        logit_rows, sampling = [], []
        lora_slots: list[int] = []
        any_lora = any(s.lora_slot for s in sched.seqs)  # else skip the per-token slot list
        for seq, n in zip(sched.seqs, sched.num_new_tokens):
            start, c = len(ids), seq.num_computed_tokens
            if any_lora:
                lora_slots.extend([seq.lora_slot] * n)
            ids.extend(seq.token_ids[c : c + n])
            ids.extend(seq.draft_ids)
            pos = range(c, c + n)
            positions.extend(pos)
            table = seq.block_ids
            slots.extend(table[p // bs] * bs + p % bs for p in pos)
            if n == 1 or seq.draft_ids:
                # a decode, or a decode with drafts: each token is its own query row over the
                # paged cache (their keys are written first, so each sees exactly its prefix)
                for p in pos:
                    dec_index.append(start + p - c)
                    dec_tables.append(table[: p // bs + 1])
                    dec_pos.append(p)
            else:
                chunks.append(self._chunk_row(start, c, n, table))
            if seq.draft_ids:  # logits at every position: the engine verifies the drafts
                logit_rows.extend(range(start, start + n))
                sampling.extend([seq] * n)
            elif c + n == seq.num_tokens:
                logit_rows.append(start + n - 1)
                sampling.append(seq)
        decode = self._decode_rows(dec_index, dec_tables, dec_pos) if dec_index else None
        as_long = lambda xs: torch.tensor(xs, dtype=torch.long, device=dev)  # noqa: E731
        meta = AttentionMetadata(slot_mapping=as_long(slots), chunks=chunks, decode=decode)
        lora = as_long(lora_slots) if any_lora else None
        return ModelInputs(as_long(ids), as_long(positions), meta, as_long(logit_rows), sampling, lora)

    def _chunk_row(self, start: int, computed: int, n: int, table: list[int]) -> ChunkRow:
        nb = -(-(computed + n) // self.block_size)
        bt = torch.tensor(table[:nb], dtype=torch.long, device=self.device)
        if self.chunk_kernel is not None:
            return ChunkRow(start, start + n, computed, bt, kernel=self.chunk_kernel, windows=self.windows)
        q_pos = torch.arange(computed, computed + n, device=self.device)
        masks = {}
        for layer_type, window in self.windows.items():
            if computed == 0 and (window is None or n <= window):
                masks[layer_type] = None  # plain causal over the chunk itself
            else:
                masks[layer_type] = kv_context_mask(q_pos, computed + n, window)
        return ChunkRow(start, start + n, computed, bt, masks)

    def _decode_rows(self, index: list[int], tables: list[list[int]], pos: list[int]) -> DecodeRows:
        width = max(len(t) for t in tables)
        padded = [t + [0] * (width - len(t)) for t in tables]
        q_pos = torch.tensor(pos, dtype=torch.long, device=self.device)
        rows = DecodeRows(torch.tensor(index, dtype=torch.long, device=self.device),
                          torch.tensor(padded, dtype=torch.long, device=self.device),
                          ctx_lens=q_pos + 1, windows=self.windows, kernel=self.decode_kernel)
        if self.decode_kernel is None:
            rows.masks = {lt: kv_context_mask(q_pos, width * self.block_size, w)[:, None, None, :]
                          for lt, w in self.windows.items()}
        return rows

    @torch.inference_mode()
    def execute(self, sched: SchedulerOutput) -> tuple[torch.Tensor, list[Sequence]]:
        """Run one step -> (logits (N, vocab) of the sampling rows, their sequences)."""
        inp = self.prepare_inputs(sched)
        if self.lora_pool is not None:
            self.lora_pool.set_batch(inp.lora_slots)
        hidden = self.model(inp.input_ids, inp.positions, self.caches, inp.meta)
        if not inp.sampling_seqs:
            return hidden.new_empty((0, 0), dtype=torch.float32), []
        logits = self.model.compute_logits(hidden.index_select(0, inp.logit_rows))
        return logits, inp.sampling_seqs
