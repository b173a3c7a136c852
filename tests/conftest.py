"""Shared fixtures: tiny locally made LLMs, the tiny config, random GEBC batches."""
from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data" / "kinetics_gebc"
TEST_DATA = REPO / "tests" / "data"

LABELS = ["Change of Action", "Change of Subject", "Change of Object Being Interacted", "Change of Color", "Multiple"]
TYPE_PROMPTS = {"subject": "The subject is", "status_before": "Status before change is",
                "status_after": "Status after change is"}
CAPTIONS = ["red circle", "a man in a blue shirt on the left", "moving left", "jumping up and down",
            "/0", "/1", "holding a ball", "the green square turns yellow"]


@pytest.fixture(scope="session")
def tiny_llm_dirs(tmp_path_factory):
    """{"opt": dir, "llama": dir}: tiny random causal LMs written by ``llmva_gebc.models.tiny``."""
    from llmva_gebc.models.tiny import make_tiny_llm

    root = tmp_path_factory.mktemp("tiny_llms")
    return {arch: make_tiny_llm(root / arch, arch=arch) for arch in ("opt", "llama")}


@pytest.fixture(scope="session")
def tiny_cfg_factory(tiny_llm_dirs):
    """tiny_cfg_factory(arch="opt", *options) → the tiny config with its LLM pointing at a tiny model."""
    from llmva_gebc.config import load_config

    def make(arch: str = "opt", *options: str):
        return load_config(REPO / "train_configs" / "tiny.yaml",
                           [f"model.llm.path={tiny_llm_dirs[arch]}", *options])

    return make


@pytest.fixture
def tiny_cfg(tiny_cfg_factory):
    return tiny_cfg_factory("opt")


def make_batch(mcfg, batch_size: int = 4, seed: int = 0, with_caption: bool = True, num_frames: int = 4,
               other_steps: int = 6):
    """A random batch in the data pipeline's format for the model config ``mcfg``."""
    g = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    Q, H = mcfg.encoder.num_query_tokens, mcfg.adapter.hidden_size
    types = list(TYPE_PROMPTS)
    batch = {"boundary_id": [], "type": [], "prompt": [], "caption": [], "label": []}
    for i in range(batch_size):
        label, t = rng.choice(LABELS), types[i % 3]
        batch["boundary_id"].append(f"vid{seed:04d}{i:04d}_{i % 3}")
        batch["type"].append(t)
        batch["label"].append(label)
        batch["prompt"].append(f"This video describes the {label.lower()}.{TYPE_PROMPTS[t]}")
        batch["caption"].append(rng.choice(CAPTIONS) if with_caption else None)
    batch["q_tokens"] = torch.randn(batch_size, num_frames, Q, H, generator=g)
    batch["ref_points"] = torch.rand(batch_size, 2, generator=g, dtype=torch.float64)
    dims = [int(f.dim) for f in mcfg.adapter.other_feats]
    if dims:
        batch["other_feats"] = torch.randn(batch_size, other_steps, sum(dims), generator=g)
    return batch


def select(batch, idx):
    """The sub-batch of ``batch`` at indices ``idx``."""
    out = {}
    for k, v in batch.items():
        out[k] = v[idx] if isinstance(v, torch.Tensor) else [v[i] for i in idx]
    return out
