"""fastgd.distributed under ``mpiexec -n 2`` (tests/_mpi_zero.py holds the checks, run on every
rank), and in this process with one rank. Needs the ``dist`` extra (mpi4py, mpich), which
``.ci/run`` installs."""
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import fastgd

MPI = pytest.importorskip("mpi4py.MPI", reason="fastgd.distributed needs the dist extra "
                                               "(pip install fastgd[dist])")
from fastgd.distributed import ZeroRedundancyOptimizer, allreduce_grads, shard_bounds  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
MPIEXEC = shutil.which("mpiexec", path=os.path.dirname(sys.executable) + os.pathsep
                       + os.environ.get("PATH", ""))
CASES = ["matches_one_process", "clipping", "state_is_sharded",
         "checkpoint_resumes_in_one_process", "bad_input_refused_on_every_rank", "allreduce_grads",
         "param_groups"]


@pytest.mark.skipif(MPIEXEC is None, reason="mpiexec not found (pip install fastgd[dist] brings it)")
@pytest.mark.timeout(600)
@pytest.mark.parametrize("ranks", [2])
def test_under_mpiexec(ranks):
    env = dict(os.environ, OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1")
    proc = subprocess.run([MPIEXEC, "-n", str(ranks), sys.executable, os.path.join(HERE, "_mpi_zero.py"),
                           *CASES], capture_output=True, text=True, timeout=540, env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    for case in CASES:
        for rank in range(ranks):
            assert f"ok {case} {rank}" in out, (case, rank, out[-4000:])


@pytest.mark.skipif(MPIEXEC is None, reason="mpiexec not found (pip install fastgd[dist] brings it)")
@pytest.mark.timeout(120)
def test_a_failure_inside_one_ranks_step_aborts_the_job_with_its_message():
    env = dict(os.environ, OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1")
    proc = subprocess.run([MPIEXEC, "-n", "2", sys.executable, os.path.join(HERE, "_mpi_zero.py"),
                           "abort_on_failure"], capture_output=True, text=True, timeout=100, env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "rank 1 failed inside a step: MemoryError: simulated failure in the update" in out, out
    assert "not aborted 0" not in out, out      # rank 0 did not go on as if the step happened


@pytest.mark.skipif(MPIEXEC is None, reason="mpiexec not found (pip install fastgd[dist] brings it)")
@pytest.mark.timeout(300)
def test_the_data_parallel_example_trains_and_ends_identical():
    pytest.importorskip("sklearn", reason="the example uses the digits of scikit-learn (fastgd[demo])")
    example = os.path.join(os.path.dirname(HERE), "examples", "digits_data_parallel.py")
    env = dict(os.environ, OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1")
    proc = subprocess.run([MPIEXEC, "-n", "2", sys.executable, example, "--epochs", "10"],
                          capture_output=True, text=True, timeout=280, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    accuracy = float(proc.stdout.split("test accuracy")[-1].split()[0])
    assert accuracy > 0.85 and "identical parameters" in proc.stdout, proc.stdout


def test_shard_bounds_are_balanced_aligned_and_cover_everything():
    for n in (0, 1, 15, 16, 17, 1000, 16_000_001):
        for k in (1, 2, 3, 7):
            b = shard_bounds(n, k)
            assert b[0] == 0 and b[-1] == n and all(x <= y for x, y in zip(b, b[1:]))
            assert all(x % 16 == 0 or x == n for x in b)
            assert max(y - x for x, y in zip(b, b[1:])) <= -(-n // k) + 16


def test_one_rank_is_the_plain_optimizer_bit_for_bit(rng):
    params = [rng.standard_normal((33, 4)), rng.standard_normal(5)]
    ref = [p.copy() for p in params]
    zero = ZeroRedundancyOptimizer(params, optimizer_class=fastgd.RAdam, comm=MPI.COMM_SELF, lr=1e-2)
    plain = fastgd.RAdam(ref, lr=1e-2)
    for _ in range(10):
        g = [rng.standard_normal(p.shape) for p in params]
        zero.step(g)
        plain.step(g)
    for a, b in zip(params, ref):
        assert a.tobytes() == b.tobytes()
    assert zero.param_groups is zero.optimizer.param_groups


def test_bad_input_is_refused_and_changes_nothing(rng):
    with pytest.raises(ValueError, match="empty"):
        ZeroRedundancyOptimizer([], comm=MPI.COMM_SELF)
    with pytest.raises(ValueError, match="one array"):
        ZeroRedundancyOptimizer(np.ones(3), comm=MPI.COMM_SELF)
    params = [rng.standard_normal(6)]
    before = params[0].copy()
    zero = ZeroRedundancyOptimizer(params, comm=MPI.COMM_SELF)
    for bad, match in (([np.ones(5)], "shape"), ([np.ones(6, np.float32)], "dtype"),
                       ([np.ones(6), np.ones(6)], "2 gradients")):
        with pytest.raises(ValueError, match=match):
            zero.step(bad)
    with pytest.raises(ValueError, match="grad_scale"):
        zero.step([np.ones(6)], grad_scale=float("nan"))
    assert np.array_equal(params[0], before) and zero.optimizer.state == {}
    with pytest.raises(RuntimeError, match="consolidate_state_dict"):
        zero.state_dict()
    with pytest.raises(ValueError, match="param group"):
        zero.load_state_dict({"state": {}, "param_groups": [{"params": [0, 1]}]})


def test_allreduce_on_one_rank_keeps_the_values(rng):
    grads = [rng.standard_normal(7), rng.standard_normal((3, 3))]
    before = [g.copy() for g in grads]
    allreduce_grads(grads, comm=MPI.COMM_SELF)
    for a, b in zip(grads, before):
        np.testing.assert_array_equal(a, b)


def test_import_fastgd_does_not_import_mpi4py():
    code = "import sys, fastgd; print('mpi4py' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.timeout(300)
def test_torch_front_end_matches_torchs_zero_over_gloo(tmp_path):
    """fastgd.torch.distributed.ZeroRedundancyOptimizer against torch's, 2 processes over gloo
    (tests/_torch_zero.py): the same parameters to 1e-12 in float64 with an lr scheduler, the
    same on both ranks, a consolidated state_dict a torch.optim optimizer loads, and a clear
    error on every rank for mismatched parameters."""
    pytest.importorskip("torch", reason="the torch front end needs torch (fastgd[torch])")
    script = os.path.join(HERE, "_torch_zero.py")
    init = str(tmp_path / "init")
    env = dict(os.environ, OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, script, str(r), "2", init], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, env=env) for r in range(2)]
    outs = []
    for p in procs:
        try:
            outs.append(p.communicate(timeout=240)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    for r, (p, out) in enumerate(zip(procs, outs)):
        assert p.returncode == 0 and f"ok {r}" in out, out[-4000:]


def test_torch_partition_is_torchs():
    """Largest first (stable among equal sizes), each to the least-loaded rank (the lowest on a
    tie): torch's ZeroRedundancyOptimizer._partition_parameters."""
    from fastgd.torch.distributed import partition
    assert partition([10, 30, 20, 5], 2) == [1, 0, 1, 0]
    assert partition([100, 1, 1, 1, 50, 49], 2) == [0, 1, 0, 1, 1, 1]
    assert partition([4, 4, 4], 3) == [0, 1, 2] and partition([7], 3) == [0]
