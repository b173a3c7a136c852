"""The project's decoder against golden vectors from transformers 4.28.0 (``tools/golden_generate_428.py``).

Tiny random OPT and LLaMA models are rebuilt from the seeds in the golden file (their probe logits are
checked first), then every case must come out with exactly 4.28's ids and text: alone (a batch of
one), in shuffled batches of 8 (mixed prompt and caption lengths), and through the shared-prefix path.
"""
from __future__ import annotations

import importlib.util
import json
import random

import pytest
import torch

from conftest import REPO, TEST_DATA
from llmva_gebc.models import decoding

GOLDEN = json.loads((TEST_DATA / "golden_generate_428.json").read_text())
BATCHES = list(range(len(GOLDEN["batches"])))


def _tool():
    spec = importlib.util.spec_from_file_location("golden_generate_428", REPO / "tools" / "golden_generate_428.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def golden():
    from transformers import AutoModelForCausalLM, LlamaConfig, OPTConfig, PreTrainedTokenizerFast

    tool = _tool()
    tok = PreTrainedTokenizerFast(tokenizer_file=str(TEST_DATA / GOLDEN["tokenizer"]), bos_token="</s>",
                                  eos_token="</s>", pad_token="<pad>", unk_token="<unk>")
    models = []
    for m in GOLDEN["models"]:
        cfg = (OPTConfig if m["arch"] == "opt" else LlamaConfig)(**m["config"])
        model = AutoModelForCausalLM.from_config(cfg).eval()
        tool.fill_weights(model, m["seed"], tok.eos_token_id, m["tilt"])
        models.append(model)
    cases = {}
    for c in GOLDEN["cases"]:
        cases.setdefault(c["batch"], []).append(c)
    return tool, tok, models, cases


def _settings(b):
    return decoding.DecodeSettings.build({k: b[k] for k in ("num_beams", "max_length", "min_length",
                                                            "repetition_penalty", "length_penalty")})


def _prompts(tool, b, dim):
    """[(prefix, tail, case_key)] of a golden batch, in golden order."""
    out = []
    for gi, (prefix, tails) in enumerate(tool.prompt_embeds(b["seed"], b["prefix_lens"], b["tail_lens"], dim)):
        for ti, tail in enumerate(tails):
            out.append((gi, prefix, tail))
    return out


def test_golden_file_covers_the_grid():
    cases, batches = GOLDEN["cases"], GOLDEN["batches"]
    assert GOLDEN["transformers"] == "4.28.0" and len(cases) >= 300
    for key, values in (("num_beams", {1, 2, 4}), ("min_length", {1, 5, 12}), ("repetition_penalty", {1.0, 1.3}),
                        ("length_penalty", {1.0, 0.6})):
        assert {b[key] for b in batches} == values
    assert {m["arch"] for m in GOLDEN["models"]} == {"opt", "llama"}
    lengths = {len(c["ids"]) for c in cases}
    assert len(lengths) > 15  # captions end at many lengths
    assert sum(len(c["ids"]) == batches[c["batch"]]["max_length"] - 1 for c in cases) > 20  # cut at the limit


def test_models_rebuild_bit_for_bit(golden):
    tool, _, models, _ = golden
    for m, model in zip(GOLDEN["models"], models):
        prefix, tails = tool.prompt_embeds(m["seed"], [5], [[1]], model.config.hidden_size)[0]
        with torch.no_grad():
            logits = model(inputs_embeds=torch.cat([prefix, tails[0]])[None]).logits[0, -1, :16]
        torch.testing.assert_close(logits, torch.tensor(m["probe_logits"]), atol=2e-5, rtol=0)


@pytest.mark.parametrize("bi", BATCHES)
def test_golden_alone_batched_shared(golden, bi):
    tool, tok, models, cases = golden
    b = GOLDEN["batches"][bi]
    llm, s = models[b["model"]], _settings(b)
    eos, start = tok.eos_token_id, tok.bos_token_id
    prompts = _prompts(tool, b, llm.config.hidden_size)
    want = [c["ids"] for c in cases[bi]]
    texts = [c["text"] for c in cases[bi]]
    # alone: a batch of one, as the reference ran
    alone = [decoding.generate_ids(llm, [torch.cat([p, t])], s, eos, start)[0] for _, p, t in prompts]
    assert alone == want
    assert decoding.decode_text(tok, alone) == texts
    # shuffled batch of 8
    order = list(range(len(prompts)))
    random.Random(bi).shuffle(order)
    got = decoding.generate_ids(llm, [torch.cat(prompts[i][1:]) for i in order], s, eos, start)
    assert got == [want[i] for i in order]
    # shared prefix: each group's prefix once, forked for its tails (shuffled) and beams
    uniq = {gi: p for gi, p, _ in prompts}
    got = decoding.generate_ids_shared(llm, [uniq[g] for g in sorted(uniq)], [prompts[i][0] for i in order],
                                       [prompts[i][2] for i in order], s, eos, start)
    assert got == [want[i] for i in order]
