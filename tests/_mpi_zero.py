"""The distributed checks, run by tests/test_distributed.py under ``mpiexec -n K`` (one process
per rank). Each case asserts on every rank and prints ``ok <case> <rank>``; a failed assertion
exits non-zero (mpiexec then fails the test)."""
import copy
import sys

import numpy as np
from mpi4py import MPI

import fastgd
from fastgd.distributed import ZeroRedundancyOptimizer, allreduce_grads

comm = MPI.COMM_WORLD
K, RANK = comm.size, comm.rank
fastgd.set_num_threads(1)             # one core per rank


def shapes():
    return [(37, 5), (3,), (1001,), (2, 2, 2)]


def data(steps, dtype=np.float64, seed=0):
    """Parameters (the same on every rank) and each rank's own gradients for ``steps`` steps,
    plus the sum over ranks of each step's gradients (the single-process oracle's input)."""
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(s).astype(dtype) for s in shapes()]
    local, total = [], []
    for _ in range(steps):
        per_rank = [[rng.standard_normal(s).astype(dtype) for s in shapes()] for _ in range(K)]
        local.append(per_rank[RANK])
        total.append([sum(g[i] for g in per_rank) for i in range(len(shapes()))])
    return params, local, total


def same_on_all_ranks(arrays):
    gathered = comm.allgather([a.tobytes() for a in arrays])
    assert all(g == gathered[0] for g in gathered), "ranks ended with different parameters"


RULES = [(fastgd.AdamW, dict(lr=1e-2, weight_decay=0.1)),
         (fastgd.SGD, dict(lr=1e-2, momentum=0.9, nesterov=True)),
         (fastgd.NAdam, dict(lr=1e-2)),
         (fastgd.Adagrad, dict(lr=0.1, initial_accumulator_value=0.1)),
         (fastgd.Lion, dict(lr=1e-3, weight_decay=0.1)),
         (fastgd.Adam, dict(lr=1e-2, amsgrad=True))]


def case_matches_one_process():
    """Bitwise the same on every rank, and bitwise one process stepping the summed gradients
    with grad_scale 1/K (what the kernel computes from the reduced shard)."""
    for cls, opts in RULES:
        params, local, total = data(25)
        ref = [p.copy() for p in params]
        zero = ZeroRedundancyOptimizer(params, optimizer_class=cls, **opts)
        plain = cls(ref, **opts)
        for g, t in zip(local, total):
            zero.step(g)
            plain.step(t, grad_scale=1.0 / K)
        same_on_all_ranks(params)
        for a, b in zip(params, ref):
            assert a.tobytes() == b.tobytes(), f"{cls.__name__}: differs from one process"


def case_clipping():
    """The same norm on every rank, that of the mean gradient; clipped steps within rounding of
    one process clipping the mean gradient (the partial norms are summed in another order)."""
    params, local, total = data(20)
    ref = [p.copy() for p in params]
    zero = ZeroRedundancyOptimizer(params, optimizer_class=fastgd.AdamW, lr=1e-2, max_grad_norm=1.0)
    plain = fastgd.AdamW(ref, lr=1e-2, max_grad_norm=1.0)
    for g, t in zip(local, total):
        zero.step(g)
        plain.step(t, grad_scale=1.0 / K)
        norms = comm.allgather(zero.last_grad_norm)
        assert all(n == norms[0] for n in norms)
        assert abs(zero.last_grad_norm - plain.last_grad_norm) <= 1e-12 * plain.last_grad_norm
    same_on_all_ranks(params)
    for a, b in zip(params, ref):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    # a non-finite gradient on one rank skips the step on every rank, nothing changes
    before = [p.copy() for p in params]
    bad = [g.copy() for g in local[0]]
    if RANK == K - 1:
        bad[2][5] = np.nan
    assert zero.step(bad) is False and zero.skipped_steps == 1
    for a, b in zip(params, before):
        assert a.tobytes() == b.tobytes()


def case_state_is_sharded():
    params, local, _ = data(2)
    zero = ZeroRedundancyOptimizer(params, optimizer_class=fastgd.AdamW)
    zero.step(local[0])
    mine = sum(a.size for s in zero.optimizer.state.values() for a in s.values()
               if isinstance(a, np.ndarray))
    n = sum(p.size for p in params)
    assert abs(mine - 2 * n / K) <= 2 * 16 * K, (mine, n)     # about 1/K of exp_avg + exp_avg_sq
    assert sum(comm.allgather(mine)) == 2 * n


def case_checkpoint_resumes_in_one_process():
    """consolidate -> a plain optimizer loads it and continues bit for bit; and a fresh ZeRO
    run (any rank count: here the same K, and K = 1 on COMM_SELF) loads it too."""
    params, local, total = data(30)
    zero = ZeroRedundancyOptimizer(params, optimizer_class=fastgd.NAdam, lr=1e-2)
    for g in local[:15]:
        zero.step(g)
    zero.consolidate_state_dict(to=0)
    sd = comm.bcast(zero.state_dict() if RANK == 0 else None, root=0)
    single = [p.copy() for p in params]
    plain = fastgd.NAdam(single, lr=1e-2)
    plain.load_state_dict(copy.deepcopy(sd))
    alone = [p.copy() for p in params]
    resharded = ZeroRedundancyOptimizer(alone, optimizer_class=fastgd.NAdam, comm=MPI.COMM_SELF, lr=1e-2)
    resharded.load_state_dict(copy.deepcopy(sd))
    again = [p.copy() for p in params]
    restarted = ZeroRedundancyOptimizer(again, optimizer_class=fastgd.NAdam, lr=1e-2)
    restarted.load_state_dict(copy.deepcopy(sd))
    for g, t in zip(local[15:], total[15:]):
        zero.step(g)
        restarted.step(g)
        plain.step(t, grad_scale=1.0 / K)
        resharded.step(t, grad_scale=1.0 / K)   # one rank alone: its "mean" is its input
    for a, b, c, d in zip(params, single, alone, again):
        assert a.tobytes() == b.tobytes() == c.tobytes() == d.tobytes()
    if RANK != 0:
        try:
            zero.state_dict()
        except RuntimeError:
            pass
        else:
            raise AssertionError("state_dict() without consolidation on this rank must raise")


def case_bad_input_refused_on_every_rank():
    rng = np.random.default_rng(1)
    # ranks whose parameters differ: a clear error on every rank at construction
    mine = [rng.standard_normal(4 + (RANK == K - 1 and K > 1))]
    try:
        ZeroRedundancyOptimizer(mine)
    except ValueError as exc:
        assert "differ" in str(exc) or K == 1
    else:
        assert K == 1, "different parameters on the ranks must be refused"
    # a bad gradient on one rank: every rank raises, nothing changes, the next step works
    params, local, _ = data(2)
    zero = ZeroRedundancyOptimizer(params, optimizer_class=fastgd.Adam)
    before = [p.copy() for p in params]
    bad = list(local[0])
    if RANK == 0:
        bad[1] = np.ones(4)          # wrong shape
    try:
        zero.step(bad)
    except ValueError as exc:
        assert "rank 0" in str(exc) and "shape" in str(exc), exc
    else:
        raise AssertionError("a bad gradient on rank 0 must be refused on every rank")
    for a, b in zip(params, before):
        assert a.tobytes() == b.tobytes()
    assert zero.optimizer.state == {}
    zero.step(local[1])
    same_on_all_ranks(params)


def case_allreduce_grads():
    rng = np.random.default_rng(2 + RANK)
    grads = [rng.standard_normal(s) for s in shapes()]
    mine = [g.copy() for g in grads]
    everyone = comm.allgather(grads)
    allreduce_grads(mine, bucket_elements=64)       # small buckets: several messages
    for i, g in enumerate(mine):
        np.testing.assert_allclose(g, sum(e[i] for e in everyone) / K, rtol=1e-15, atol=1e-15)
    same_on_all_ranks(mine)


def case_param_groups():
    """Param groups with their own options, the shards cutting across them: bitwise one process
    with the same groups; an lr schedule on a group; the consolidated state_dict has the groups
    and resumes in one process."""
    params, local, total = data(20)
    ref = [p.copy() for p in params]

    def groups(ps):
        return [{"params": ps[:2], "lr": 1e-2}, {"params": ps[2:], "lr": 1e-3, "weight_decay": 0.0}]
    zero = ZeroRedundancyOptimizer(groups(params), optimizer_class=fastgd.AdamW, weight_decay=0.1)
    plain = fastgd.AdamW(groups(ref), weight_decay=0.1)
    for t, (g, tot) in enumerate(zip(local[:10], total[:10])):
        if t == 5:
            for opt in (zero, plain):
                opt.param_groups[1]["lr"] = 5e-4
        zero.step(g)
        plain.step(tot, grad_scale=1.0 / K)
    for a, b in zip(params, ref):
        assert a.tobytes() == b.tobytes()
    zero.consolidate_state_dict(to=0)
    sd = comm.bcast(zero.state_dict() if RANK == 0 else None, root=0)
    assert [g["lr"] for g in sd["param_groups"]] == [1e-2, 5e-4]
    assert [g["params"] for g in sd["param_groups"]] == [[0, 1], [2, 3]]
    fresh = [p.copy() for p in params]
    resumed = fastgd.AdamW(groups(fresh), weight_decay=0.1)
    resumed.load_state_dict(copy.deepcopy(sd))
    again = ZeroRedundancyOptimizer(groups([p.copy() for p in params]), optimizer_class=fastgd.AdamW)
    again.load_state_dict(copy.deepcopy(sd))
    for g, tot in zip(local[10:], total[10:]):
        zero.step(g)
        resumed.step(tot, grad_scale=1.0 / K)
    for a, b in zip(params, fresh):
        assert a.tobytes() == b.tobytes()
    same_on_all_ranks(params)


def case_abort_on_failure():
    """An exception inside one rank's collective step (here, the kernel step of the last rank)
    aborts the job with its message instead of leaving the other ranks waiting. Run alone: the
    job must end non-zero, quickly, with the message."""
    params, local, _ = data(1)
    zero = ZeroRedundancyOptimizer(params, optimizer_class=fastgd.Adam)
    if RANK == K - 1:
        def broken(*args, **kwargs):
            raise MemoryError("simulated failure in the update")
        zero.optimizer.step = broken
    zero.step(local[0])
    print(f"not aborted {RANK}", flush=True)


if __name__ == "__main__":
    for name in sys.argv[1:]:
        globals()[f"case_{name}"]()
        print(f"ok {name} {RANK}", flush=True)
