"""ZeRO-1 over MPI against one process: a 16M-parameter AdamW step, communication and compute
timed separately, and the optimizer state each rank keeps.

    python bench/distributed.py [--n 16e6] [--rounds 7]

Round-robin, in one run of this driver: ``mpiexec -n 2`` ranks x 1 thread (fastgd.distributed,
each rank with its own gradients) and 1 process x 2 threads (fastgd.AdamW on the mean gradient),
alternately, ``--rounds`` times; medians of each phase over the rounds. A worker (``--worker``)
times its steps after a warm-up and prints one JSON line.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

import numpy as np


def worker(n, steps, distributed):
    import fastgd
    fastgd.set_num_threads(1 if distributed else 2)
    rng = np.random.default_rng(0)
    params = [rng.standard_normal(int(n)).astype(np.float32)]
    grads = [rng.standard_normal(int(n)).astype(np.float32) * 1e-3]
    times = {"reduce_scatter": [], "update": [], "all_gather": [], "step": []}
    if distributed:
        from mpi4py import MPI
        from fastgd.distributed import ZeroRedundancyOptimizer
        comm = MPI.COMM_WORLD
        opt = ZeroRedundancyOptimizer(params, optimizer_class=fastgd.AdamW, lr=1e-3)
        mt = MPI.FLOAT
        for i in range(steps + 2):
            comm.Barrier()
            t0 = time.perf_counter()
            buf = opt._flat_grad               # the phases of opt.step, timed one by one
            buf[:] = grads[0]
            comm.Reduce_scatter([buf, mt], [opt._shard_grad, mt], recvcounts=opt._counts, op=MPI.SUM)
            t1 = time.perf_counter()
            opt.optimizer.step(opt._grad_views, grad_scale=1.0 / comm.size)
            t2 = time.perf_counter()
            opt._gather_params()
            t3 = time.perf_counter()
            comm.Barrier()
            opt.step(grads)                    # the whole public step, for its own time
            comm.Barrier()
            t4 = time.perf_counter()
            if i >= 2:
                for k, v in zip(times, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                    times[k].append(v)
        state = sum(a.nbytes for s in opt.optimizer.state.values() for a in s.values()
                    if isinstance(a, np.ndarray))
        if comm.rank != 0:
            return
    else:
        opt = fastgd.AdamW(params, lr=1e-3)
        for i in range(steps + 2):
            t0 = time.perf_counter()
            opt.step(grads)
            t1 = time.perf_counter()
            if i >= 2:
                times["update"].append(t1 - t0)
                times["step"].append(t1 - t0)
        state = sum(a.nbytes for s in opt.state.values() for a in s.values() if isinstance(a, np.ndarray))
    print(json.dumps({k: statistics.median(v) if v else None for k, v in times.items()}
                     | {"state_bytes": state}), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=float, default=16e6)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--worker", choices=["zero", "single"])
    args = ap.parse_args()
    if args.worker:
        return worker(args.n, args.steps, args.worker == "zero")
    mpiexec = shutil.which("mpiexec", path=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    env = dict(os.environ, OMP_NUM_THREADS="1")
    runs = {"zero": [], "single": []}
    for _ in range(args.rounds):
        for kind in ("zero", "single"):
            cmd = [sys.executable, __file__, "--worker", kind, "--n", str(args.n), "--steps", str(args.steps)]
            if kind == "zero":
                cmd = [mpiexec, "-n", "2"] + cmd
            out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout
            runs[kind].append(json.loads(out.strip().splitlines()[-1]))
    med = {kind: {k: statistics.median(r[k] for r in rs) if rs[0][k] is not None else None
                  for k in rs[0]} for kind, rs in runs.items()}
    n = int(args.n)
    print(f"AdamW, {n:,} float32 parameters, medians of {args.rounds} alternating rounds x {args.steps} steps")
    print(f"{'':32} {'2 ranks x 1 thread':>20} {'1 process x 2 threads':>22}")
    for k, label in (("reduce_scatter", "pack + reduce-scatter of grads"), ("update", "fused AdamW update"),
                     ("all_gather", "all-gather + unpack of params"), ("step", "whole step")):
        z, s = med["zero"][k], med["single"][k]
        print(f"{label:32} {'-' if z is None else f'{z * 1e3:.2f} ms':>20} {'-' if s is None else f'{s * 1e3:.2f} ms':>22}")
    print(f"{'optimizer state per rank':32} {med['zero']['state_bytes'] / 2**20:17.1f} MiB "
          f"{med['single']['state_bytes'] / 2**20:19.1f} MiB")


if __name__ == "__main__":
    main()
