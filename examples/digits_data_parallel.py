"""Data-parallel training of the digits MLP with ZeRO-1 sharded Adam state, over MPI.

    mpiexec -n 2 python examples/digits_data_parallel.py [--epochs 30]

Every rank holds the whole model, computes the gradient of its own slice of each mini-batch, and
``ZeroRedundancyOptimizer`` steps with their mean: each rank keeps half of Adam's moments and
updates half of the parameters, then all ranks receive all of them. Rank 0 prints the loss and
the test accuracy; every rank ends with the same parameters (checked at the end).
"""
import argparse

import numpy as np
from mpi4py import MPI

import fastgd
from fastgd.demo import load_digits_split
from fastgd.distributed import ZeroRedundancyOptimizer
from fastgd.train import MLP

comm = MPI.COMM_WORLD


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--batch", type=int, default=64, help="global mini-batch (split over ranks)")
    args = ap.parse_args(argv)
    fastgd.set_num_threads(1)
    X, X_test, y, y_test = load_digits_split(seed=0)
    model = MLP([64, 64, 10], "relu", seed=0)          # the same initial parameters on every rank
    opt = ZeroRedundancyOptimizer([model.params], optimizer_class=fastgd.Adam, lr=3e-3,
                                  max_grad_norm=5.0)
    rng = np.random.default_rng(0)                     # the same batches on every rank
    for epoch in range(args.epochs):
        order = rng.permutation(len(X))
        losses = []
        for start in range(0, len(X), args.batch):
            batch = order[start:start + args.batch]
            mine = np.array_split(batch, comm.size)[comm.rank]     # this rank's part of it
            losses.append(model.loss_grad(X[mine], y[mine]))
            opt.step([model.grad])
        loss = comm.allreduce(float(np.mean(losses))) / comm.size
        if comm.rank == 0 and (epoch % 10 == 9 or epoch == args.epochs - 1):
            print(f"epoch {epoch + 1:3d}  loss {loss:.4f}  test accuracy {model.accuracy(X_test, y_test):.3f}")
    same = comm.allgather(model.params.tobytes())
    assert all(s == same[0] for s in same), "ranks ended with different parameters"
    if comm.rank == 0:
        state = sum(a.nbytes for s in opt.optimizer.state.values() for a in s.values()
                    if isinstance(a, np.ndarray))
        print(f"{comm.size} ranks, identical parameters; optimizer state on rank 0: {state} bytes "
              f"of {2 * model.params.nbytes} for one process")


if __name__ == "__main__":
    main()
