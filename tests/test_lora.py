"""LoRA on the frozen LLM (``model.llm.lora``): off by default; training changes only LoRA + adapter
weights; the safetensors checkpoint holds them and loads strictly for evaluation; DDP/FSDP2 (slow)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import make_batch
from llmva_gebc.models import build_model
from llmva_gebc.models.checkpoint import CheckpointMismatchError, load_trainable, save_trainable

REPO = Path(__file__).resolve().parents[1]
LORA = ("model.llm.lora.enabled=true", "model.llm.lora.r=4", "model.llm.lora.alpha=8",
        "model.llm.lora.dropout=0.0", "model.llm.lora.target_modules=[q_proj,v_proj]")


def lora_names(model):
    return sorted(n for n, _ in model.trainable_parameters() if ".lora_" in n)


def test_lora_off_by_default(tiny_cfg):
    assert tiny_cfg.model.llm.lora.enabled is False
    model = build_model(tiny_cfg.model)
    assert not any("lora_" in n for n, _ in model.named_parameters())
    assert all(n.startswith("adapter.") for n, _ in model.trainable_parameters())


@pytest.fixture
def lora_cfg(tiny_cfg_factory, tmp_path):
    return tiny_cfg_factory("opt", *LORA, f"run.output_dir={tmp_path}")


def test_lora_training_saves_and_loads_exactly(lora_cfg, tmp_path):
    torch.manual_seed(0)
    model = build_model(lora_cfg.model)
    n_layers = model.llm.config.num_hidden_layers
    names = lora_names(model)
    # q_proj and v_proj of every decoder layer, A and B each
    assert len(names) == n_layers * 2 * 2 and all(("q_proj" in n or "v_proj" in n) for n in names)
    assert {n for n, _ in model.trainable_parameters()} == set(names) | {
        n for n, _ in model.named_parameters() if n.startswith("adapter.")}
    assert set(names) <= set(model.trainable_state_dict())
    assert all(p.dtype == torch.float32 for _, p in model.trainable_parameters())

    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    from llmva_gebc.engine.optim import build_optimizer

    opt = build_optimizer(model.trainable_parameters(), lr=2e-2, weight_decay=0.0, betas=[0.9, 0.999])
    batch = make_batch(lora_cfg.model, 4, seed=1)
    model.train()
    losses = []
    for _ in range(6):
        loss = model(batch)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert losses[-1] < 0.97 * losses[0] and losses == sorted(losses, reverse=True), losses

    after = model.state_dict()
    trainable = {n for n, _ in model.trainable_parameters()}
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed <= trainable  # every frozen weight and buffer is bit-identical
    assert set(names) <= changed  # every LoRA A and B moved (B starts at zero)
    assert any(k.startswith("adapter.") for k in changed)

    # save: safetensors with exactly the trainable keys; load strictly into a fresh model (model.checkpoint)
    path = save_trainable(model, tmp_path / "ckpt")
    saved = load_file(str(path))
    assert set(saved) == trainable
    torch.manual_seed(99)  # a different initial adapter, overwritten by the checkpoint
    reloaded = build_model(_with(lora_cfg, f"model.checkpoint={tmp_path / 'ckpt'}").model)
    assert all(torch.equal(v, reloaded.state_dict()[k]) for k, v in model.state_dict().items())
    model.eval()
    gen = make_batch(lora_cfg.model, 3, seed=2, with_caption=False)
    assert model.generate(gen) == reloaded.generate(gen)

    # a model without LoRA refuses the checkpoint, naming the LoRA keys
    torch.manual_seed(0)
    plain = build_model(_with(lora_cfg, "model.llm.lora.enabled=false").model)
    with pytest.raises(CheckpointMismatchError, match=r"unexpected \(8\).*lora_A"):
        load_trainable(plain, path)


def _with(cfg, *options):
    from omegaconf import OmegaConf

    return OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(options)))


def test_lora_on_bf16_llm_keeps_fp32_trainable_weights(tiny_cfg_factory):
    """Frozen bf16 LLM + fp32 LoRA (peft casts adapters up): what the trainer and FSDP2 require."""
    cfg = tiny_cfg_factory("opt", *LORA, "model.llm.dtype=bf16")
    model = build_model(cfg.model)
    dtypes = {n: p.dtype for n, p in model.named_parameters()}
    assert {dtypes[n] for n in lora_names(model)} == {torch.float32}
    assert dtypes["llm.base_model.model.model.decoder.layers.0.self_attn.q_proj.base_layer.weight"] == torch.bfloat16
    loss = model(make_batch(cfg.model, 2, seed=3))["loss"]
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for n, p in model.trainable_parameters()
               if ".lora_B" in n)


WORKER = textwrap.dedent('''
    import sys
    from pathlib import Path

    import torch

    sys.path.insert(0, sys.argv[4])  # tests/, for conftest.make_batch
    from conftest import make_batch
    from llmva_gebc import dist
    from llmva_gebc.config import load_config
    from llmva_gebc.models import build_model

    out, strategy, llm = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    rank, _, world = dist.init_distributed()
    cfg = load_config(Path(sys.argv[4]).parent / "train_configs" / "tiny.yaml",
                      [f"model.llm.path={llm}", *sys.argv[5:]])
    torch.manual_seed(0)
    model = build_model(cfg.model)
    frozen = {k: v.clone() for k, v in model.state_dict().items() if k not in dict(model.trainable_parameters())}
    wrapped = dist.wrap_model(model, strategy)
    inner = dist.unwrap(wrapped)
    opt = torch.optim.AdamW([p for _, p in inner.trainable_parameters()], lr=3e-3)
    losses = []
    for step in range(4):
        batch = make_batch(cfg.model, 2, seed=100 * step + rank)  # each rank its own data
        loss = wrapped(batch)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    sd = dist.full_trainable_state_dict(wrapped)
    if strategy == "ddp":
        now = inner.state_dict()
        assert all(torch.equal(v, now[k]) for k, v in frozen.items()), "a frozen weight changed"
    torch.save({"sd": sd, "losses": losses}, out / f"rank{rank}.pt")
    dist.barrier()
    dist.destroy()
''')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("strategy,extra", [("ddp", ()), ("fsdp", ()), ("fsdp", ("model.llm.dtype=bf16",))],
                         ids=["ddp", "fsdp", "fsdp-bf16-llm"])
def test_two_process_lora_training_keeps_ranks_identical(tiny_llm_dirs, tiny_cfg_factory, tmp_path, strategy, extra):
    """FSDP2 shards each decoder layer as one unit holding frozen base weights and trainable LoRA
    weights (bf16 + fp32 with a bf16 LLM); only the trainable ones must share a dtype."""
    worker = tmp_path / "lora_worker.py"
    worker.write_text(WORKER)
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
           str(worker), str(tmp_path), strategy, tiny_llm_dirs["opt"], str(REPO / "tests"), *LORA, *extra]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-6000:]
    a, b = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert a["losses"] != b["losses"]  # the ranks did see different data
    torch.manual_seed(0)
    ref = build_model(tiny_cfg_factory("opt", *LORA).model)
    init = ref.trainable_state_dict()
    assert set(a["sd"]) == set(b["sd"]) == set(init)  # same key names as a single-process save
    assert all(torch.equal(a["sd"][k], b["sd"][k]) for k in init)
    assert all(not torch.equal(a["sd"][k], init[k]) for k in lora_names(ref))
    ref.load_trainable_state_dict(a["sd"], strict=True)
