"""A tiny stand-in model and dataset with the training API of the real ones (for the engine tests).

``ToyCaptioner`` has a frozen "LLM" of ``*DecoderLayer`` blocks (found by the FSDP wrapper by class
name), a trainable adapter with dropout (so resume must restore the RNG), and the model API of the
contract: ``forward(batch) -> {"loss"}``, ``trainable_parameters()``, ``trainable_state_dict()``,
``load_trainable_state_dict()``, ``generate()``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from torch import nn

from llmva_gebc.config import load_config

DIM, CLASSES = 8, 4


class ToyDecoderLayer(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc = nn.Linear(dim, dim)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + torch.tanh(self.fc(h))  # (B, D)


class ToyLLM(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList([ToyDecoderLayer(dim) for _ in range(2)])
        self.head = nn.Linear(dim, CLASSES)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            h = layer(h)
        return self.head(h)  # (B, C)


class ToyCaptioner(nn.Module):
    def __init__(self, dim: int = DIM) -> None:
        super().__init__()
        self.adapter = nn.Sequential(nn.Linear(dim, 16), nn.GELU(), nn.Dropout(0.2), nn.Linear(16, dim),
                                     nn.LayerNorm(dim))
        self.query = nn.Parameter(torch.zeros(dim))  # 1-D trainable: no weight decay
        self.llm = ToyLLM(dim)
        self.llm.requires_grad_(False)

    def forward(self, batch: Dict[str, Any]) -> Dict[str, torch.Tensor]:
        h = self.adapter(batch["x"]) + self.query  # (B, D)
        logits = self.llm(h)  # (B, C)
        return {"loss": nn.functional.cross_entropy(logits.float(), batch["y"])}

    def trainable_parameters(self):
        return [(n, p) for n, p in self.named_parameters() if p.requires_grad]

    def trainable_state_dict(self) -> Dict[str, torch.Tensor]:
        return {n: p for n, p in self.trainable_parameters()}

    def load_trainable_state_dict(self, sd: Dict[str, torch.Tensor], strict: bool = True) -> None:
        params = dict(self.trainable_parameters())
        if strict and set(sd) != set(params):
            raise KeyError(f"key mismatch: {sorted(set(sd) ^ set(params))}")
        with torch.no_grad():
            for k, v in sd.items():
                params[k].copy_(v)

    @torch.no_grad()
    def generate(self, batch: Dict[str, Any], **_: Any) -> List[str]:
        logits = self.llm(self.adapter(batch["x"]) + self.query)
        return [f"class {int(i)}" for i in logits.argmax(-1)]


class ToyDataset(torch.utils.data.Dataset):
    """Linearly separable points; training samples get random jitter (per-sample RNG)."""

    def __init__(self, n: int = 64, training: bool = True, nan_at: Optional[int] = None, seed: int = 0) -> None:
        w = torch.randn(DIM, CLASSES, generator=torch.Generator().manual_seed(0))  # same task in every split
        self.x = torch.randn(n, DIM, generator=torch.Generator().manual_seed(100 + seed))
        self.y = (self.x @ w).argmax(-1)
        self.training, self.nan_at = training, nan_at

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> Dict[str, Any]:
        x = self.x[i].clone()
        if self.training:
            x = x + 0.05 * torch.randn(DIM)
        if self.nan_at is not None and i == self.nan_at:
            x[0] = float("nan")
        return {"boundary_id": f"toy{i:03d}", "type": "subject", "x": x, "y": self.y[i]}


def toy_config(tmp: Path, **run: Any):
    """A schema-checked config for the toy runs (``run.*`` overrides as keyword arguments)."""
    tmp.mkdir(parents=True, exist_ok=True)
    yaml = tmp / "toy.yaml"
    yaml.write_text("model:\n  llm:\n    path: unused\n")
    defaults = dict(output_dir=str(tmp / "out"), run_name="toy", seed=7, device="cpu", amp="none",
                    init_lr=5e-2, min_lr=1e-3, warmup_lr=1e-3, warmup_steps=3, max_epoch=2,
                    batch_size_train=4, batch_size_eval=8, num_workers=0, log_every=1,
                    evaluate_each_epoch=True, best_metric="agg_metrics")
    defaults.update(run)
    opts = [f"run.{k}={'null' if v is None else v}" for k, v in defaults.items()]
    return load_config(yaml, opts)


def toy_datasets(n: int = 64, nan_at: Optional[int] = None) -> Dict[str, Any]:
    return {"train": ToyDataset(n, True, nan_at), "val": ToyDataset(16, False, seed=1), "test": None}


class Killed(Exception):
    """Raised right after a checkpoint save: what a kill -9 at that moment leaves, as a test sees it."""


def die_after_checkpoint(monkeypatch, step: int) -> None:
    """Make training stop (raise Killed) right after the checkpoint of ``global_step == step`` is
    written; ``monkeypatch.undo()`` (or the end of the test) restores the real save."""
    from llmva_gebc.engine import checkpointing as ckpt

    real_save = ckpt.save_checkpoint

    def save_then_die(target, weights, state):
        out = real_save(target, weights, state)
        if state["global_step"] == step:
            raise Killed()
        return out

    monkeypatch.setattr(ckpt, "save_checkpoint", save_then_die)
