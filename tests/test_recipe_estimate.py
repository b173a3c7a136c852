"""benchmarks/recipe_estimate.py: the README's cost table comes from flops.py and scales with the LLM."""
from __future__ import annotations

from benchmarks import recipe_estimate as R


def test_estimates_scale_with_the_llm_and_the_gpu(capsys):
    a = [R.estimate(n, 312e12, 2e12, 0.35) for n in R.OPT]
    assert [round(e["params_b"], 1) for e in a] == [2.7, 6.7, 12.9]  # the released OPT sizes
    for key in ("train_tflop_per_step", "train_gpu_h", "gen_gpu_h", "mem_gb"):
        assert a[0][key] < a[1][key] < a[2][key], key
    fast = R.estimate("OPT-13B", 2 * 312e12, 2e12, 0.35)
    assert abs(fast["train_gpu_h"] - a[2]["train_gpu_h"] / 2) < 1e-9  # FLOP-bound: halves with twice the peak
    assert a[2]["train_steps"] == 5 * 26_626 * 3 / 16
    assert R.main(["--gpu-tflops", "989", "--gpu-tbps", "3.35"]) == 0
    out = capsys.readouterr().out
    assert "ESTIMATES" in out and "| OPT-13B |" in out
