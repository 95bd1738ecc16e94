"""``torch.distributed.optim.ZeroRedundancyOptimizer`` on fastgd's kernels (CPU, e.g. gloo).

    import torch.distributed as dist
    from fastgd.torch.distributed import ZeroRedundancyOptimizer
    dist.init_process_group("gloo", ...)
    model = torch.nn.parallel.DistributedDataParallel(model)      # averages the gradients
    opt = ZeroRedundancyOptimizer(model.parameters(), optimizer_class=torch.optim.AdamW, lr=1e-3)
    loss.backward(); opt.step(); opt.zero_grad()

torch's ZeRO-1 shape and arguments: the parameters are partitioned among the ranks by whole
tensors (largest first, each to the rank with the fewest elements so far, as torch does), each
rank steps only its partition, with the fastgd.torch optimizer of the same rule (a
``torch.optim`` class is mapped to it; a fastgd.torch class is taken as it is), and then each
parameter is broadcast from the rank that owns it. The gradients must already be averaged over
the ranks (DistributedDataParallel, or ``torch.distributed.all_reduce``), as with torch's.
``consolidate_state_dict(to=0)`` then ``state_dict()`` on that rank gives one state_dict of the
whole model, in the layout of the wrapped optimizer (``torch.optim.AdamW`` loads it). Param
groups are partitioned as torch does (group by group, the ranks' loads carried over).
The ranks agree on the parameters (count, shapes, dtypes) at construction: a mismatch raises the
same ``ValueError`` on every rank instead of hanging; a step that raises on one rank (a bad
gradient) raises on every rank, before any broadcast, instead of leaving the others waiting.
"""
import torch
import torch.distributed as dist

from . import SGD, Adagrad, Adam, Adamax, AdamW, NAdam, RAdam, RMSprop, _Optimizer

_FASTGD_OF = {torch.optim.SGD: SGD, torch.optim.Adam: Adam, torch.optim.AdamW: AdamW,
              torch.optim.Adagrad: Adagrad, torch.optim.RMSprop: RMSprop,
              torch.optim.Adamax: Adamax, torch.optim.NAdam: NAdam, torch.optim.RAdam: RAdam}


def partition(sizes, world_size, load=None):
    """torch's partition of tensors among ranks: largest first, each to the rank with the fewest
    elements so far (ties: the lowest rank). Returns the owner rank of each tensor; ``load``
    (elements per rank so far) carries over from one param group to the next, as in torch."""
    owners, load = [0] * len(sizes), [0] * world_size if load is None else load
    for i in sorted(range(len(sizes)), key=lambda i: -sizes[i]):
        r = min(range(world_size), key=lambda r: load[r])
        owners[i] = r
        load[r] += sizes[i]
    return owners


class ZeroRedundancyOptimizer(torch.optim.Optimizer):
    """See the module docstring; the arguments of torch's ZeroRedundancyOptimizer."""

    def __init__(self, params, optimizer_class, process_group=None, parameters_as_bucket_view=False,
                 overlap_with_ddp=False, **defaults):
        if overlap_with_ddp:
            raise ValueError("overlap_with_ddp=True is not supported by fastgd.torch.distributed")
        cls = _FASTGD_OF.get(optimizer_class, optimizer_class)
        if not (isinstance(cls, type) and issubclass(cls, _Optimizer)):
            raise TypeError(f"optimizer_class must be a torch.optim or fastgd.torch optimizer with a "
                            f"fastgd rule; got {optimizer_class!r}")
        self.process_group = dist.group.WORLD if process_group is None else process_group
        self.rank = dist.get_rank(self.process_group)
        self.world_size = dist.get_world_size(self.process_group)
        groups = list(params)
        if not groups or not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        groups = [dict(g, params=[g["params"]] if isinstance(g["params"], torch.Tensor)
                       else list(g["params"])) for g in groups]
        layout = [[(tuple(p.shape), str(p.dtype)) for p in g["params"]] for g in groups]
        layouts = [None] * self.world_size
        dist.all_gather_object(layouts, layout, group=self.process_group)
        for r, other in enumerate(layouts):
            if other != layouts[0]:
                raise ValueError(f"the ranks' parameters differ: rank 0 has {layouts[0]}, rank {r} "
                                 f"has {other} (per param group)")
        #: every parameter, group by group, its owner rank, and its group
        self._params = [p for g in groups for p in g["params"]]
        load = [0] * self.world_size
        self._owners = [r for g in groups
                        for r in partition([p.numel() for p in g["params"]], self.world_size, load)]
        self._group_of = [gi for gi, g in enumerate(groups) for _ in g["params"]]
        #: the global indices of this rank's parameters, in the local optimizer's order
        self._mine = [i for i, r in enumerate(self._owners) if r == self.rank]
        self._global = [dist.get_global_rank(self.process_group, r) for r in range(self.world_size)] \
            if self.process_group is not dist.group.WORLD else list(range(self.world_size))
        local = [dict({k: v for k, v in g.items() if k != "params"},
                      params=[self._params[i] for i in self._mine if self._group_of[i] == gi])
                 for gi, g in enumerate(groups)]
        if not self._mine:   # a rank that owns no tensor: a parameter without gradient
            local[0]["params"] = [torch.nn.Parameter(torch.zeros(0))]
        self.optim = cls(local, **defaults)
        self._consolidated = None
        super().__init__(groups, dict(self.optim.defaults))

    def _sync_param_groups(self):
        """The options of this optimizer's group (a scheduler sets lr here) into the local one."""
        for group, local in zip(self.param_groups, self.optim.param_groups):
            for key, value in group.items():
                if key != "params":
                    local[key] = value

    @torch.no_grad()
    def step(self, closure=None):
        """Step this rank's partition (gradients already averaged), then broadcast every
        parameter from its owner. Collective: every rank calls it."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._sync_param_groups()
        error = None
        try:
            self.optim.step()
        except Exception as exc:   # the others must not wait in the broadcasts for this rank
            error = exc
        failed = torch.tensor([0 if error is None else 1 << self.rank], dtype=torch.int64)
        dist.all_reduce(failed, group=self.process_group)
        if failed.item():
            ranks = [r for r in range(self.world_size) if failed.item() >> r & 1]
            if error is not None:
                raise error
            raise RuntimeError(f"the optimizer step failed on rank(s) {ranks} (see their error); "
                               "the parameters were not broadcast (the ranks' own partitions may "
                               "differ now: restore a checkpoint)")
        for p, owner in zip(self._params, self._owners):
            dist.broadcast(p.data, src=self._global[owner], group=self.process_group)
        return loss

    def consolidate_state_dict(self, to=0):
        """Collective: gather every rank's partition state on rank ``to``."""
        local = self.optim.state_dict()
        gathered = [None] * self.world_size if self.rank == to else None
        dist.gather_object((self._mine, local), gathered, dst=self._global[to], group=self.process_group)
        self._consolidated = None
        if self.rank != to:
            return
        state = {}
        for mine, sd in gathered:
            for local_index, global_index in enumerate(mine):
                if local_index in sd["state"]:
                    state[global_index] = sd["state"][local_index]
        groups = [dict(g, params=[i for i, gi in enumerate(self._group_of) if gi == n])
                  for n, g in enumerate(local["param_groups"])]
        self._consolidated = {"state": state, "param_groups": groups}

    def state_dict(self):
        """The whole state_dict on the rank of the last ``consolidate_state_dict``."""
        if self._consolidated is None:
            raise RuntimeError("Optimizer state has not been consolidated on this rank. Please call "
                               "`consolidate_state_dict(to=rank)` on every rank first")
        return self._consolidated

    def load_state_dict(self, state_dict):
        """Load a whole state_dict (consolidated, or of the single-process optimizer): each rank
        keeps its partition's state; checked by the local optimizer before anything changes."""
        groups = state_dict.get("param_groups") if isinstance(state_dict, dict) else None
        if not isinstance(groups, (list, tuple)) or len(groups) != len(self.param_groups):
            raise ValueError(f"state_dict must have {len(self.param_groups)} param group(s), as "
                             "consolidate_state_dict writes them")
        state = {k: state_dict["state"][i] for k, i in enumerate(self._mine) if i in state_dict["state"]}
        local, index = [], 0
        for g, mine in zip(groups, self.optim.param_groups):
            local.append(dict(g, params=list(range(index, index + len(mine["params"])))))
            index += len(mine["params"])
        self.optim.load_state_dict({"state": state, "param_groups": local})
        for group, g in zip(self.param_groups, groups):
            for key, value in g.items():
                if key != "params":
                    group[key] = value
        self._consolidated = None
