"""The lean BERT forward the embedder uses on CPU equals `transformers`' BertModel."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertModel

from fleetlm.models.bert_fast import FastBert
from fleetlm.models.embeddings import Embedder


def _batch(lens, vocab, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.zeros(len(lens), max(lens), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lens):
        ids[i, :n] = torch.randint(1, vocab, (n,), generator=g)
        mask[i, :n] = 1
    return ids, mask


def _check(model, lens):
    ids, mask = _batch(lens, model.config.vocab_size)
    with torch.inference_mode():
        want = model(input_ids=ids, attention_mask=mask).last_hidden_state
        got = FastBert(model)(ids, mask)
    real = mask.bool()  # padded positions are don't-care (mean pooling masks them out)
    assert got.shape == want.shape
    assert torch.allclose(got[real], want[real], atol=2e-5), (got - want)[real].abs().max()


@pytest.mark.parametrize("lens", [[1], [42], [42, 3, 17], [64] * 4])
def test_matches_transformers_on_random_bert(lens):
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=500, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=128, max_position_embeddings=128)
    _check(BertModel(cfg).eval(), lens)


def test_matches_transformers_on_minilm():
    _check(Embedder()._model, [42, 7, 19])


def test_unsupported_models_are_refused():
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=64, hidden_act="relu")
    model = BertModel(cfg).eval()
    assert not FastBert.supports(model)
    with pytest.raises(ValueError, match="FastBert needs"):
        FastBert(model)
    assert not FastBert.supports(BertModel(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1,
                                                      num_attention_heads=2, intermediate_size=64)).to(torch.bfloat16))


def test_decoder_configs_are_refused():
    cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=64, is_decoder=True)
    assert not FastBert.supports(BertModel(cfg).eval())
