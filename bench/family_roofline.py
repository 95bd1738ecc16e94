"""One run, one table per rule: every rule of fastgd.rules.RULES against its memory roofline and torch.

    python bench/family_roofline.py [--rules sgd,lion,...] [--n 16000000] [--threads 1,2] [--rounds 7]

For each rule, round-robin in the same run: a stream kernel with the rule's access pattern (read
the gradient, read and write the rule's ``written`` arrays: ``bytes_per_element`` bytes/element),
the rule's optimizer on each compiled backend (and the NumPy reference unless --no-reference),
and torch's peer (fused where torch has a fused CPU kernel, and foreach) when torch is installed.
Prints time, GB/s, fraction of the stream bandwidth, and speedups over the reference and over
torch's fastest implementation of the rule.
"""
import argparse

import numpy as np

import fastgd
from fastgd.backends import kernel
from fastgd.rules import RULES
from fastgd.timing import round_robin


def _candidates(rule, n, rng, torch, reference):
    g = (rng.standard_normal(n) * 1e-3).astype(np.float32)
    stream_arrays = [rng.standard_normal(n).astype(np.float32) for _ in range(rule.written)]
    stream = kernel("stream", "cython")
    cands = {"stream (rule pattern)": lambda: stream(stream_arrays, g)}
    lr = {"lr": 1e-9}
    for be in fastgd.available_backends():
        if be == "numpy" and not reference:
            continue
        params = [rng.standard_normal(n).astype(np.float32)]
        opt = rule.make(params, **lr)
        with fastgd.use_backend(be):
            opt.step([g])  # state allocated, kernels compiled

        def run(be=be, opt=opt):
            with fastgd.use_backend(be):
                opt.step([g])
        cands[f"fastgd {be}"] = run
    if torch is not None and rule.torch:
        for mode in (("fused", "foreach") if rule.torch_fused else ("foreach",)):
            tp = torch.from_numpy(rng.standard_normal(n).astype(np.float32)).requires_grad_()
            tp.grad = torch.from_numpy(g)
            opt = getattr(torch.optim, rule.torch)([tp], **{**rule.options, **lr, mode: True})
            opt.step()
            cands[f"torch {mode}"] = opt.step
    return cands


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rules", default=",".join(RULES), help="comma-separated names from fastgd.rules")
    ap.add_argument("--n", type=float, default=16e6)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--no-reference", action="store_true", help="skip the (slow) NumPy reference")
    args = ap.parse_args()
    n = int(args.n)
    names = [r.strip() for r in args.rules.split(",") if r.strip()]
    unknown = [r for r in names if r not in RULES]
    if unknown:
        ap.error(f"unknown rule(s) {unknown}; known: {', '.join(RULES)}")
    try:
        import torch
    except ImportError:
        torch = None
    rng = np.random.default_rng(0)
    print(f"n={n:,} float32; fastgd {fastgd.__version__}; backends {', '.join(fastgd.available_backends())}")
    for threads in [int(t) for t in args.threads.split(",")]:
        fastgd.set_num_threads(threads)
        if torch is not None:
            torch.set_num_threads(threads)
        for name in names:
            rule = RULES[name]
            cands = _candidates(rule, n, rng, torch, not args.no_reference)
            times = round_robin(cands, rounds=args.rounds, min_seconds=0.05)
            nbytes = rule.bytes_per_element * n
            bw = nbytes / times["stream (rule pattern)"]
            ref = times.get("fastgd numpy")
            peers = [t for k, t in times.items() if k.startswith("torch")]
            best_torch = min(peers) if peers else None
            print(f"\n{name} ({rule.optimizer} {rule.options}), {rule.bytes_per_element} B/elem, "
                  f"threads={threads}: stream {bw / 1e9:.1f} GB/s")
            print(f"{'':24s} {'ms':>8s} {'GB/s':>7s} {'of bw':>6s} {'vs numpy':>9s} {'vs best torch':>14s}")
            for cand, t in times.items():
                gbs = nbytes / t
                print(f"{cand:24s} {t * 1e3:8.2f} {gbs / 1e9:7.1f} {gbs / bw:6.2f} "
                      f"{(ref / t if ref else float('nan')):9.1f} "
                      f"{(best_torch / t if best_torch else float('nan')):14.2f}")
            del cands


if __name__ == "__main__":
    main()
