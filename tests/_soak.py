"""The soak run behind tests/test_soak.py (in a subprocess, so RSS is this run's own).

STEPS steps of AMSGrad (the rule with the most state) on a mid-size model, on each backend given:
memory (tracemalloc and RSS) after a warm-up and at the end, time per block of steps, and the
final parameters, which the test compares with the NumPy reference's run of the same steps.
"""
import json
import os
import sys
import time
import tracemalloc

import numpy as np

import fastgd

STEPS = int(os.environ.get("FASTGD_SOAK_STEPS", "10000"))
SIZES = tuple(int(x) for x in os.environ.get("FASTGD_SOAK_SIZES", "40000,7000,1023,3").split(","))
BLOCK = STEPS // 10
WARMUP = BLOCK


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def soak(backend):
    fastgd.set_backend(backend)
    rng = np.random.default_rng(0)
    params = [rng.standard_normal(n).astype(np.float32) for n in SIZES]
    pool = [[rng.standard_normal(n).astype(np.float32) for n in SIZES] for _ in range(16)]
    opt = fastgd.Adam([{"params": params[:2]}, {"params": params[2:], "weight_decay": 0.01}],
                      lr=1e-3, amsgrad=True)
    blocks, mem = [], {}
    t0 = time.perf_counter()
    # the NumPy reference's run is the oracle of the result only: its memory is not checked, and
    # tracing its temporaries' allocations doubled the soak's time (40 s -> 21 s without)
    traced = backend != "numpy"
    for k in range(STEPS):
        if k == WARMUP and traced:
            tracemalloc.start()
            mem["traced_start"] = tracemalloc.get_traced_memory()[0]
            mem["rss_start"] = rss_bytes()
        opt.step(pool[k % len(pool)])
        if (k + 1) % BLOCK == 0:
            blocks.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
    if traced:
        mem["traced_end"], mem["traced_peak"] = tracemalloc.get_traced_memory()
        mem["rss_end"] = rss_bytes()
        tracemalloc.stop()
    np.savez(os.environ["FASTGD_SOAK_OUT"] + f".{backend}.npz", *params)
    return {"blocks": blocks, **mem, "steps": STEPS, "elements": sum(SIZES)}


if __name__ == "__main__":
    print(json.dumps({b: soak(b) for b in sys.argv[1:]}))
