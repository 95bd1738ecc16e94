"""One run, one table: clipping fused into Adam, the norm pass, and FlatParams, against torch.

    python bench/clip_roofline.py [--n 16000000] [--threads 2] [--rounds 7] [--many 1000x1000]

Measured round-robin in the same run (fastgd.timing):

- large (n float32 in one array): a stream kernel with Adam's pattern (the bandwidth), fastgd's
  norm pass alone (4 bytes/element), plain Adam (28), fused clip+Adam (32: norm pass + update
  with grad_scale = coef; gradients never rewritten), and torch's fused Adam alone and after
  ``clip_grad_norm_(foreach=True)``. GB/s columns use each row's own bytes/element.
- many (1,000 tensors of 1,000): fastgd Adam and clip+Adam over a FlatParams (one kernel call)
  and over the 1,000 separate arrays, against torch fused Adam (and clip + fused) on the same
  1,000 tensors.
"""
import argparse

import numpy as np

import fastgd
from fastgd.backends import kernel
from fastgd.timing import round_robin


def _torch_adam(torch, arrays, grads, clip):
    tensors = []
    for p, g in zip(arrays, grads):
        t = torch.from_numpy(p.copy()).requires_grad_()
        t.grad = torch.from_numpy(g.copy())
        tensors.append(t)
    opt = torch.optim.Adam(tensors, lr=1e-9, fused=True)
    if not clip:
        return opt.step

    def step():
        torch.nn.utils.clip_grad_norm_(tensors, 1.0, foreach=True)
        opt.step()
    return step


def _table(title, times, bytes_of, n, bw, peer):
    print(f"\n{title}")
    print(f"{'':34s} {'ms':>8s} {'GB/s':>7s} {'of bw':>6s} {'vs ' + peer:>22s}")
    for name, t in times.items():
        b = bytes_of.get(name)
        gbs = b * n / t if b else float("nan")
        ratio = times[peer] / t if peer in times else float("nan")
        print(f"{name:34s} {t * 1e3:8.3f} {gbs / 1e9:7.1f} {gbs / bw if bw else float('nan'):6.2f} {ratio:22.2f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=float, default=16e6)
    ap.add_argument("--threads", default="2")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--many", default="1000x1000", help="TENSORSxELEMENTS for the FlatParams table")
    args = ap.parse_args()
    n = int(args.n)
    k, m = (int(x) for x in args.many.split("x"))
    rng = np.random.default_rng(0)
    g = rng.standard_normal(n).astype(np.float32)
    p, mom, var = (np.zeros(n, np.float32) for _ in range(3))
    stream = kernel("stream", "cython")
    norm = kernel("norm_partial")
    try:
        import torch
    except ImportError:
        torch = None
    print(f"clip + Adam, fastgd {fastgd.__version__}, backend {fastgd.get_backend()}")
    for threads in [int(t) for t in args.threads.split(",")]:
        fastgd.set_num_threads(threads)
        plain = fastgd.Adam([p.copy()], lr=1e-9)
        clipped = fastgd.Adam([p.copy()], lr=1e-9, max_grad_norm=1.0)
        cands = {
            "stream (Adam pattern, 28 B)": lambda: stream([p, mom, var], g),
            "fastgd norm pass (4 B)": lambda: norm(g, g, False, 2.0),
            "fastgd Adam (28 B)": lambda: plain.step([g]),
            "fastgd clip+Adam fused (32 B)": lambda: clipped.step([g]),
        }
        bytes_of = {"stream (Adam pattern, 28 B)": 28, "fastgd norm pass (4 B)": 4,
                    "fastgd Adam (28 B)": 28, "fastgd clip+Adam fused (32 B)": 32}
        if torch is not None:
            torch.set_num_threads(threads)
            cands["torch fused Adam"] = _torch_adam(torch, [p], [g], False)
            cands["torch clip(foreach)+fused Adam"] = _torch_adam(torch, [p], [g], True)
        times = round_robin(cands, rounds=args.rounds, min_seconds=0.05)
        bw = 28 * n / times["stream (Adam pattern, 28 B)"]
        peer = "torch clip(foreach)+fused Adam" if torch is not None else "fastgd Adam (28 B)"
        _table(f"threads={threads}, n={n:,} float32: bandwidth {bw / 1e9:.1f} GB/s; clip+Adam / Adam = "
               f"{times['fastgd clip+Adam fused (32 B)'] / times['fastgd Adam (28 B)']:.2f}",
               times, bytes_of, n, bw, peer)

        arrays = [rng.standard_normal(m).astype(np.float32) for _ in range(k)]
        grads = [rng.standard_normal(m).astype(np.float32) for _ in range(k)]
        flat, flat_c = fastgd.FlatParams(arrays), fastgd.FlatParams(arrays)
        for f in (flat, flat_c):
            for view, gr in zip(f.grads, grads):
                view[...] = gr
        sep = [a.copy() for a in arrays]
        opt_flat = fastgd.Adam(flat, lr=1e-9)
        opt_flat_c = fastgd.Adam(flat_c, lr=1e-9, max_grad_norm=1.0)
        opt_sep = fastgd.Adam(sep, lr=1e-9)
        many = {
            "fastgd FlatParams Adam": opt_flat.step,
            "fastgd FlatParams clip+Adam": opt_flat_c.step,
            f"fastgd Adam ({k} arrays)": lambda: opt_sep.step(grads),
        }
        if torch is not None:
            many["torch fused Adam"] = _torch_adam(torch, arrays, grads, False)
            many["torch clip(foreach)+fused Adam"] = _torch_adam(torch, arrays, grads, True)
        times = round_robin(many, rounds=args.rounds, min_seconds=0.05)
        bytes_of = {"fastgd FlatParams Adam": 28, "fastgd FlatParams clip+Adam": 32,
                    f"fastgd Adam ({k} arrays)": 28}
        _table(f"threads={threads}, {k} tensors of {m} float32", times, bytes_of, k * m, bw,
               "torch fused Adam" if torch is not None else f"fastgd Adam ({k} arrays)")


if __name__ == "__main__":
    main()
