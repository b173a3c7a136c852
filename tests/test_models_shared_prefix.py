"""Shared-prefix training/generation equals the unshared reference path (tiny OPT and LLaMA)."""
import logging
import warnings

import pytest
import torch

from llmva_gebc.models import build_model
from llmva_gebc.models import shared_prefix as sp
from tests.conftest import TYPE_PROMPTS, make_batch, select

TYPES = list(TYPE_PROMPTS)


def grouped_batch(mcfg, num_boundaries: int, seed: int = 0, drop=(), order=None):
    """A batch of whole boundaries (3 types each, identical inputs within a boundary, labels of
    different lengths across boundaries); ``drop`` removes samples (incomplete boundaries) and
    ``order`` permutes the rest."""
    b = make_batch(mcfg, num_boundaries * 3, seed=seed)
    for i in range(num_boundaries * 3):
        k, t = divmod(i, 3)
        b["boundary_id"][i] = f"bnd{seed:03d}{k:05d}"
        b["type"][i] = TYPES[t]
        b["label"][i] = b["label"][3 * k]
        b["prompt"][i] = f"This video describes the {b['label'][i].lower()}.{TYPE_PROMPTS[TYPES[t]]}"
        for key in ("q_tokens", "ref_points", "other_feats"):
            if key in b:
                b[key][i] = b[key][3 * k]
    keep = [i for i in range(num_boundaries * 3) if i not in set(drop)]
    if order is not None:
        keep = [keep[j] for j in order]
    return select(b, keep)


@pytest.fixture(scope="module")
def models(tiny_cfg_factory):
    out = {}
    for arch in ("opt", "llama"):
        cfg = tiny_cfg_factory(arch)
        torch.manual_seed(0)
        out[arch] = (build_model(cfg.model).eval(), cfg)  # eval: no adapter dropout, so paths compare exactly
    return out


def _loss_and_grads(model, batch, share):
    model.zero_grad(set_to_none=True)
    loss = model(batch, share_prefix=share)["loss"]
    loss.backward()
    return loss.item(), {n: p.grad.detach().clone() for n, p in model.trainable_parameters()}


@pytest.mark.parametrize("arch", ["opt", "llama"])
@pytest.mark.parametrize("mode", sp.MODES)
def test_loss_and_adapter_grads_match_unshared(models, arch, mode):
    model, cfg = models[arch]
    # 4 boundaries, one with 2 samples and one with 1 (incomplete in the batch), order shuffled.
    batch = grouped_batch(cfg.model, 4, seed=1, drop=(4, 9, 10), order=[3, 0, 1, 2, 8, 4, 5, 6, 7])
    assert len(sp.find_groups(batch)) == 4
    before, model.share_prefix_mode = model.share_prefix_mode, mode
    try:
        ref_loss, ref_g = _loss_and_grads(model, batch, False)
        loss, g = _loss_and_grads(model, batch, True)
    finally:
        model.share_prefix_mode = before
    assert loss == pytest.approx(ref_loss, abs=1e-5, rel=0)
    flat_ref = torch.cat([v.flatten() for v in ref_g.values()])
    flat = torch.cat([g[n].flatten() for n in ref_g])
    assert flat_ref.norm() > 0
    assert ((flat - flat_ref).norm() / flat_ref.norm()).item() < 1e-4
    scale = flat_ref.abs().max()
    for n in ref_g:  # every parameter, with an absolute floor for grads that are zero in exact math
        assert torch.allclose(g[n], ref_g[n], rtol=1e-4, atol=1e-5 * scale), n


def test_other_feature_branch_and_no_grouping(tiny_cfg_factory):
    cfg = tiny_cfg_factory("opt", "model.adapter.other_feats=[{name: a, dim: 6}]")
    torch.manual_seed(0)
    model = build_model(cfg.model).eval()
    batch = grouped_batch(cfg.model, 2, seed=2)
    assert "other_feats" in batch
    ref = model(batch, share_prefix=False)["loss"].item()
    assert model(batch, share_prefix=True)["loss"].item() == pytest.approx(ref, abs=1e-5)
    plain = make_batch(cfg.model, 3, seed=4)  # all different boundaries: groups of one
    assert len(sp.find_groups(plain)) == 3
    ref = model(plain, share_prefix=False)["loss"].item()
    assert model(plain, share_prefix=True)["loss"].item() == pytest.approx(ref, abs=1e-5)


@pytest.mark.parametrize("arch", ["opt", "llama"])
@pytest.mark.parametrize("num_beams", [1, 2])
def test_generation_token_identical(models, arch, num_beams, monkeypatch):
    model, cfg = models[arch]
    batch = grouped_batch(cfg.model, 3, seed=3, drop=(5,), order=[4, 0, 1, 2, 3, 5, 6, 7])
    decoded = []
    real = model.tokenizer.batch_decode

    def spy(ids, **kw):  # compare raw token ids, not only strings
        decoded.append([[int(t) for t in row] for row in ids])
        return real(ids, **kw)

    monkeypatch.setattr(model.tokenizer, "batch_decode", spy)
    ref = model.generate(batch, share_prefix=False, num_beams=num_beams, max_new_tokens=8)
    got = model.generate(batch, share_prefix=True, num_beams=num_beams, max_new_tokens=8)
    assert got == ref
    strip = lambda rows: [[t for t in r if t not in (model.eos_id, model.tokenizer.pad_token_id)] for r in rows]
    assert strip(decoded[1]) == strip(decoded[0])
    # batch invariance of the shared path: each sample's caption equals its batch-of-one caption
    for i in (0, 4):
        assert model.generate(select(batch, [i]), share_prefix=True, num_beams=num_beams,
                              max_new_tokens=8) == [got[i]]


@pytest.mark.parametrize("arch", ["opt", "llama"])
def test_generation_length_and_penalty_semantics(models, arch):
    """min_length (counted as the reference counts it), repetition and length penalties agree."""
    model, cfg = models[arch]
    batch = grouped_batch(cfg.model, 2, seed=5)
    for kw in ({"min_length": 5, "max_new_tokens": 7}, {"repetition_penalty": 1.7, "length_penalty": 0.3},
               {"min_length": 4, "max_length": 7, "length_penalty": 2.0}, {"backend": "hf", "max_length": 7}):
        ref = model.generate(batch, share_prefix=False, num_beams=2, **kw)
        assert model.generate(batch, share_prefix=True, num_beams=2, **kw) == ref, kw


def test_shared_prefix_is_a_token_prefix_of_every_prompt(models):
    model, cfg = models["opt"]
    batch = grouped_batch(cfg.model, 2, seed=6)
    lay = sp.build_layout(model, batch)
    head = 1 + len(model.video_prefix_ids) + model.adapter.num_visual_tokens
    for g, members in enumerate(lay.groups):
        shared = lay.prefix_lens[g] - head
        assert shared > 0  # "This video describes the <label>." is shared
        for i in members:
            full = model._ids(batch["prompt"][i])
            assert len(lay.tails[i]) >= 1 and full[shared:] == lay.tails[i]
    assert sp.common_prefix_len([[1, 2, 3], [1, 2, 3]]) == 2  # every sequence keeps one token
    assert sp.common_prefix_len([[1, 2, 3], [1, 5]]) == 1
    assert sp.common_prefix_len([[7], [7, 8]]) == 0


def test_find_groups_requires_identical_inputs():
    q = torch.zeros(4, 1, 2, 3)
    q[2] = 1.0  # same boundary id, different frames: must not share a prefix
    batch = {"boundary_id": ["a", "a", "a", "b"], "prompt": ["p"] * 4, "q_tokens": q,
             "ref_points": torch.zeros(4, 2, dtype=torch.float64)}
    assert sp.find_groups(batch) == [[0, 1], [2], [3]]
    del batch["boundary_id"]
    assert sp.find_groups(batch) == [[0], [1], [2], [3]]


def test_default_switch_and_fallback(models, monkeypatch, caplog):
    model, cfg = models["opt"]
    batch = grouped_batch(cfg.model, 1, seed=7)
    calls = []
    real = sp.shared_forward
    monkeypatch.setattr(sp, "shared_forward", lambda *a, **k: calls.append(1) or real(*a, **k))
    try:
        assert model.set_share_prefix(True) is True
        model(batch)
        assert calls == [1]
        model(batch, share_prefix=False)  # explicit False wins over the default
        assert calls == [1]
        monkeypatch.setattr(sp, "supports_shared_prefix", lambda llm: "no KV cache (test)")
        with caplog.at_level(logging.WARNING):
            assert model.set_share_prefix(True) is False
        assert "no KV cache (test)" in caplog.text
        model(batch)
        assert calls == [1]
        with pytest.raises(ValueError, match="no KV cache"):
            model(batch, share_prefix=True)
    finally:
        model.share_prefix = False
    with pytest.raises(ValueError, match="mode"):
        model.set_share_prefix(True, mode="bogus")


def test_supports_shared_prefix_names_what_is_missing(models):
    class NoPositions(torch.nn.Module):
        def forward(self, input_ids, attention_mask=None):
            return input_ids

    assert "position_ids" in sp.supports_shared_prefix(NoPositions())
    assert sp.supports_shared_prefix(models["opt"][0].llm) is None
    assert sp.supports_shared_prefix(models["llama"][0].llm) is None


# ------------------------------------------------------------------ packed attention: dense mask vs flex BlockMask
def _seg():
    # two rows: prefix of 3, continuations of 2 and 3 (row 0), prefix 2 + one continuation + padding (row 1)
    return torch.tensor([[0, 0, 0, 1, 1, 2, 2, 2], [0, 0, 1, 1, 1, -1, -1, -1]])


def test_dense_packed_mask_is_the_layout_rule():
    seg = _seg()
    m = sp.dense_packed_mask(seg, torch.float32)
    assert m.shape == (2, 1, 8, 8)
    allowed = m[:, 0] == 0
    for b in range(2):
        for q in range(8):
            for k in range(8):
                want = k == q or (k < q and (seg[b, k] == 0 or seg[b, k] == seg[b, q]))
                assert bool(allowed[b, q, k]) == want, (b, q, k)
    assert allowed[0, 5, 3].item() is False  # continuation 2 never sees continuation 1
    assert allowed[0, 7, 0].item() is True  # ... but sees the prefix


def test_flex_block_mask_attends_like_the_dense_mask():
    from torch.nn.attention.flex_attention import flex_attention

    seg = _seg()
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, 8, 4, generator=g) for _ in range(3))  # (G, heads, L, head dim)
    dense = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=sp.dense_packed_mask(seg, q.dtype))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "flex_attention called without torch.compile()": the CPU reference
        flex = flex_attention(q, k, v, block_mask=sp.flex_packed_mask(seg))
    torch.testing.assert_close(flex, dense, rtol=1e-5, atol=1e-6)


def test_packed_attention_kernel_selection():
    assert sp.packed_attention_kernel("auto", "cpu") == "dense"
    assert sp.packed_attention_kernel("auto", "cuda") == "flex"
    assert sp.packed_attention_kernel("dense", "cuda") == "dense"
    assert sp.packed_attention_kernel("flex", "cuda") == "flex"
    assert sp.packed_attention_kernel("flex", "cpu", grad=False) == "flex"  # CPU forward runs (unfused)
    with pytest.raises(ValueError, match="no backward"):
        sp.packed_attention_kernel("flex", "cpu", grad=True)
    with pytest.raises(ValueError, match="must be one of"):
        sp.packed_attention_kernel("fused", "cpu")


@pytest.mark.parametrize("arch", ["opt", "llama"])
def test_flex_packed_loss_equals_dense_on_cpu_forward(models, arch):
    """Where flex runs on this CPU (forward, no gradients): the same loss as the dense reference and the
    unshared path, and the LLM's attention implementation is restored afterwards."""
    model, cfg = models[arch]
    batch = grouped_batch(cfg.model, 3, seed=5, drop=(4,))
    impl = model.llm.config._attn_implementation
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = model(batch, share_prefix=False)["loss"].item()
        dense = sp.shared_forward(model, batch, "packed", "dense")["loss"].item()
        flex = sp.shared_forward(model, batch, "packed", "flex")["loss"].item()
    assert model.llm.config._attn_implementation == impl
    assert dense == pytest.approx(ref, rel=1e-5)
    assert flex == pytest.approx(dense, rel=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="flex_attention trains on CUDA only (no CPU backward)")
@pytest.mark.parametrize("arch", ["opt", "llama"])
def test_flex_packed_loss_and_grads_equal_dense_on_cuda(models, arch):
    model, cfg = models[arch]
    model = model.cuda()
    try:
        batch = grouped_batch(cfg.model, 4, seed=1, drop=(4,))
        out = {}
        for kernel in ("dense", "flex"):
            model.zero_grad(set_to_none=True)
            loss = sp.shared_forward(model, batch, "packed", kernel)["loss"]
            loss.backward()
            out[kernel] = (loss.item(), torch.cat([p.grad.flatten() for _, p in model.trainable_parameters()]))
        assert out["flex"][0] == pytest.approx(out["dense"][0], rel=1e-5)
        g, ref = out["flex"][1], out["dense"][1]
        assert ((g - ref).norm() / ref.norm()).item() < 1e-4
    finally:
        model.cpu()
