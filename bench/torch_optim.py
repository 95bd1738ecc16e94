"""fastgd.torch against torch.optim: optimizer step time, same run, same threads.

    python bench/torch_optim.py [--threads 2] [--rounds 5] [--only big,many,mlp,clip,transformer]

Scenarios (step time only: the gradients are made once and left in place):
  big   one tensor of 16M float32                  ft.AdamW            vs torch AdamW(fused=True)
  many  1,000 tensors of 1,000                     ft.AdamW(flatten)   vs torch AdamW(fused=True)
  mlp   an MLP of ~10M parameters (4 Linear)       ft.AdamW(flatten)   vs torch AdamW(fused=True)
  transformer  147 tensors, 27.6M parameters (12 blocks of 384/1536, a 16,384-token embedding)
                                                   ft.AdamW and ft.AdamW(flatten) vs torch AdamW(fused=True)
  clip  the MLP, clip to norm 1 then step          ft.AdamW(max_grad_norm=1, flatten)
                                                   vs torch clip_grad_norm_ + AdamW(fused=True)
big and transformer also time a stream moving Adam's bytes over as many elements (the floor).
Each row is the median over round-robin rounds (fastgd.timing.round_robin), so drift on a shared
machine hits every candidate of a scenario alike; only ratios within one scenario mean anything.
"""
import argparse

import torch

import fastgd
import fastgd.torch as ft
from fastgd.timing import round_robin

LR = 1e-9  # tiny: the parameters barely move however many steps are timed


def _params(shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for s in shapes:
        p = torch.nn.Parameter(torch.randn(*s, generator=g) * 0.01)
        p.grad = torch.randn(*s, generator=g)
        out.append(p)
    return out


def _mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(784, 2048), torch.nn.ReLU(), torch.nn.Linear(2048, 2048),
                               torch.nn.ReLU(), torch.nn.Linear(2048, 2048), torch.nn.ReLU(),
                               torch.nn.Linear(2048, 10))


def _mlp_with_grads():
    model = _mlp()
    x = torch.randn(64, 784)
    model(x).square().mean().backward()
    return model


def _transformer_shapes(d=384, ff=1536, blocks=12, vocab=16_384):
    """The parameter shapes of a GPT-like model: embedding, per block fused qkv and output
    projections, two LayerNorms, the MLP (weights and biases), a final LayerNorm."""
    shapes = [(vocab, d)]
    for _ in range(blocks):
        shapes += [(3 * d, d), (3 * d,), (d, d), (d,), (d,), (d,), (ff, d), (ff,), (d, ff), (d,), (d,), (d,)]
    return shapes + [(d,), (d,)]


def scenario(name):
    """{label: step callable} for one scenario; every candidate has its own parameters."""
    if name == "big":
        shapes = [(16_000_000,)]
        mk = lambda: _params(shapes)  # noqa: E731
        flat = False
    elif name == "many":
        shapes = [(1000,)] * 1000
        mk = lambda: _params(shapes)  # noqa: E731
        flat = True
    elif name == "transformer":
        shapes = _transformer_shapes()
        mk = lambda: _params(shapes)  # noqa: E731
        flat = True
    else:
        mk = lambda: list(_mlp_with_grads().parameters())  # noqa: E731
        flat = True
    clip = name == "clip"
    cands = {}
    tp = mk()
    topt = torch.optim.AdamW(tp, lr=LR, fused=True)
    if clip:
        def torch_step(tp=tp, topt=topt):
            torch.nn.utils.clip_grad_norm_(tp, 1.0)
            topt.step()
        cands["torch clip_grad_norm_ + AdamW(fused)"] = torch_step
    else:
        cands["torch AdamW(fused)"] = topt.step
    tp2 = mk()
    fopt = torch.optim.AdamW(tp2, lr=LR, foreach=True)
    cands["torch AdamW(foreach)" + (" + clip" if clip else "")] = (
        (lambda: (torch.nn.utils.clip_grad_norm_(tp2, 1.0, foreach=True), fopt.step())) if clip else fopt.step)
    kw = {"max_grad_norm": 1.0} if clip else {}
    fp = mk()
    cands["ft.AdamW" + (" max_grad_norm" if clip else "")] = ft.AdamW(fp, lr=LR, **kw).step
    if flat:
        fp2 = mk()
        cands["ft.AdamW flatten" + (" max_grad_norm" if clip else "")] = ft.AdamW(fp2, lr=LR, flatten=True, **kw).step
    if name in ("big", "transformer"):
        # the floor: Adam's traffic (param, exp_avg, exp_avg_sq read and written, the grad
        # read: 28 bytes a float32 element) over as many elements, same rounds
        import numpy as np
        from fastgd.benchmarks import Stream
        n = sum(int(np.prod(s)) for s in shapes)
        cands["stream, Adam's bytes"] = Stream(n).case(3, np.float32)[0]
    return cands


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--only", default="big,many,mlp,clip")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    fastgd.set_num_threads(args.threads)
    print(f"fastgd {fastgd.__version__} ({fastgd.get_backend()}), torch {torch.__version__}, "
          f"{args.threads} threads, medians of {args.rounds} round-robin rounds")
    for name in args.only.split(","):
        cands = scenario(name)
        times = round_robin(cands, rounds=args.rounds, min_seconds=0.05)
        base = next(iter(times.values()))
        floor = times.get("stream, Adam's bytes")
        print(f"\n[{name}]")
        for label, t in times.items():
            frac = f"   {floor / t:5.2f} of the stream" if floor else ""
            print(f"  {label:42s} {t * 1e3:9.3f} ms   {base / t:6.2f}x vs torch fused{frac}")


if __name__ == "__main__":
    main()
