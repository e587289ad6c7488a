"""Incremental detokenization and stop-string matching for one sequence.

Text is decoded from a small sliding window of token ids (with a few tokens of context
before the new ones, so leading spaces of SentencePiece tokens come out right), and nothing
is emitted while the window ends in an incomplete UTF-8 character (U+FFFD). Stop strings:
the text is cut before the first match; while running, the last len(longest stop) - 1
characters are held back so a stop string split across tokens is never streamed."""

from __future__ import annotations

CONTEXT_TOKENS = 5


class IncrementalDetokenizer:
    def __init__(self, tokenizer, prompt_ids: list[int], *, skip_special_tokens: bool,
                 stop: list[str], include_stop: bool):
        self._tok = tokenizer  # a `tokenizers.Tokenizer` (the fast backend)
        self._skip = skip_special_tokens
        self._ids = list(prompt_ids[-CONTEXT_TOKENS:])
        self._prefix = 0
        self._read = len(self._ids)
        self._stop = stop
        self._include_stop = include_stop
        self._holdback = max((len(s) for s in stop), default=1) - 1
        self.text = ""

    def _decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=self._skip)

    def add(self, token_id: int) -> str | None:
        """Append one token; returns the stop string if the text now contains one."""
        self._ids.append(token_id)
        prefix = self._decode(self._ids[self._prefix : self._read])
        full = self._decode(self._ids[self._prefix :])
        if len(full) <= len(prefix) or full.endswith("\ufffd"):
            return None  # an incomplete character: wait for the next token
        new = full[len(prefix) :]
        self._prefix, self._read = self._read, len(self._ids)
        start = max(0, len(self.text) - self._holdback)
        self.text += new
        hits = [(at, s) for s in self._stop if (at := self.text.find(s, start)) != -1]
        if not hits:
            return None
        at, s = min(hits)  # the earliest match wins
        self.text = self.text[: at + len(s)] if self._include_stop else self.text[:at]
        return s

    def visible_text(self, finished: bool) -> str:
        """Text that is safe to show now (everything once finished)."""
        if finished or not self._holdback:
            return self.text
        return self.text[: max(0, len(self.text) - self._holdback)]
