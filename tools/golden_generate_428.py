"""Golden caption-decoding vectors from the reference: transformers 4.28.0 ``generate``.

LLMVA-GEBC ran under transformers 4.28.0; its captions come from
``llm.generate(inputs_embeds=..., attention_mask=..., num_beams=k, max_length, min_length,
repetition_penalty, length_penalty, do_sample=False)`` for a batch of one. This script runs exactly that
call on tiny random OPT and LLaMA models that it builds itself (weights filled from seeds by
:func:`fill_weights`, so the tests rebuild bit-identical models under the installed transformers), with
LM heads tilted towards EOS (captions of many lengths, some beams cut at the limit), and writes:

* ``tests/data/golden_tokenizer.json`` — a small byte-level BPE tokenizer (trained here, with tokens
  such as " ," and " 's" whose text needs 4.28's ``clean_up_tokenization_spaces``);
* ``tests/data/golden_generate_428.json`` — the models, the prompts (regenerated from seeds) and, per
  case, the ids after the dummy start column and the text ``batch_decode(..., skip_special_tokens=True)``
  + ``strip()`` (the original's post-processing).

Run it (from the repository root) in a side virtual environment; torch must be the project's version so
that the seeded ``torch.randn`` streams are identical::

    python3 -m venv /work/venv428
    /work/venv428/bin/pip install -q torch==2.13.0 transformers==4.28.0 tokenizers==0.13.3 'numpy<2' 'huggingface_hub<0.20'
    /work/venv428/bin/python tools/golden_generate_428.py --out tests/data

Only this module's helpers (:func:`fill_weights`, :func:`prompt_embeds`, :func:`build_config`) are imported
by ``tests/test_decoding_golden.py``; they work under any transformers version.
"""
from __future__ import annotations

import argparse
import itertools
import json
import random
import zlib
from pathlib import Path
from typing import Dict, List, Sequence

import torch

SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]
CORPUS = """a man 's hand , then the ball . he is n't there . the woman 's dog runs , and it 's fast .
a boy picks up the red ball , then throws it . she 's walking ! is he running ? they 're playing .
the man 's shirt is blue , the girl 's hat is red . we 've seen it . i 'm here , he 'll go .
a person is dancing on the stage , then stops . the camera moves left , and the scene changes .
"""
HIDDEN, LAYERS, HEADS = 32, 2, 4
# (arch, eos tilt): tilt 0 ends captions rarely (most are cut at max_length), larger tilts end them
# after a few tokens, so hypotheses finish at many different lengths.
VARIANTS = [("opt", 0.0), ("opt", 6.0), ("opt", 9.0), ("llama", 0.0), ("llama", 6.0), ("llama", 9.0)]
GRID = list(itertools.product([1, 2, 4], [1, 5, 12], [1.0, 1.3], [1.0, 0.6]))  # beams, min_len, rep, lp


def build_config(arch: str, vocab_size: int, ids: Dict[str, int]) -> Dict:
    """Config kwargs understood by both transformers 4.28 and 5.x (``OPTConfig`` / ``LlamaConfig``)."""
    common = dict(vocab_size=vocab_size, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                  max_position_embeddings=128, tie_word_embeddings=False, **ids)
    if arch == "opt":
        return dict(common, ffn_dim=4 * HIDDEN, word_embed_proj_dim=HIDDEN, do_layer_norm_before=True,
                    dropout=0.0, attention_dropout=0.0)
    return dict(common, intermediate_size=2 * HIDDEN, rms_norm_eps=1e-6)


def _gen(seed: int, name: str) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))


@torch.no_grad()
def fill_weights(model: torch.nn.Module, seed: int, eos_id: int, tilt: float) -> None:
    """Deterministic weights by parameter name (independent of the library's init): N(0, 1/fan_in)
    matrices, N(0, 1) token embeddings sharing a common direction ``v``, norms 1 + N(0, 0.1²), biases
    N(0, 0.1²); the LM head's EOS row gets ``tilt · v`` so EOS becomes likely after a few tokens."""
    D = model.get_input_embeddings().weight.shape[1]
    v = torch.randn(D, generator=_gen(seed, "common direction"))
    v = v / v.norm()
    for name, p in sorted(model.named_parameters()):
        g = _gen(seed, name)
        if p.ndim == 1:
            base = 1.0 if ("norm" in name and name.endswith("weight")) else 0.0
            p.copy_(base + 0.1 * torch.randn(p.shape, generator=g))
        elif "embed_tokens" in name:
            p.copy_(torch.randn(p.shape, generator=g) + 2.0 * v)
        elif "embed_positions" in name:
            p.copy_(0.5 * torch.randn(p.shape, generator=g))
        elif name.startswith("lm_head"):
            p.copy_(torch.randn(p.shape, generator=g) * (3.0 / D ** 0.5))
            p[eos_id] += tilt * v
        else:
            p.copy_(torch.randn(p.shape, generator=g) / p.shape[1] ** 0.5)


def prompt_embeds(seed: int, prefix_lens: Sequence[int], tail_lens: Sequence[Sequence[int]], dim: int):
    """Prompts of one batch as (prefix (Lp, D), [tails (Lt, D)]) per group; a prompt = prefix + tail."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for lp, lts in zip(prefix_lens, tail_lens):
        prefix = torch.randn(lp, dim, generator=g)
        out.append((prefix, [torch.randn(lt, dim, generator=g) for lt in lts]))
    return out


def _tokenizer(out: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=200, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=[])
    lines = [x for x in CORPUS.splitlines() if x.strip()]
    tok.train_from_iterator(lines + " ".join(lines).split(), trainer=trainer)
    path = out / "golden_tokenizer.json"
    tok.save(str(path))
    return PreTrainedTokenizerFast(tokenizer_file=str(path), bos_token="</s>", eos_token="</s>",
                                   pad_token="<pad>", unk_token="<unk>")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="tests/data")
    ap.add_argument("--seed", type=int, default=11)
    a = ap.parse_args(argv)
    import transformers
    from transformers import AutoModelForCausalLM, LlamaConfig, OPTConfig

    assert transformers.__version__ == "4.28.0", f"run under transformers 4.28.0, not {transformers.__version__}"
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    tok = _tokenizer(out)
    ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    rng = random.Random(a.seed)
    grid = GRID[:]
    rng.shuffle(grid)
    grid = (grid * 2)[: 8 * len(VARIANTS)]
    models, batches, cases = [], [], []
    for vi, (arch, tilt) in enumerate(VARIANTS):
        cfg = build_config(arch, len(tok), ids)
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config((OPTConfig if arch == "opt" else LlamaConfig)(**cfg)).eval()
        mseed = 100 + vi
        fill_weights(model, mseed, tok.eos_token_id, tilt)
        probe = prompt_embeds(mseed, [5], [[1]], HIDDEN)[0]
        with torch.no_grad():
            logits = model(inputs_embeds=torch.cat([probe[0], probe[1][0]])[None]).logits[0, -1]
        models.append({"arch": arch, "tilt": tilt, "seed": mseed, "config": cfg,
                       "probe_logits": [round(float(x), 5) for x in logits[:16]]})
        for setting in grid[8 * vi: 8 * vi + 8]:
            beams, min_len, rep, lp = setting
            max_len = rng.choice([30, 30, 16])
            bseed = rng.randrange(10 ** 6)
            sizes = [3, 3, 2]
            plens = [rng.randint(1, 12) for _ in sizes]
            tlens = [[rng.randint(1, 5) for _ in range(n)] for n in sizes]
            bi = len(batches)
            batches.append({"model": vi, "num_beams": beams, "max_length": max_len, "min_length": min_len,
                            "repetition_penalty": rep, "length_penalty": lp, "seed": bseed,
                            "prefix_lens": plens, "tail_lens": tlens})
            for gi, (prefix, tails) in enumerate(prompt_embeds(bseed, plens, tlens, HIDDEN)):
                for ti, tail in enumerate(tails):
                    emb = torch.cat([prefix, tail])[None]  # (1, L, D)
                    res = model.generate(inputs_embeds=emb, attention_mask=torch.ones(emb.shape[:2], dtype=torch.long),
                                         num_beams=beams, max_length=max_len, min_length=min_len,
                                         repetition_penalty=rep, length_penalty=lp, do_sample=False,
                                         **ids)[0]
                    assert int(res[0]) == tok.bos_token_id  # the dummy start column
                    text = tok.batch_decode(res[None], skip_special_tokens=True)[0].strip()
                    cases.append({"batch": bi, "group": gi, "member": ti, "ids": res[1:].tolist(), "text": text})
    doc = {"transformers": transformers.__version__, "tokenizer": "golden_tokenizer.json",
           "special_ids": ids, "models": models, "batches": batches, "cases": cases}
    (out / "golden_generate_428.json").write_text(json.dumps(doc, separators=(",", ":")))
    lens = [len(c["ids"]) for c in cases]
    cut = sum(1 for c, b in ((c, batches[c["batch"]]) for c in cases) if len(c["ids"]) == b["max_length"] - 1)
    raw = [tok.batch_decode([[tok.bos_token_id] + c["ids"]], skip_special_tokens=True,
                            clean_up_tokenization_spaces=False)[0].strip() for c in cases]
    print(f"{len(cases)} cases; new-token lengths min {min(lens)} max {max(lens)}; cut at max_length: {cut}; "
          f"texts changed by the clean-up: {sum(r != c['text'] for r, c in zip(raw, cases))}")
    print("length histogram:", sorted(__import__('collections').Counter(lens).items()))


if __name__ == "__main__":
    main()
