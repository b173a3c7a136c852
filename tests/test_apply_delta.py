"""Vicuna = LLaMA + delta (llmva_gebc.models.apply_delta) on tiny random LLaMA folders made here."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from llmva_gebc.models.apply_delta import DeltaError, apply_delta, main


def _llama(out, seed, add_pad=False, shard_bin=False, vocab=300):
    """A tiny random LLaMA folder (untied head); ``add_pad`` adds '[PAD]' as Vicuna v0's delta does."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    from llmva_gebc.models.tiny import make_tokenizer

    tok = make_tokenizer(vocab, arch="llama")
    if add_pad:
        tok.add_special_tokens({"pad_token": "[PAD]"})
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg)
    out.mkdir(parents=True)
    tok.save_pretrained(out)
    cfg.save_pretrained(out)
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    if shard_bin:  # two PyTorch .bin shards, as the LLaMA conversion script wrote them
        names = sorted(sd)
        torch.save({k: sd[k] for k in names[::2]}, out / "pytorch_model-00001-of-00002.bin")
        torch.save({k: sd[k] for k in names[1::2]}, out / "pytorch_model-00002-of-00002.bin")
    else:
        save_file(sd, str(out / "model.safetensors"))
    return sd


def _read(folder):
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as h:
            out.update({k: h.get_tensor(k) for k in h.keys()})
    return out


def test_target_is_exactly_base_plus_delta(tmp_path):
    base = _llama(tmp_path / "llama", seed=0, shard_bin=True)
    delta = _llama(tmp_path / "delta", seed=1, add_pad=True)
    assert delta["model.embed_tokens.weight"].shape[0] == base["model.embed_tokens.weight"].shape[0] + 1
    # a small shard size forces several output files and an index
    rc = main(["--base", str(tmp_path / "llama"), "--delta", str(tmp_path / "delta"),
               "--target", str(tmp_path / "vicuna"), "--max-shard-size", "20KB"])
    assert rc == 0
    got = _read(tmp_path / "vicuna")
    assert set(got) == set(delta)
    index = json.loads((tmp_path / "vicuna" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(delta) and len(set(index["weight_map"].values())) > 1
    for name, d in delta.items():
        b = base[name]
        want = d.clone()
        want[: b.shape[0]] += b  # added-token rows: the delta's own values
        assert torch.equal(got[name], want), name
    assert torch.equal(got["lm_head.weight"][-1], delta["lm_head.weight"][-1])
    # the delta's config and tokenizer travel with it: the folder loads as a model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "vicuna")
    assert torch.equal(model.state_dict()["model.layers.0.mlp.up_proj.weight"], got["model.layers.0.mlp.up_proj.weight"])
    assert len(AutoTokenizer.from_pretrained(tmp_path / "vicuna")) == delta["lm_head.weight"].shape[0]
    with pytest.raises(DeltaError, match="already holds"):  # a second run never overwrites weights
        apply_delta(tmp_path / "llama", tmp_path / "delta", tmp_path / "vicuna")


def test_shape_and_name_mismatches_name_the_tensor(tmp_path, capsys):
    _llama(tmp_path / "llama", seed=0)
    delta = _llama(tmp_path / "delta", seed=1)
    bad = dict(delta)
    bad["model.layers.1.self_attn.q_proj.weight"] = torch.zeros(16, 8)
    (tmp_path / "bad_shape").mkdir()
    save_file(bad, str(tmp_path / "bad_shape" / "model.safetensors"))
    with pytest.raises(DeltaError, match=r"tensor 'model\.layers\.1\.self_attn\.q_proj\.weight': base shape "
                                         r"\[16, 16\] does not match delta shape \[16, 8\]"):
        apply_delta(tmp_path / "llama", tmp_path / "bad_shape", tmp_path / "out1")
    renamed = dict(delta)
    renamed["model.layers.1.mlp.gate.weight"] = renamed.pop("model.layers.1.mlp.gate_proj.weight")
    (tmp_path / "bad_name").mkdir()
    save_file(renamed, str(tmp_path / "bad_name" / "model.safetensors"))
    rc = main(["--base", str(tmp_path / "llama"), "--delta", str(tmp_path / "bad_name"), "--target",
               str(tmp_path / "out2")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: tensor 'model.layers.1.mlp.gate.weight' is in the delta but not")
    assert not list((tmp_path / "out2").glob("*.safetensors"))  # nothing written


def test_vocab_rows_must_match_added_tokens(tmp_path):
    _llama(tmp_path / "llama", seed=0)
    delta = _llama(tmp_path / "delta", seed=1)  # no added token in its tokenizer ...
    for name in ("model.embed_tokens.weight", "lm_head.weight"):  # ... but two more embedding rows
        delta[name] = torch.cat([delta[name], torch.zeros(2, 16)])
    save_file(delta, str(tmp_path / "delta" / "model.safetensors"))
    with pytest.raises(DeltaError, match=r"tensor '(lm_head|model\.embed_tokens)\.weight': the delta has 2 more rows than "
                                         r"the base, but its tokenizer adds 0 tokens"):
        apply_delta(tmp_path / "llama", tmp_path / "delta", tmp_path / "out")


def test_non_finite_weights_and_an_unwritable_target_are_errors(tmp_path, capsys):
    _llama(tmp_path / "llama", seed=0)
    delta = _llama(tmp_path / "delta", seed=1)
    bad = dict(delta)
    bad["model.layers.0.mlp.up_proj.weight"] = delta["model.layers.0.mlp.up_proj.weight"].clone()
    bad["model.layers.0.mlp.up_proj.weight"][3, 5] = float("nan")  # was written into the target as is
    (tmp_path / "nan").mkdir()
    save_file(bad, str(tmp_path / "nan" / "model.safetensors"))
    rc = main(["--base", str(tmp_path / "llama"), "--delta", str(tmp_path / "nan"), "--target", str(tmp_path / "out"),
               "--no-check-tokenizer"])
    assert rc == 2 and capsys.readouterr().err.strip() == (
        "error: tensor 'model.layers.0.mlp.up_proj.weight': non-finite values (NaN/inf) in the delta; re-download it "
        "(nothing was written)")
    assert not list((tmp_path / "out").glob("*safetensors*"))
    (tmp_path / "afile").write_text("x")  # was a FileExistsError traceback
    rc = main(["--base", str(tmp_path / "llama"), "--delta", str(tmp_path / "delta"), "--target", str(tmp_path / "afile")])
    assert rc == 2 and f"--target folder {tmp_path / 'afile'} is not writable" in capsys.readouterr().err
