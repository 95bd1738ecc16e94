"""Data parallelism over MPI: ZeRO-1 sharded optimizer state, and gradient all-reduce.

``pip install fastgd[dist]`` (mpi4py and MPICH's wheel, which brings ``mpiexec``), then run one
process per rank, ``mpiexec -n 2 python train.py``::

    from fastgd.distributed import ZeroRedundancyOptimizer
    opt = ZeroRedundancyOptimizer(params, optimizer_class=fastgd.AdamW, lr=1e-3)
    opt.step(local_grads)          # every rank: its own gradients; every rank ends identical

ZeRO stage 1 (Rajbhandari et al. 2020; torch's ZeroRedundancyOptimizer): the parameters of all
ranks are one flat space of N elements, split into K contiguous shards balanced by elements (a
tensor may span two ranks). A step

    reduce-scatter:  each rank receives the sum over ranks of its shard of the gradients
    update:          each rank steps only its shard, with the fused kernel of any rule, the mean
                     over ranks (1/K) folded into the kernel's grad_scale (no extra pass)
    all-gather:      every rank receives every shard's new parameters

so each rank keeps about 1/K of the optimizer state, and moves what one all-reduce moves. Every
rank ends with bitwise identical parameters. Global-norm clipping (``max_grad_norm``) combines
each shard's deterministic partial norm in rank order: the same norm, and the same decision to
skip a non-finite step, on every rank.

Bad input is refused on every rank with the same message, never left as a hang: the ranks
agree on the parameters (count, shapes, dtype) at construction, and on each step's gradients
before any communication. An exception inside the collective part of a step aborts the job
(``comm.Abort``) with its message instead of leaving the other ranks waiting.

``import fastgd`` never imports mpi4py; this module does, when used.
"""
import sys

import numpy as np

from . import _validate as check
from .backends import kernel
from .clipping import Clipping, coefficient, combine, nonfinite_error


def _mpi():
    try:
        from mpi4py import MPI
    except ImportError as exc:   # an optional extra: say how to get it
        raise ImportError("fastgd.distributed needs mpi4py: pip install fastgd[dist] "
                          f"(mpi4py and mpich) ({exc})") from None
    return MPI


def _mpi_type(MPI, dtype):
    return {np.dtype(np.float32): MPI.FLOAT, np.dtype(np.float64): MPI.DOUBLE}[np.dtype(dtype)]


def _agree(comm, error):
    """Raise on every rank if any rank has an ``error`` (a message or None), naming the ranks."""
    errors = comm.allgather(error)
    bad = [(r, e) for r, e in enumerate(errors) if e is not None]
    if bad:
        raise ValueError("; ".join(f"rank {r}: {e}" for r, e in bad))


def shard_bounds(n, k, align=16):
    """Where each of ``k`` shards of ``n`` elements starts (k + 1 numbers): contiguous, balanced
    by elements, boundaries on multiples of ``align`` elements (64 bytes of float32) so that no
    two ranks' shards share a cache line of one tensor."""
    per = (n + k - 1) // k
    per = (per + align - 1) // align * align
    return [min(n, r * per) for r in range(k + 1)]


class ZeroRedundancyOptimizer(Clipping):
    """ZeRO-1: ``optimizer_class`` (any fastgd optimizer) over this rank's shard of ``params``.

    ``params``: this rank's copy of the model's parameter arrays (one float dtype, C-contiguous;
    every rank the same shapes), or param groups ``[{"params": [...], **options}, ...]`` as the
    wrapped optimizer takes them (the shards cut across groups); ``comm``: an mpi4py communicator (MPI.COMM_WORLD by default);
    ``defaults``: the inner optimizer's options. ``max_grad_norm``, ``norm_type``,
    ``error_if_nonfinite`` clip across all shards (fastgd.clipping's policy). ``step(grads)``
    takes this rank's local gradients and steps with their mean over ranks.
    """

    def __init__(self, params, optimizer_class=None, comm=None, *, max_grad_norm=None,
                 norm_type=2.0, error_if_nonfinite=False, **defaults):
        MPI = _mpi()
        import fastgd
        self.comm = MPI.COMM_WORLD if comm is None else comm
        self.optimizer_class = fastgd.AdamW if optimizer_class is None else optimizer_class
        bits = defaults.get("optim_bits",
                            getattr(self.optimizer_class, "format_overrides", {}).get("optim_bits", 32))
        if bits != 32:
            # a shard's quantization blocks would start at the shard's first element, not the
            # tensor's: its consolidated checkpoint could not be the unsharded optimizer's
            raise ValueError(f"ZeroRedundancyOptimizer with quantized states (optim_bits={bits}) "
                             "is not supported; shard float32 states (optim_bits=32), or use "
                             "fastgd.distributed's data parallelism with an 8-bit optimizer")
        self._init_clipping(max_grad_norm, norm_type, error_if_nonfinite)
        error = None
        try:
            if isinstance(params, np.ndarray):
                raise TypeError("params must be a list of arrays, not one array; wrap it: [param]")
            groups = list(params)
            if not groups:
                raise ValueError("optimizer got an empty parameter list")
            if not isinstance(groups[0], dict):
                groups = [{"params": groups}]
            for g in groups:
                if not isinstance(g, dict) or "params" not in g:
                    raise TypeError("params must be a list of arrays or of param-group dicts "
                                    "{'params': [...], **options}")
            # each group's arrays, and its options beyond the defaults, in order
            group_params = [[g["params"]] if isinstance(g["params"], np.ndarray) else list(g["params"])
                            for g in groups]
            group_options = [{k: v for k, v in g.items() if k != "params"} for g in groups]
            params = [p for ps in group_params for p in ps]
            if not params:
                raise ValueError("optimizer got an empty parameter list")
            flats = check.array_list("params", params, writable=True)
            layout = (str(params[0].dtype), [[tuple(p.shape) for p in ps] for ps in group_params])
        except (TypeError, ValueError) as exc:
            error, layout = f"{type(exc).__name__}: {exc}", None
        _agree(self.comm, error)
        layouts = self.comm.allgather(layout)
        for r, other in enumerate(layouts):
            if other != layouts[0]:
                raise ValueError(f"the ranks' parameters differ: rank 0 has {layouts[0][0]} arrays "
                                 f"of shapes {layouts[0][1]} (per param group), rank {r} has "
                                 f"{other[0]} arrays of shapes {other[1]}")
        self.params = params
        #: the parameter group of each parameter (an index into the user's groups)
        self._group_of = [gi for gi, ps in enumerate(group_params) for _ in ps]
        self._flats = flats
        self.dtype = params[0].dtype
        self._type = _mpi_type(MPI, self.dtype)
        sizes = [f.size for f in flats]
        self._offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64).tolist()
        n, k, rank = self._offsets[-1], self.comm.size, self.comm.rank
        self.bounds = shard_bounds(n, k)
        lo, hi = self.bounds[rank], self.bounds[rank + 1]
        #: (parameter index, start, stop) of each piece of this rank's shard, in order
        self.pieces = []
        for j, (a, b) in enumerate(zip(self._offsets, self._offsets[1:])):
            s, e = max(a, lo), min(b, hi)
            if s < e:
                self.pieces.append((j, s - a, e - a))
        # the inner optimizer: one group per user group (lr schedules set them on every rank),
        # each over this rank's pieces of that group's parameters
        inner = [dict(options, params=[flats[j][s:e] for j, s, e in self.pieces
                                       if self._group_of[j] == gi])
                 for gi, options in enumerate(group_options)]
        if not self.pieces:              # an empty shard: a parameter without elements
            inner[0]["params"] = [np.zeros(0, self.dtype)]
        self.optimizer = self.optimizer_class(inner, **defaults)   # same options on every rank
        self._counts = [b - a for a, b in zip(self.bounds, self.bounds[1:])]
        self._flat_grad = np.empty(n, self.dtype)
        self._flat_param = np.empty(n, self.dtype)
        self._shard_grad = np.empty(hi - lo, self.dtype)
        self._send = np.empty(hi - lo, self.dtype)
        starts = np.cumsum([0] + [e - s for _, s, e in self.pieces]).tolist()
        self._grad_views = [self._shard_grad[a:b] for a, b in zip(starts, starts[1:])] \
            or [np.zeros(0, self.dtype)]
        self._consolidated = None

    @property
    def param_groups(self):
        """The inner optimizer's param groups (a schedule changes lr there, on every rank)."""
        return self.optimizer.param_groups

    # --- the step -------------------------------------------------------------------------------

    def step(self, grads, *, grad_scale=1.0):
        """Step with the mean over ranks of every rank's ``grads`` (aligned with ``params``;
        None: zeros). Collective: every rank calls it. Returns False if the step was skipped
        for a non-finite gradient norm (on every rank)."""
        error = None
        try:
            grad_scale = check.finite("grad_scale", grad_scale)
            if isinstance(grads, np.ndarray):
                raise TypeError("grads must be a list of arrays aligned with the parameters, not one array")
            grads = list(grads)
            if len(grads) != len(self.params):
                raise ValueError(f"got {len(grads)} gradients for {len(self.params)} parameters")
            flat_grads = [None if g is None else check.matching(f"grads[{i}]", g, p)
                          for i, (p, g) in enumerate(zip(self.params, grads))]
        except (TypeError, ValueError) as exc:
            error = f"{type(exc).__name__}: {exc}"
        _agree(self.comm, error)      # all ranks refuse together, before anything moves
        try:
            return self._collective_step(flat_grads, grad_scale)
        except _Shared as shared:     # every rank decided the same (a non-finite norm)
            raise shared.error from None
        except Exception as exc:      # one rank failing here would leave the others waiting
            sys.stderr.write(f"fastgd.distributed: rank {self.comm.rank} failed inside a step: "
                             f"{type(exc).__name__}: {exc}; aborting the job\n")
            sys.stderr.flush()
            self.comm.Abort(1)
            raise

    def _collective_step(self, flat_grads, grad_scale):
        MPI = _mpi()
        buf = self._flat_grad
        for g, a, b in zip(flat_grads, self._offsets, self._offsets[1:]):
            if g is None:
                buf[a:b] = 0
            else:
                buf[a:b] = g
        self.comm.Reduce_scatter([buf, self._type], [self._shard_grad, self._type],
                                 recvcounts=self._counts, op=MPI.SUM)
        scale = grad_scale / self.comm.size
        if self._max_grad_norm is not None:
            p = self._norm_type
            partial = kernel("norm_partial")(self._shard_grad, self._shard_grad, False, p) \
                if self._shard_grad.size else 0.0
            total = combine(self.comm.allgather(partial), p) * abs(scale)  # rank order: same bits
            self.last_grad_norm = total
            if not np.isfinite(total):
                if self._error_if_nonfinite:
                    raise _Shared(nonfinite_error(total, p))
                self.skipped_steps += 1
                return False
            scale *= coefficient(total, self._max_grad_norm)
        self.optimizer.step(self._grad_views, grad_scale=scale)
        self._gather_params()
        return True

    def _gather_params(self):
        mine = self._send          # MPI forbids a send buffer inside the receive buffer
        start = 0
        for j, s, e in self.pieces:
            mine[start:start + e - s] = self._flats[j][s:e]
            start += e - s
        self.comm.Allgatherv([mine, self._type],
                             [self._flat_param, self._counts, self.bounds[:-1], self._type])
        for f, a, b in zip(self._flats, self._offsets, self._offsets[1:]):
            f[:] = self._flat_param[a:b]

    # --- checkpoints ----------------------------------------------------------------------------

    def local_state_dict(self):
        """This rank's shard: the inner optimizer's state_dict and where its pieces are."""
        return {"optimizer": self.optimizer.state_dict(), "pieces": list(self.pieces),
                "bounds": list(self.bounds)}

    def consolidate_state_dict(self, to=0):
        """Collective: gather every rank's shard on rank ``to``, where ``state_dict()`` then
        returns one state_dict of ``optimizer_class`` over the whole ``params`` (which a
        single-process optimizer, or a run with another number of ranks, loads)."""
        shards = self.comm.gather(self.local_state_dict(), root=to)
        self._consolidated = None
        if self.comm.rank != to:
            return
        inner = shards[0]["optimizer"]
        state = {}
        # the inner optimizer numbers its parameters group by group, as the pieces are ordered
        for shard in shards:
            for k, (j, s, e) in enumerate(shard["pieces"]):
                piece = shard["optimizer"]["state"].get(k)
                if piece is None:
                    continue
                full = state.setdefault(j, {})
                for name, v in piece.items():
                    if isinstance(v, np.ndarray):
                        if name not in full:
                            full[name] = np.zeros(self._flats[j].size, v.dtype)
                        full[name][s:e] = v
                    else:
                        full[name] = v
        groups = [dict(g, params=[j for j, gj in enumerate(self._group_of) if gj == gi])
                  for gi, g in enumerate(inner["param_groups"])]
        self._consolidated = {"state": state, "param_groups": groups}

    def state_dict(self):
        """The consolidated state_dict (after ``consolidate_state_dict`` on this rank)."""
        if self._consolidated is None:
            raise RuntimeError("call consolidate_state_dict(to=rank) on every rank first; then "
                               "state_dict() on that rank returns the whole state "
                               "(local_state_dict() returns this rank's shard)")
        return self._consolidated

    def load_state_dict(self, state_dict):
        """Load a whole state_dict (consolidated, or a single-process optimizer's): each rank
        takes its shard's pieces, so any number of ranks can resume it. Checked by the inner
        optimizer before anything changes."""
        if not isinstance(state_dict, dict) or set(state_dict) != {"state", "param_groups"}:
            raise ValueError("state_dict must be a dict with exactly the keys 'state' and 'param_groups'")
        groups = state_dict["param_groups"]
        n_groups = len(self.optimizer.param_groups)
        expected = [[j for j, gj in enumerate(self._group_of) if gj == gi] for gi in range(n_groups)]
        if not isinstance(groups, (list, tuple)) or len(groups) != n_groups \
                or [list(g.get("params", ())) for g in groups] != expected:
            raise ValueError(f"state_dict must have {n_groups} param group(s) over the parameters "
                             f"{expected} (as consolidate_state_dict writes it)")
        state = {}
        for k, (j, s, e) in enumerate(self.pieces):
            full = state_dict["state"].get(j)
            if full is None:
                continue
            piece = {}
            for name, v in full.items():
                a = np.asarray(v) if not np.isscalar(v) else v
                if isinstance(a, np.ndarray) and a.ndim >= 1:
                    if a.size != self._flats[j].size:
                        raise ValueError(f"state {name!r} of parameter {j} has {a.size} elements; "
                                         f"the parameter has {self._flats[j].size}")
                    piece[name] = a.reshape(-1)[s:e]
                else:
                    piece[name] = v
            state[k] = piece
        inner_groups, index = [], 0
        for g, mine in zip(groups, self.optimizer.param_groups):
            count = len(mine["params"])
            inner_groups.append(dict(g, params=list(range(index, index + count))))
            index += count
        self.optimizer.load_state_dict({"state": state, "param_groups": inner_groups})
        self._consolidated = None


class _Shared(Exception):
    """An error every rank raises together (a decision the ranks share), not a failure."""

    def __init__(self, error):
        super().__init__(str(error))
        self.error = error


def allreduce_grads(grads, comm=None, *, average=True, bucket_elements=1 << 22):
    """Replace every array of ``grads`` by its sum (``average``: mean) over the ranks, in place,
    for data parallelism with an unsharded optimizer. Arrays of one float dtype, packed into
    buckets of about ``bucket_elements`` so that small tensors cost one message together."""
    MPI = _mpi()
    comm = MPI.COMM_WORLD if comm is None else comm
    error = None
    try:
        flats = check.array_list("grads", grads, writable=True)
    except (TypeError, ValueError) as exc:
        error = f"{type(exc).__name__}: {exc}"
    _agree(comm, error)
    layouts = comm.allgather([(str(f.dtype), f.size) for f in flats])
    for r, other in enumerate(layouts):
        if other != layouts[0]:
            raise ValueError(f"the ranks' gradients differ: rank 0 has {layouts[0]}, rank {r} has {other}")
    if not flats:
        return
    mtype = _mpi_type(MPI, flats[0].dtype)
    scale = 1.0 / comm.size if average else 1.0
    i = 0
    while i < len(flats):
        j, n = i, 0
        while j < len(flats) and (n == 0 or n + flats[j].size <= bucket_elements):
            n += flats[j].size
            j += 1
        if j == i + 1:            # one array: reduced where it is
            comm.Allreduce(MPI.IN_PLACE, [flats[i], mtype], op=MPI.SUM)
            if average:
                kernel("scale")(flats[i], scale)
        else:
            bucket = np.concatenate(flats[i:j])
            comm.Allreduce(MPI.IN_PLACE, [bucket, mtype], op=MPI.SUM)
            if average:
                kernel("scale")(bucket, scale)
            a = 0
            for f in flats[i:j]:
                f[:] = bucket[a:a + f.size]
                a += f.size
        i = j
