"""One run, one table: Adam (16M float32) against the memory roofline, the reference and torch.

    python bench/adam_roofline.py [--n 16000000] [--threads 1,2] [--rounds 7]

Measures, round-robin in the same run: a stream kernel with Adam's access pattern (read p, g, m,
v; write p, m, v: 28 bytes/element), fastgd's Adam on each compiled backend, the NumPy
reference, and torch's fused and foreach Adam when torch is installed. Prints time, GB/s,
fraction of the stream bandwidth, and speedups over the reference and over torch fused.
"""
import argparse

import numpy as np

import fastgd
from fastgd import functional as F
from fastgd.backends import kernel
from fastgd.timing import round_robin

BYTES = 28


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=float, default=16e6)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    n = int(args.n)
    rng = np.random.default_rng(0)
    p, g, m = (rng.standard_normal(n).astype(np.float32) for _ in range(3))
    v = np.abs(rng.standard_normal(n)).astype(np.float32)
    arrays = [a.copy() for a in (p, g, m, v)]
    stream = kernel("stream", "cython")
    try:
        import torch
    except ImportError:
        torch = None
    print(f"Adam, n={n:,} float32, {BYTES} bytes/element; fastgd {fastgd.__version__}")
    for threads in [int(t) for t in args.threads.split(",")]:
        fastgd.set_num_threads(threads)
        cands = {"stream (Adam pattern)": lambda: stream([arrays[0], arrays[2], arrays[3]], arrays[1])}
        for be in fastgd.available_backends():
            def run(be=be):
                with fastgd.use_backend(be):
                    F.adam_(p, g, m, v, step=10, lr=1e-9)
            cands[f"fastgd {be}"] = run
        if torch is not None:
            torch.set_num_threads(threads)
            for mode in ("fused", "foreach"):
                tp = torch.from_numpy(p.copy()).requires_grad_()
                tp.grad = torch.from_numpy(g)
                opt = torch.optim.Adam([tp], lr=1e-9, **{mode: True})
                cands[f"torch {mode}"] = opt.step
        times = round_robin(cands, rounds=args.rounds, min_seconds=0.05)
        bw = BYTES * n / times["stream (Adam pattern)"]
        ref = times.get("fastgd numpy")
        fused = times.get("torch fused")
        print(f"\nthreads={threads}: stream bandwidth {bw / 1e9:.1f} GB/s")
        print(f"{'':24s} {'ms':>8s} {'GB/s':>7s} {'of bw':>6s} {'vs numpy':>9s} {'vs torch fused':>15s}")
        for name, t in times.items():
            gbs = BYTES * n / t
            print(f"{name:24s} {t * 1e3:8.2f} {gbs / 1e9:7.1f} {gbs / bw:6.2f} "
                  f"{(ref / t if ref else float('nan')):9.1f} {(fused / t if fused else float('nan')):15.2f}")


if __name__ == "__main__":
    main()
