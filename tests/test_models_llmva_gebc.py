import pytest
import torch

from llmva_gebc.models import build_model
from tests.conftest import make_batch, select


@pytest.fixture(scope="module")
def opt_model(tiny_cfg_factory):
    torch.manual_seed(0)
    return build_model(tiny_cfg_factory("opt").model)


def test_loss_finite_and_grads_reach_only_trainable(opt_model, tiny_cfg):
    model = opt_model
    model.train()
    model.zero_grad(set_to_none=True)
    out = model(make_batch(tiny_cfg.model, 4))
    assert torch.isfinite(out["loss"]) and out["loss"].item() > 0
    out["loss"].backward()
    for n, p in model.named_parameters():
        if p.requires_grad:
            assert n.startswith("adapter."), n
        else:
            assert p.grad is None, n
    grads = [p.grad for _, p in model.trainable_parameters()]
    assert all(g is not None for g in grads)
    assert sum(g.abs().sum().item() for g in grads) > 0
    assert not model.llm.training  # frozen LLM stays in eval mode


def test_generate_one_string_per_sample(opt_model, tiny_cfg):
    opt_model.eval()
    caps = opt_model.generate(make_batch(tiny_cfg.model, 3, with_caption=False), max_new_tokens=5)
    assert len(caps) == 3 and all(isinstance(c, str) for c in caps)


@pytest.mark.parametrize("arch", ["opt", "llama"])
@pytest.mark.parametrize("num_beams", [1, 2])
def test_batch_invariance(tiny_cfg_factory, arch, num_beams):
    """A sample's loss/caption in a mixed batch equals its batch-of-one result."""
    torch.manual_seed(1)
    cfg = tiny_cfg_factory(arch)
    model = build_model(cfg.model).eval()
    batch = make_batch(cfg.model, 5, seed=3)
    # Prompts of different lengths in one batch (the case the original gets wrong).
    assert len({len(p) for p in batch["prompt"]}) > 1 or len({c for c in batch["caption"]}) > 1
    caps = model.generate(batch, num_beams=num_beams, max_new_tokens=6)
    for i in range(5):
        one = select(batch, [i])
        assert model.generate(one, num_beams=num_beams, max_new_tokens=6) == [caps[i]]
    # Loss: the per-token mean over the batch equals the token-weighted mean of singles.
    with torch.no_grad():
        full = model(batch)["loss"]
        num, den = 0.0, 0
        for i in range(5):
            one = select(batch, [i])
            n_tok = len(model.caption_ids(one["caption"][0]))
            num += model(one)["loss"].item() * n_tok
            den += n_tok
    assert full.item() == pytest.approx(num / den, rel=1e-5, abs=1e-6)


def test_swap_to_llama_is_one_line(tiny_cfg_factory):
    cfg = tiny_cfg_factory("llama")
    model = build_model(cfg.model)
    assert type(model.llm).__name__ == "LlamaForCausalLM"
    out = model(make_batch(cfg.model, 2))
    assert torch.isfinite(out["loss"])


def test_other_feature_branch(tiny_cfg_factory):
    cfg = tiny_cfg_factory("opt", "model.adapter.other_feats=[{name: a, dim: 6}, {name: b, dim: 10}]")
    model = build_model(cfg.model)
    assert model.adapter.num_visual_tokens == 8 + 8
    batch = make_batch(cfg.model, 2)
    assert batch["other_feats"].shape[-1] == 16
    out = model(batch)
    out["loss"].backward()
    assert model.adapter.other_feat_linear.weight.grad is not None
    with pytest.raises(ValueError, match="other_feats"):
        model({k: v for k, v in batch.items() if k != "other_feats"})


def test_labels_only_on_caption_and_eos(opt_model, tiny_cfg):
    """The loss equals a hand-computed CE over caption + EOS tokens only."""
    model = opt_model.eval()
    batch = make_batch(tiny_cfg.model, 1, seed=5)
    with torch.no_grad():
        loss = model(batch)["loss"]
        vis = model.visual_tokens(batch)[0]
        prefix = model._prefix(vis, batch["prompt"][0])
        cap = model.caption_ids(batch["caption"][0])
        assert cap[-1] == model.eos_id
        emb = torch.cat([prefix, model._embed(cap)])[None]
        logits = model.llm(inputs_embeds=emb).logits[0]
        Lp = prefix.shape[0]
        pred = logits[Lp - 1: Lp - 1 + len(cap)]
        ref = torch.nn.functional.cross_entropy(pred, torch.tensor(cap))
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)


def test_caption_truncation_drops_eos_when_long(opt_model):
    ids = opt_model.caption_ids(" ".join(["word"] * 40))
    assert len(ids) == opt_model.max_txt_len and ids[-1] != opt_model.eos_id


def test_lora_dropout_follows_train_mode_while_llm_stays_eval(tiny_cfg_factory):
    cfg = tiny_cfg_factory("opt", "model.llm.lora.enabled=true", "model.llm.lora.target_modules=[q_proj,v_proj]")
    model = build_model(cfg.model)
    drops = [m for n, m in model.llm.named_modules() if n.endswith("lora_dropout.default")]
    assert drops
    model.train()
    assert all(m.training for m in drops) and not model.llm.base_model.model.model.decoder.layers[0].training
    model.eval()
    assert not any(m.training for m in drops)


def test_repetition_penalty_is_batch_invariant(tiny_cfg_factory):
    """HF would skip the penalty on as many generated tokens as a row has left padding; we do not."""
    torch.manual_seed(2)
    cfg = tiny_cfg_factory("opt")
    model = build_model(cfg.model).eval()
    batch = make_batch(cfg.model, 4, seed=11, with_caption=False)
    kw = dict(num_beams=2, max_new_tokens=8, repetition_penalty=3.0)
    caps = model.generate(batch, **kw)
    assert [model.generate(select(batch, [i]), **kw)[0] for i in range(4)] == caps
    assert caps != model.generate(batch, num_beams=2, max_new_tokens=8)  # the penalty does act


@pytest.mark.parametrize("arch", ["opt", "llama"])
def test_loss_with_trimmed_lm_head_equals_full_hf_loss(tiny_cfg_factory, arch):
    """The LM head runs on caption positions only; the loss (and gradient) equal HF's full-sequence loss."""
    torch.manual_seed(4)
    cfg = tiny_cfg_factory(arch)
    model = build_model(cfg.model).eval()
    batch = make_batch(cfg.model, 5, seed=9)
    loss = model(batch)["loss"]
    (g_fast,) = torch.autograd.grad(loss, [model.adapter.proj.weight])
    model._logits_to_keep_ok = False  # the plain HF path: logits everywhere, HF's own loss
    ref = model(batch)["loss"]
    (g_ref,) = torch.autograd.grad(ref, [model.adapter.proj.weight])
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)
    torch.testing.assert_close(g_fast, g_ref, rtol=1e-5, atol=1e-7)
