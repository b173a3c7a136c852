"""Tiny, locally made causal LMs (OPT or LLaMA architecture) for tests, CI and the CPU demo.

``python -m llmva_gebc.models.tiny --out DIR [--arch opt|llama] [--seed S]`` writes a Hugging Face
model directory: ``config.json``, random ``model.safetensors`` and a small byte-level BPE tokenizer
trained on a built-in English corpus (so any caption tokenises). It loads through the same
``AutoModelForCausalLM.from_pretrained`` path as a real LLM. OPT-style special tokens: BOS = EOS =
``</s>`` (id 2), pad ``<pad>`` (id 1), as in the original recipe's OPT; the LLaMA one has its own
``<s>`` BOS.
"""
from __future__ import annotations

import argparse
import json
import logging
import random
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

import torch

log = logging.getLogger(__name__)

SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]

# Words of the GEBC prompts and of typical boundary captions (real and synthetic), to train the BPE.
_CORPUS = """
Video: This video describes the change of action. The subject is Status before change is Status after change is
This video describes the change of subject. This video describes the change of object being interacted.
This video describes the change of color. This video describes the multiple.
a man woman person boy girl child people player dog cat hand ball car in the on of with and at to from
red green blue yellow orange purple white black pink brown gray cyan magenta circle square triangle
star diamond ring bar dot shape object moving left right up down still stops starts jumping running
walking standing sitting holding object picking up putting down throwing catching turning around
enters leaves appears disappears the scene frame background foreground small large big tiny bright
dark light changes color turns becomes is was are were playing guitar dancing swimming riding bike
cooking cutting talking looking camera moves zoom in out /0 /1 top bottom middle center side corner
shirt top skirt hat suit water grass floor table wall door road field stage room kitchen
"""


def _corpus_lines(extra: Optional[Iterable[str]] = None) -> list[str]:
    lines = [line.strip() for line in _CORPUS.strip().splitlines() if line.strip()]
    words = " ".join(lines).split()
    lines += words  # make every word common enough to get its own merges
    if extra:
        lines += list(extra)
    return lines


def make_tokenizer(vocab_size: int = 600, extra_corpus: Optional[Iterable[str]] = None, arch: str = "opt"):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_corpus_lines(extra_corpus), trainer=trainer)
    bos = "</s>" if arch == "opt" else "<s>"
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", padding_side="right")


def make_tiny_llm(out_dir: str | Path, arch: str = "opt", hidden_size: int = 64, num_layers: int = 2,
                  num_heads: int = 4, seed: int = 0, vocab_size: int = 600,
                  extra_corpus: Optional[Iterable[str]] = None) -> str:
    """Write a tiny random causal LM + tokenizer to ``out_dir``; returns the directory."""
    from transformers import AutoModelForCausalLM, LlamaConfig, OPTConfig

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = make_tokenizer(vocab_size, extra_corpus, arch)
    V = len(tokenizer)
    ids = dict(pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
               bos_token_id=tokenizer.bos_token_id)
    if arch == "opt":
        config = OPTConfig(vocab_size=V, hidden_size=hidden_size, num_hidden_layers=num_layers,
                           ffn_dim=hidden_size * 4, num_attention_heads=num_heads, max_position_embeddings=512,
                           word_embed_proj_dim=hidden_size, dropout=0.1, attention_dropout=0.0,
                           do_layer_norm_before=True, **ids)
    elif arch == "llama":
        config = LlamaConfig(vocab_size=V, hidden_size=hidden_size, intermediate_size=hidden_size * 2,
                             num_hidden_layers=num_layers, num_attention_heads=num_heads,
                             num_key_value_heads=max(1, num_heads // 2), max_position_embeddings=512,
                             tie_word_embeddings=True, **ids)
    else:
        raise ValueError(f"arch must be 'opt' or 'llama', got {arch!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "llmva_tiny.json").write_text(json.dumps({"arch": arch, "hidden_size": hidden_size,
                                                      "num_layers": num_layers, "seed": seed}))
    return str(out)


def prepare_synthetic_data(cfg, num_videos: int = 240, seed: int = 0, dataset: str = "gebc") -> Dict[str, Any]:
    """Make what ``cfg.datasets.<dataset>`` reads, where it reads it: synthetic clips + annotations
    (:func:`llmva_gebc.data.synthetic.generate`, skipped when the train annotation exists) and their
    features from ``cfg.model.encoder`` (:func:`llmva_gebc.extract.extract_features`, resumable).

    The dataset root is the folder above ``annotations.train``. Returns the extraction report
    (``extracted``, ``skipped``, ``failed``, ...); raises RuntimeError if a video failed.
    """
    from llmva_gebc.data import synthetic
    from llmva_gebc.data.processors import build_processor
    from llmva_gebc.extract import extract_features, list_videos
    from llmva_gebc.models.encoder import build_encoder

    ds = cfg.datasets[dataset]
    root = Path(ds.annotations.train).parent.parent
    if not Path(ds.annotations.train).is_file():
        synthetic.generate(root, num_videos=num_videos, seed=seed)
    proc_cfg = ds.vis_processor
    rep = extract_features(build_encoder(cfg.model.encoder), list_videos(ds.videos_dir or root / "videos"),
                           ds.features_dir, build_processor(proc_cfg), int(proc_cfg.num_frames), progress=False)
    if rep["failed"]:
        raise RuntimeError(f"feature extraction failed for {len(rep['failed'])} videos: {rep['failed'][:3]}")
    rep["root"] = str(root)
    return rep


def setup_tiny(cfg_path: str = "train_configs/tiny.yaml", num_videos: int = 240, seed: int = 0) -> Dict[str, str]:
    """Everything ``cfg_path`` (the tiny config) needs, at the paths it resolves to (so ``LLMVA_TINY_LLM``
    and ``LLMVA_DATA`` are honoured): the tiny LLM, synthetic GEBC clips and their tiny-encoder features.
    Existing parts are kept. Returns ``{"llm", "data", "features"}``."""
    from llmva_gebc.config import check_resolved, load_config

    cfg = load_config(cfg_path)
    check_resolved(cfg)
    llm = Path(cfg.model.llm.path)
    if not (llm / "config.json").is_file():
        make_tiny_llm(llm, seed=seed)
    rep = prepare_synthetic_data(cfg, num_videos=num_videos, seed=seed)
    return {"llm": str(llm), "data": rep["root"], "features": str(cfg.datasets.gebc.features_dir)}


def _main(argv) -> None:
    from llmva_gebc import cli

    ap = argparse.ArgumentParser(prog="python -m llmva_gebc.models.tiny", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--out", help="directory to write the tiny LLM into")
    mode.add_argument("--setup", action="store_true",
                      help="prepare everything --cfg-path needs (tiny LLM, synthetic data, features) where it "
                           "looks for them (`make tiny`)")
    ap.add_argument("--cfg-path", default="train_configs/tiny.yaml", help="config for --setup (default: %(default)s)")
    ap.add_argument("--num-videos", type=int, default=240, help="synthetic clips for --setup (default: %(default)s)")
    ap.add_argument("--arch", default="opt", choices=["opt", "llama"])
    ap.add_argument("--hidden-size", type=int, default=64)
    ap.add_argument("--num-layers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    cli.add_debug_arg(ap)
    a = ap.parse_args(argv)
    cli.setup_logging(a.debug, level=logging.WARNING)
    if a.setup:
        paths = setup_tiny(a.cfg_path, a.num_videos, a.seed)
        print(f"tiny LLM: {paths['llm']}\nsynthetic GEBC data: {paths['data']}\nfeatures: {paths['features']}")
        print(f"ready: python train.py --cfg-path {a.cfg_path}")
        return
    print(make_tiny_llm(a.out, a.arch, a.hidden_size, a.num_layers, seed=a.seed))


def main(argv=None) -> int:
    """Run the command line; a user error prints one ``error:`` line and returns 2 (see :mod:`llmva_gebc.cli`)."""
    from llmva_gebc import cli

    return cli.run(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())


def pretrain_slot_reader(llm_dir: str | Path, boundaries: Sequence[Mapping[str, Any]], num_visual_tokens: int,
                         steps: int = 300, batch_boundaries: int = 16, lr: float = 3e-3, seed: int = 0,
                         max_txt_len: int = 30, log_every: int = 50) -> List[float]:
    """Briefly pretrain a tiny LLM (text only) on GEBC captions, in the captioner's sequence layout.

    Each training sequence is ``[BOS] "Video:" <slot> <prompt> <caption> EOS`` exactly as
    :class:`~llmva_gebc.models.llmva_gebc.LLMVAGEBC` lays it out, where the ``num_visual_tokens``
    positions of the visual slot hold the token embeddings of the boundary's three captions
    (``subject status_before status_after``, truncated/padded) instead of visual tokens. The LM thus
    learns the caption language and to read what the slot says; once frozen, the adapter must learn
    to put the video's content into that slot. This stands in for a real pretrained LLM in the
    CPU demo. The weights in ``llm_dir`` are overwritten; returns the loss of every step.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmva_gebc.data.gebc import TYPES, build_prompt

    tok = AutoTokenizer.from_pretrained(str(llm_dir))
    lm = AutoModelForCausalLM.from_pretrained(str(llm_dir))
    bos = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    cache: Dict[str, List[int]] = {}

    def ids(s: str) -> List[int]:
        if s not in cache:
            cache[s] = tok(s, add_special_tokens=False).input_ids
        return cache[s]

    video = ids("Video:")
    rng = random.Random(seed)
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(lm.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20) * max(0.05, 1 - s / steps))
    lm.train()
    losses: List[float] = []
    for step in range(steps):
        seqs, labels = [], []
        for b in rng.sample(list(boundaries), min(batch_boundaries, len(boundaries))):
            slot = ids(" ".join(str(b[t]) for t in TYPES))[:num_visual_tokens]
            slot = slot + [tok.pad_token_id] * (num_visual_tokens - len(slot))
            for t in TYPES:
                prefix = [bos, *video, *slot, *ids(build_prompt(b["label"], t))]
                cap = (ids(str(b[t])) + [tok.eos_token_id])[:max_txt_len]
                seqs.append(prefix + cap)
                labels.append([-100] * len(prefix) + cap)
        L = max(map(len, seqs))
        x = torch.full((len(seqs), L), tok.pad_token_id)  # (N, L), right-padded
        y = torch.full((len(seqs), L), -100)
        attn = torch.zeros((len(seqs), L), dtype=torch.long)
        for i, (s, lab) in enumerate(zip(seqs, labels)):
            x[i, : len(s)] = torch.tensor(s)
            y[i, : len(lab)] = torch.tensor(lab)
            attn[i, : len(s)] = 1
        loss = lm(input_ids=x, attention_mask=attn, labels=y).loss
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if log_every and (step % log_every == 0 or step == steps - 1):
            log.info("pretrain tiny LLM: step %d/%d loss %.4f", step + 1, steps, loss.item())
    lm.save_pretrained(str(llm_dir))
    return losses
