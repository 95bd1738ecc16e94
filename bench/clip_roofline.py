"""One run, one table: clipping fused into Adam, the norm pass, and FlatParams, against torch.

    python bench/clip_roofline.py [--n 16000000] [--threads 1,2] [--rounds 9] [--many 1000x1000]
                                  [--backends cython,numba]

Measured round-robin in the same run (fastgd.timing), every backend in the same rounds:

- large (n float32 in one array): two stream kernels, the yardsticks: Adam's pattern (28
  bytes/element) and read-only (4, a norm's pattern); per backend, the norm pass alone (4),
  plain Adam (28) and fused clip+Adam (32: norm pass + update with grad_scale = coef; the
  gradients are never rewritten); torch's fused Adam alone and after
  ``clip_grad_norm_(foreach=True)``. "of bw" is a row's GB/s (its own bytes/element) over the
  yardstick with its pattern: the read-only stream for the norm pass, Adam's for the rest.
- many (1,000 tensors of 1,000): Adam and clip+Adam over a FlatParams (one kernel call) and
  over the 1,000 separate arrays, against torch fused Adam (and clip + fused) on the same
  1,000 tensors.
"""
import argparse

import numpy as np

import fastgd
from fastgd.backends import available_backends, kernel, use_backend
from fastgd.timing import round_robin

ADAM_STREAM, READ_STREAM = "stream: Adam pattern (28 B)", "stream: read-only (4 B)"


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


def _on(backend, fn):
    """fn run with ``backend`` active (optimizers dispatch to the active backend per step)."""
    def run():
        with use_backend(backend):
            fn()
    return run


TORCH, TORCH_CLIP = "torch fused Adam", "torch clip(foreach)+fused Adam"


def _table(title, times, rows, n):
    """rows: name -> (bytes/element or None, yardstick row or None, torch peer row or None)."""
    print(f"\n{title}")
    print(f"{'':34s} {'ms':>8s} {'GB/s':>7s} {'of bw':>6s}  {'x torch':>7s}  torch peer")
    nan = float("nan")
    for name, t in times.items():
        b, yard, peer = rows.get(name, (None, None, None))
        gbs = b * n / t if b else nan
        of_bw = gbs / (rows[yard][0] * n / times[yard]) if yard else nan
        ratio = times[peer] / t if peer in times else nan
        print(f"{name:34s} {t * 1e3:8.3f} {gbs / 1e9:7.1f} {of_bw:6.2f}  {ratio:7.2f}  "
              f"{peer if peer in times else ''}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=float, default=16e6)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--many", default="1000x1000", help="TENSORSxELEMENTS for the FlatParams table")
    ap.add_argument("--backends", default=",".join(b for b in ("cython", "numba")
                                                  if b in available_backends()))
    args = ap.parse_args()
    n = int(args.n)
    k, m = (int(x) for x in args.many.split("x"))
    backends = args.backends.split(",")
    rng = np.random.default_rng(0)
    g = rng.standard_normal(n).astype(np.float32)
    p, mom, var = (np.zeros(n, np.float32) for _ in range(3))
    stream = kernel("stream", "cython")
    try:
        import torch
    except ImportError:
        torch = None
    print(f"clip + Adam, fastgd {fastgd.__version__}, backends {', '.join(backends)}")
    for threads in [int(t) for t in args.threads.split(",")]:
        fastgd.set_num_threads(threads)
        cands = {ADAM_STREAM: lambda: stream([p, mom, var], g), READ_STREAM: lambda: stream([], g)}
        rows = {ADAM_STREAM: (28, ADAM_STREAM, None), READ_STREAM: (4, READ_STREAM, None)}
        for b in backends:
            norm = kernel("norm_partial", b)
            plain = fastgd.Adam([p.copy()], lr=1e-9)
            clipped = fastgd.Adam([p.copy()], lr=1e-9, max_grad_norm=1.0)
            cands[f"{b} norm pass (4 B)"] = lambda norm=norm: norm(g, g, False, 2.0)
            cands[f"{b} Adam (28 B)"] = _on(b, lambda o=plain: o.step([g]))
            cands[f"{b} clip+Adam fused (32 B)"] = _on(b, lambda o=clipped: o.step([g]))
            rows[f"{b} norm pass (4 B)"] = (4, READ_STREAM, None)
            rows[f"{b} Adam (28 B)"] = (28, ADAM_STREAM, TORCH)
            rows[f"{b} clip+Adam fused (32 B)"] = (32, ADAM_STREAM, TORCH_CLIP)
        if torch is not None:
            torch.set_num_threads(threads)
            cands[TORCH] = _torch_adam(torch, [p], [g], False)
            cands[TORCH_CLIP] = _torch_adam(torch, [p], [g], True)
            rows[TORCH_CLIP] = (None, None, TORCH)
        times = round_robin(cands, rounds=args.rounds, min_seconds=0.05)
        print(f"\nthreads={threads}, n={n:,} float32: Adam-pattern stream "
              f"{28 * n / times[ADAM_STREAM] / 1e9:.1f} GB/s, read-only stream "
              f"{4 * n / times[READ_STREAM] / 1e9:.1f} GB/s")
        for b in backends:
            print(f"  {b}: clip+Adam / Adam = "
                  f"{times[f'{b} clip+Adam fused (32 B)'] / times[f'{b} Adam (28 B)']:.2f}")
        _table("large", times, rows, n)

        arrays = [rng.standard_normal(m).astype(np.float32) for _ in range(k)]
        grads = [rng.standard_normal(m).astype(np.float32) for _ in range(k)]
        many, rows = {}, {}
        for b in backends:
            flat, flat_c = fastgd.FlatParams(arrays), fastgd.FlatParams(arrays)
            for f in (flat, flat_c):
                for view, gr in zip(f.grads, grads):
                    view[...] = gr
            sep = [a.copy() for a in arrays]
            opt_flat = fastgd.Adam(flat, lr=1e-9)
            opt_flat_c = fastgd.Adam(flat_c, lr=1e-9, max_grad_norm=1.0)
            opt_sep = fastgd.Adam(sep, lr=1e-9)
            many[f"{b} FlatParams Adam"] = _on(b, opt_flat.step)
            many[f"{b} FlatParams clip+Adam"] = _on(b, opt_flat_c.step)
            many[f"{b} Adam ({k} arrays)"] = _on(b, lambda o=opt_sep: o.step(grads))
            rows[f"{b} FlatParams Adam"] = (28, None, TORCH)
            rows[f"{b} FlatParams clip+Adam"] = (32, None, TORCH_CLIP)
            rows[f"{b} Adam ({k} arrays)"] = (28, None, TORCH)
        if torch is not None:
            many[TORCH] = _torch_adam(torch, arrays, grads, False)
            many[TORCH_CLIP] = _torch_adam(torch, arrays, grads, True)
            rows[TORCH_CLIP] = (None, None, TORCH)
        times = round_robin(many, rounds=args.rounds, min_seconds=0.05)
        _table(f"threads={threads}, {k} tensors of {m} float32 (in cache: no yardstick)",
               times, rows, k * m)


if __name__ == "__main__":
    main()
