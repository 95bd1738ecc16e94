"""Run by tests/test_distributed.py as 2 processes over gloo: fastgd.torch.distributed's
ZeroRedundancyOptimizer against torch's, each rank printing ``ok <rank>`` when all checks pass.

    python tests/_torch_zero.py RANK WORLD_SIZE INIT_FILE
"""
import os
import sys

import torch
import torch.distributed as dist
from torch.distributed.optim import ZeroRedundancyOptimizer as TorchZero

import fastgd
from fastgd.torch.distributed import ZeroRedundancyOptimizer

rank, world, init = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
fastgd.set_num_threads(1)
torch.set_num_threads(1)


def model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(9, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3),
                               torch.nn.Linear(3, 2)).double()


for cls, opts in ((torch.optim.AdamW, dict(lr=1e-2, weight_decay=0.1)),
                  (torch.optim.SGD, dict(lr=1e-2, momentum=0.9)),
                  (torch.optim.NAdam, dict(lr=1e-2))):
    mine, theirs = model(), model()
    om = ZeroRedundancyOptimizer(mine.parameters(), optimizer_class=cls, **opts)
    ot = TorchZero(theirs.parameters(), optimizer_class=cls, **opts)
    sched = torch.optim.lr_scheduler.StepLR(om, step_size=5, gamma=0.5)
    tsched = torch.optim.lr_scheduler.StepLR(ot, step_size=5, gamma=0.5)
    for step in range(20):
        gen = torch.Generator().manual_seed(100 * step + rank)
        for a, b in zip(mine.parameters(), theirs.parameters()):
            g = torch.randn(a.shape, generator=gen, dtype=torch.float64)
            dist.all_reduce(g)                     # as DistributedDataParallel averages
            g /= world
            a.grad, b.grad = g.clone(), g.clone()
        om.step()
        ot.step()
        sched.step()
        tsched.step()
    for a, b in zip(mine.parameters(), theirs.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    gathered = [None] * world
    dist.all_gather_object(gathered, [p.detach().clone() for p in mine.parameters()])
    assert all(all(torch.equal(x, y) for x, y in zip(g, gathered[0])) for g in gathered)
    # consolidated: one state_dict that a single-process torch.optim optimizer loads
    om.consolidate_state_dict(to=0)
    ot.consolidate_state_dict(to=0)
    if rank == 0:
        sd, tsd = om.state_dict(), ot.state_dict()
        single = model()
        for p, q in zip(single.parameters(), mine.parameters()):
            p.data.copy_(q.data)
        plain = cls(single.parameters(), **opts)
        plain.load_state_dict(sd)
        for i, s in tsd["state"].items():
            for k, v in s.items():
                torch.testing.assert_close(sd["state"][i][k], v, rtol=1e-12, atol=1e-14,
                                           msg=f"{cls.__name__} state {i} {k}")
    else:
        try:
            om.state_dict()
        except RuntimeError:
            pass
        else:
            raise AssertionError("state_dict() on a rank that did not consolidate must raise")

# param groups with their own options, partitioned as torch partitions them
mine, theirs = model(), model()


def grouped(m):
    ps = list(m.parameters())
    return [{"params": ps[:2], "lr": 1e-2}, {"params": ps[2:], "lr": 1e-3, "weight_decay": 0.0}]


om = ZeroRedundancyOptimizer(grouped(mine), optimizer_class=torch.optim.AdamW, weight_decay=0.1)
ot = TorchZero(grouped(theirs), optimizer_class=torch.optim.AdamW, weight_decay=0.1)
for step in range(12):
    gen = torch.Generator().manual_seed(7 * step + rank)
    for a, b in zip(mine.parameters(), theirs.parameters()):
        g = torch.randn(a.shape, generator=gen, dtype=torch.float64)
        dist.all_reduce(g)
        g /= world
        a.grad, b.grad = g.clone(), g.clone()
    if step == 6:
        om.param_groups[1]["lr"] = ot.param_groups[1]["lr"] = 5e-4
    om.step()
    ot.step()
for a, b in zip(mine.parameters(), theirs.parameters()):
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
om.consolidate_state_dict(to=0)
if rank == 0:
    sd = om.state_dict()
    assert [g["lr"] for g in sd["param_groups"]] == [1e-2, 5e-4]
    torch.optim.AdamW(grouped(model()), weight_decay=0.1).load_state_dict(sd)

# a step that fails on one rank (a bad lr set on that rank only): an error on every rank,
# nothing broadcast, no hang
net = model()
zero = ZeroRedundancyOptimizer(net.parameters(), optimizer_class=torch.optim.Adam)
for p in net.parameters():
    p.grad = torch.ones_like(p)
before = [p.detach().clone() for p in net.parameters()]
if rank == 1:
    zero.param_groups[0]["lr"] = -1.0
try:
    zero.step()
except (ValueError, RuntimeError) as exc:
    assert ("Invalid learning rate" in str(exc)) if rank == 1 else ("rank(s) [1]" in str(exc)), exc
    # nothing was broadcast: the tensors rank 1 owns are unchanged on every rank
    assert all(torch.equal(a, b) for i, (a, b) in enumerate(zip(before, net.parameters()))
               if zero._owners[i] == 1)
else:
    raise AssertionError("a failed step on rank 1 must raise on every rank")

# ranks with different parameters: the same error on every rank, no hang
bad = [torch.nn.Parameter(torch.zeros(3 + rank))]
try:
    ZeroRedundancyOptimizer(bad, optimizer_class=torch.optim.Adam)
except ValueError as exc:
    assert "differ" in str(exc)
else:
    raise AssertionError("different parameters on the ranks must be refused")
dist.barrier()
print(f"ok {rank}", flush=True)
# Every check has passed. Leave without the interpreter's teardown: gloo's worker threads now and
# then abort it ("terminate called without an active exception", SIGABRT) after a rank's step
# raised, which would turn a passed run into a failed one.
sys.stdout.flush()
os._exit(0)
