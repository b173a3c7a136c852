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
from pathlib import Path
from typing import Iterable, Optional

import torch

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


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="directory to write the tiny LLM into")
    ap.add_argument("--arch", default="opt", choices=["opt", "llama"])
    ap.add_argument("--hidden-size", type=int, default=64)
    ap.add_argument("--num-layers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    print(make_tiny_llm(a.out, a.arch, a.hidden_size, a.num_layers, seed=a.seed))


if __name__ == "__main__":
    main()
