"""The caption decoder wired into the model: settings, per-sample results, compaction, backends, text."""
from __future__ import annotations

import pytest
import torch

from llmva_gebc.models import build_model, decoding
from llmva_gebc.models.decoding import DecodeSettings
from tests.conftest import make_batch, select


@pytest.fixture(scope="module")
def model(tiny_cfg_factory):
    torch.manual_seed(0)
    return build_model(tiny_cfg_factory("opt").model).eval()


def test_settings_lengths_and_errors():
    s = DecodeSettings.build({"num_beams": 4, "max_length": 30})
    assert s.max_new_tokens == 29  # the original's max_length=30 counts the dummy start column
    assert DecodeSettings.build({"max_length": 30}, max_new_tokens=8).max_length == 9
    with pytest.raises(TypeError, match="min_new_tokens"):
        DecodeSettings.build({}, min_new_tokens=3)
    with pytest.raises(ValueError, match="max_length"):
        DecodeSettings.build({"max_length": 1})
    with pytest.raises(ValueError, match="backend"):
        DecodeSettings.build({"backend": "vllm"})


def test_compile_flag_is_refused_clearly(tiny_cfg_factory):
    cfg = tiny_cfg_factory("opt", "model.generation.compile=true")
    with pytest.raises(ValueError, match="model.generation.compile"):
        build_model(cfg.model)


def test_gebc_config_reproduces_max_length_30():
    from llmva_gebc.config import load_config
    from tests.conftest import REPO

    g = load_config(REPO / "train_configs" / "gebc_opt13b.yaml").model.generation
    assert (g.max_length, g.min_length, g.num_beams, g.backend) == (30, 1, 4, "own")


def test_min_length_counts_the_dummy_column(model, tiny_cfg):
    """EOS is forbidden while cur_len (dummy column + new tokens) < min_length: >= min_length - 1 tokens."""
    batch = make_batch(tiny_cfg.model, 3, seed=2, with_caption=False)
    eos = model.eos_id

    def ids(**kw):
        s = model.decode_settings(**kw)
        vis = model.visual_tokens(batch)
        prompts = [model._prefix(vis[i], p) for i, p in enumerate(batch["prompt"])]
        return decoding.generate_ids(model.llm, prompts, s, eos, model.bos_id)

    for beams in (1, 2):
        for row in ids(num_beams=beams, min_length=6, max_length=12):
            assert eos not in row[:5]
        assert all(len(r) <= 11 for r in ids(num_beams=beams, max_length=12))


def test_finished_samples_are_compacted_out(model, tiny_cfg, monkeypatch):
    """With an LM head tilted towards EOS, captions end at different steps and the KV cache shrinks."""
    batch = make_batch(tiny_cfg.model, 6, seed=4, with_caption=False)
    head = model.llm.get_output_embeddings().weight
    rows = []
    real = decoding.KVRows.select
    monkeypatch.setattr(decoding.KVRows, "select", lambda self, r: (rows.append(int(r.shape[0])), real(self, r))[1])
    with torch.no_grad():
        saved = head[model.eos_id].clone()
        # the hidden state's mean direction, so EOS becomes likely after a few tokens
        h = model.llm(inputs_embeds=model._prefix(model.visual_tokens(batch)[0], batch["prompt"][0])[None],
                      output_hidden_states=True).hidden_states[-1][0]
        head[model.eos_id] = saved + 4.0 * h.mean(0) / h.mean(0).norm()
        try:
            caps = model.generate(batch, num_beams=2, max_length=30)
            alone = [model.generate(select(batch, [i]), num_beams=2, max_length=30)[0] for i in range(6)]
        finally:
            head[model.eos_id] = saved
    assert caps == alone
    first = rows.index(12)  # the beam expansion of 6 samples
    assert min(rows[first:]) < 12  # some samples finished early and left the batch


def test_backends_agree_on_greedy_and_hf_stays_available(model, tiny_cfg):
    """Greedy search has the same rules in 4.28 and 5.x (no penalties): both backends agree; beam search
    runs through transformers' generate on request (backend: hf)."""
    batch = make_batch(tiny_cfg.model, 4, seed=6, with_caption=False)
    own = model.generate(batch, num_beams=1, max_length=10)
    hf = model.generate(batch, num_beams=1, max_length=10, backend="hf")
    if decoding.cleans_up_spaces(model.tokenizer):  # hf ignores 4.28's clean-up rule
        hf = [decoding.clean_up_spaces(h) for h in hf]
    assert hf == own
    assert len(model.generate(batch, num_beams=2, max_length=10, backend="hf")) == 4


def test_text_clean_up_follows_the_tokenizer_config():
    from transformers import PreTrainedTokenizerFast

    from tests.conftest import TEST_DATA

    path = str(TEST_DATA / "golden_tokenizer.json")
    kw = dict(tokenizer_file=path, bos_token="</s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>")
    tok = PreTrainedTokenizerFast(**kw)
    ids = tok("a man 's hand , then the ball .", add_special_tokens=False).input_ids
    assert decoding.decode_text(tok, [[tok.eos_token_id, *ids, tok.eos_token_id]]) == ["a man's hand, then the ball."]
    off = PreTrainedTokenizerFast(clean_up_tokenization_spaces=False, **kw)
    assert decoding.decode_text(off, [ids]) == ["a man 's hand , then the ball ."]
