"""One-GPU speed/memory options (``llmva_gebc/engine/accel.py``): equal results where they run on CPU."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from llmva_gebc.engine import accel
from llmva_gebc.engine.optim import build_optimizer
from llmva_gebc.models import build_model
from tests.conftest import make_batch


@pytest.fixture(scope="module")
def tiny_model(tiny_cfg_factory):
    cfg = tiny_cfg_factory("opt")
    torch.manual_seed(0)
    return build_model(cfg.model).eval(), cfg  # eval: no adapter dropout, so runs compare exactly


def _loss_grads(model, batch, **kw):
    model.zero_grad(set_to_none=True)
    loss = model(batch, **kw)["loss"]
    loss.backward()
    return loss.item(), torch.cat([p.grad.flatten() for _, p in model.trainable_parameters()])


def _saved_bytes(model, batch, **kw) -> int:
    """Bytes autograd keeps for the backward pass of one forward (what checkpointing saves)."""
    total = [0]

    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(batch, **kw)["loss"]
    return total[0]


def test_fused_adamw_equals_default_and_defaults_to_cuda_only():
    torch.manual_seed(0)
    a = [("w", nn.Parameter(torch.randn(8, 4))), ("b", nn.Parameter(torch.randn(4)))]
    b = [(n, nn.Parameter(p.detach().clone())) for n, p in a]
    opt_a = build_optimizer(a, lr=1e-2, weight_decay=0.01, betas=(0.9, 0.999))  # None: CPU → not fused
    opt_b = build_optimizer(b, lr=1e-2, weight_decay=0.01, betas=(0.9, 0.999), fused=True)
    assert not opt_a.defaults["fused"] and opt_b.defaults["fused"]
    for step in range(3):
        g = torch.Generator().manual_seed(step)
        for (_, pa), (_, pb) in zip(a, b):
            pa.grad = torch.randn(pa.shape, generator=g)
            pb.grad = pa.grad.clone()
        opt_a.step()
        opt_b.step()
    for (n, pa), (_, pb) in zip(a, b):
        torch.testing.assert_close(pb, pa, rtol=1e-6, atol=1e-7, msg=n)
        assert not torch.equal(pa, a[0][1].new_zeros(pa.shape))


@pytest.mark.parametrize("share", [False, True])
def test_gradient_checkpointing_same_loss_and_grads_less_saved(tiny_model, share):
    model, cfg = tiny_model
    model = copy.deepcopy(model)
    batch = make_batch(cfg.model, 6, seed=3)
    batch["boundary_id"] = [f"b{i // 3}" for i in range(6)]  # two boundaries (shared: packed rows)
    for k in ("q_tokens", "ref_points"):
        batch[k] = batch[k][[0, 0, 0, 3, 3, 3]].clone()
    ref = _loss_grads(model, batch, share_prefix=share)
    saved_ref = _saved_bytes(model, batch, share_prefix=share)
    n_layers = model.llm.config.num_hidden_layers
    assert accel.checkpoint_frozen_layers(model.llm) == n_layers
    assert accel.checkpoint_frozen_layers(model.llm) == 0  # idempotent
    loss, g = _loss_grads(model, batch, share_prefix=share)
    assert loss == pytest.approx(ref[0], rel=1e-6)
    torch.testing.assert_close(g, ref[1], rtol=1e-5, atol=1e-7)
    assert _saved_bytes(model, batch, share_prefix=share) < 0.8 * saved_ref
    with torch.no_grad():  # generation (KV cache) is untouched
        assert len(model.generate(make_batch(cfg.model, 2, seed=4, with_caption=False), num_beams=2,
                                  max_new_tokens=3)) == 2


def test_apply_run_options_reads_the_config_keys(tiny_cfg_factory, monkeypatch):
    cfg = tiny_cfg_factory("opt", "run.share_prefix=true", "run.share_prefix_attention=dense",
                           "run.gradient_checkpointing=true", "run.compile=true", "run.fused_adamw=false")
    torch.manual_seed(0)
    model = build_model(cfg.model)
    compiled = []
    monkeypatch.setattr(accel, "compile_model", lambda m, **kw: compiled.append(m))
    accel.apply_run_options(model, cfg.run)
    assert model.share_prefix and model.packed_attention == "dense"
    assert all(getattr(m, "_llmva_checkpointed", False) for m in model.llm.model.decoder.layers)
    assert compiled == [model]
    with pytest.raises(ValueError, match="share_prefix_attention"):  # refused when the config loads
        tiny_cfg_factory("opt", "run.share_prefix_attention=fused")
    bad = tiny_cfg_factory("opt")
    bad.run.share_prefix_attention = "fused"  # and by accel itself (a config changed in code)
    with pytest.raises(ValueError, match="share_prefix_attention"):
        accel.apply_run_options(model, bad.run)


@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_compile_gives_the_eager_loss(tiny_model, backend):
    """run.compile: torch.compile of the adapter and the LLM forward. ``aot_eager`` checks the graph
    capture (dynamo + AOT autograd) in seconds; ``inductor`` (what run.compile uses: generated C++ on
    a CPU, Triton on a GPU) takes minutes on a loaded 2-core CPU, hence slow."""
    model, cfg = tiny_model
    model = copy.deepcopy(model)
    batch = make_batch(cfg.model, 4, seed=5)
    ref = _loss_grads(model, batch)
    torch._dynamo.reset()
    accel.compile_model(model, backend=backend)
    names = [n for n, _ in model.trainable_parameters()]
    loss, g = _loss_grads(model, batch)
    assert [n for n, _ in model.trainable_parameters()] == names  # in place: state-dict keys unchanged
    assert loss == pytest.approx(ref[0], rel=1e-5)
    torch.testing.assert_close(g, ref[1], rtol=1e-4, atol=1e-6)


def test_one_gpu_recipe_is_the_winning_recipe_in_bf16():
    from llmva_gebc.config import load_config
    from tests.conftest import REPO

    a = load_config(REPO / "train_configs" / "gebc_opt13b.yaml")
    b = load_config(REPO / "train_configs" / "gebc_opt13b_1gpu.yaml")
    for k in ("batch_size_train", "max_epoch", "init_lr", "min_lr", "warmup_lr", "warmup_steps", "lr_sched",
              "weight_decay", "betas", "accum_grad_iters"):
        assert b.run[k] == a.run[k], k
    assert b.model.adapter == a.model.adapter and b.model.llm.path == a.model.llm.path
    assert (b.run.amp, b.model.llm.dtype, b.model.encoder.precision) == ("bf16", "bf16", "bf16")
    assert a.run.amp == "fp16"  # where the original used fp16 autocast
    assert b.run.share_prefix and b.run.compile and b.run.fused_adamw is None
