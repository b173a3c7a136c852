"""Where a generate call's time goes: torch.profiler over one call of the project's decoder at the base
size (the benchmark's batch of 6, 4 beams, exactly 20 new tokens), unshared then shared::

    OMP_NUM_THREADS=1 python benchmarks/decoder_profile.py [--cache-dir build/bench] [--backend own|hf]

Prints the top operators by self CPU time (findings: ``benchmarks/decoder_profile.md``).
"""
import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks import run as R  # noqa: E402
from benchmarks import workload  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache-dir", default=str(R.REPO / "build" / "bench"))
    ap.add_argument("--backend", default="own", choices=["own", "hf"])
    a = ap.parse_args()
    torch.set_num_threads(1)
    args = argparse.Namespace(quick=False, device="cpu", cache_dir=a.cache_dir, threads=1)
    ctx = R.Ctx(args, "cpu", R.Plan(False, "cpu"))
    ctx.info = R.machine_info("cpu")
    R.setup_size(ctx, "base")
    model, cfg = ctx.sizes["base"]["model"].eval(), ctx.sizes["base"]["cfg"]
    batch = workload.make_batch(cfg, workload.SIZES["base"], 6, seed=1, with_caption=False)
    kw = dict(num_beams=4, max_new_tokens=20, min_length=21, backend=a.backend)
    for share in (False, True):
        model.generate(batch, share_prefix=share, **kw)  # warm-up
        with torch.profiler.profile() as prof:
            t = time.perf_counter()
            model.generate(batch, share_prefix=share, **kw)
            t = time.perf_counter() - t
        print(f"backend={a.backend} share_prefix={share}: {t:.2f} s per call")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


if __name__ == "__main__":
    main()
