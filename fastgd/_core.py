"""The one optimizer core under every front end (fastgd.optim for NumPy arrays, fastgd.torch for
torch tensors): a rule's spec turned into checked, stepped, checkpointed state.

What lives here, once:

- **options**: each param group is checked by its rule's spec (fastgd/rules/) whenever it
  changed, at construction, ``add_param_group``, every ``step`` and ``load_state_dict``; the
  checked values are cached by the identity of the group's items, so an unchanged group costs
  one list comparison a step (a group holding a value that can change in place, a tensor lr,
  is checked every step);
- **state**: the arrays a parameter needs under its group's options, created lazily at its first
  step (or when an option that needs one is switched on), as flat NumPy views of whatever the
  front end stores (arrays, tensors, flat buffers);
- **the step**: the gradient checked against the parameter and its state (dtype, shape,
  layout, no shared memory) before anything is written, then clipping and the non-finite policy
  (fastgd.clipping), then the kernel calls with the spec's scalars (one many-kernel call per
  group and storage); a front end may keep a group's kernel tables between steps (``Table``)
  and check, in a few vectorised passes, that they still hold;
- **checkpoints**: a state_dict checked whole (keys, sizes, steps, scalar state, options,
  another optimizer's state_dict refused in both directions) before anything changes;
- **the thread guard**: one optimizer used from two threads at once is refused.

A front end subclasses ``Core`` and says where arrays are (the storage hooks listed on
``Core``); it knows nothing about any rule.
"""
import functools
import math
import numbers
import threading

import numpy as np

from . import _validate as check
from . import formats as fmt
from .backends import kernel
from .clipping import Clipping

#: a step count must fit an int64 (the kernels' bias corrections need beta ** t as a float)
MAX_STEP = 2 ** 63 - 1


def exclusive(method):
    """Refuse, with a RuntimeError, a call made while another thread is inside a guarded method
    (step, state_dict, load_state_dict) of the same optimizer.

    Two threads updating one optimizer's parameters and moments at once would interleave their
    read-modify-write passes element by element: a corrupted result, not "both steps". Waiting
    instead would hide the same bug (the order of the steps would depend on scheduling), so the
    second caller is told at once. The lock is an RLock, so a guarded method may call another
    of its own optimizer (MultiSteps calls step); different optimizers never contend.
    """
    @functools.wraps(method)
    def guarded(self, *args, **kwargs):
        lock = lock_of(self)
        if not lock.acquire(False):
            raise busy(self, method.__name__)
        try:
            return method(self, *args, **kwargs)
        finally:
            lock.release()
    return guarded


def lock_of(obj):
    """The RLock of ``exclusive`` (made at first use; pickles leave it out)."""
    return obj.__dict__.get("_busy") or obj.__dict__.setdefault("_busy", threading.RLock())


def busy(obj, name):
    return RuntimeError(
        f"{type(obj).__name__}.{name}() was called while another thread is in step(), "
        "state_dict() or load_state_dict() of the same optimizer; one optimizer must be used by "
        "one thread at a time (give each thread its own optimizer, or hold a lock)")


def _item(value):
    """A 1-element array or tensor as its Python number; anything else as it is."""
    if hasattr(value, "item"):
        n = value.numel() if callable(getattr(value, "numel", None)) else getattr(value, "size", 0)
        if n == 1:
            return value.item()
    return value


def step_count(value, where):
    """A saved step count as an int >= 0 (ints, integral floats, 0-d/1-element arrays)."""
    value = _item(value)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise ValueError(f"{where}: step must be an integer >= 0; got {value!r}")
    if not (math.isfinite(value) and float(value).is_integer() and 0 <= value <= MAX_STEP):
        raise ValueError(f"{where}: step must be an integer in [0, 2**63); got {value!r}")
    return int(value)


_CACHEABLE = (float, int, bool, str, type(None), np.dtype)

#: keyword-only options of every optimizer beside its rule's (and, like clipping's, not in its
#: param groups, which stay torch.optim's): how its arrays are stored (fastgd/formats.py)
FORMAT_OPTIONS = {"state_dtype": None, "master_weights": False, "bf16_stochastic_round": False,
                  "stochastic_round_seed": 0, "optim_bits": 32, "min_8bit_size": 4096}

#: optim_bits: 32 keeps states as state_dtype says; 8 and 4 quantize them block-wise
#: (fastgd/quant.py) in every parameter of at least min_8bit_size elements (bitsandbytes' names)
OPTIM_BITS = (32, 8, 4)

SUPPORTED_FORMATS = (
    "float64 params with float64 states; float32, bfloat16 or float16 params with float32, "
    "bfloat16 or float16 states (state_dtype=..., default the param's dtype); "
    "master_weights=True for bfloat16/float16 params (a float32 master copy in the state, states "
    "float32 unless state_dtype says otherwise); bf16_stochastic_round=True rounds the bfloat16 "
    "param (without master weights) and bfloat16 states stochastically; optim_bits=8 or 4 "
    "quantizes the states of float32, bfloat16 or float16 params of at least min_8bit_size "
    "elements (never float64)")


def check_format_options(group):
    """The checked format options in mapping ``group`` (missing ones take their defaults)."""
    sd = group.get("state_dtype")
    if sd is not None:
        try:
            sd = fmt.dtype_of(sd)
        except TypeError as exc:
            raise TypeError(f"state_dtype: {exc}") from None
    master = check.flag("master_weights", group.get("master_weights", False))
    sr = check.flag("bf16_stochastic_round", group.get("bf16_stochastic_round", False))
    seed = group.get("stochastic_round_seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise TypeError(f"stochastic_round_seed must be an int >= 0; got {seed!r}")
    bits = group.get("optim_bits", 32)
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)):
        raise TypeError(f"optim_bits must be an int (32, 8 or 4); got {bits!r}")
    if bits not in OPTIM_BITS:
        raise ValueError(f"optim_bits must be 32 (states as state_dtype says), 8 or 4 (block-wise "
                         f"quantized states); got {bits!r}")
    small = group.get("min_8bit_size", 4096)
    if isinstance(small, bool) or not isinstance(small, (int, np.integer)) or small < 0:
        raise TypeError(f"min_8bit_size must be an int >= 0; got {small!r}")
    return {"state_dtype": sd, "master_weights": master, "bf16_stochastic_round": sr,
            "stochastic_round_seed": int(seed), "optim_bits": int(bits), "min_8bit_size": int(small)}


def quantized(o, size, names):
    """The bits (8 or 4) of the quantized states of a parameter of ``size`` elements with state
    arrays ``names`` under options ``o``, or 0: its states are not quantized."""
    bits = o.get("optim_bits", 32)
    return bits if bits != 32 and names and size >= o.get("min_8bit_size", 4096) else 0


def absmax_name(name):
    """The state holding the block maxima of quantized state ``name``."""
    return name + "_absmax"


class _Roles(dict):
    """A stand-in of a slot's views that names the array at each kernel role (spec.arrays of
    it): a needed state by its name, a stand-in by the array it stands for."""

    def __init__(self, names):
        super().__init__((n, n) for n in names)
        self["param"] = "param"

    def get(self, key, default=None):
        return self[key] if key in self else default


class Storage:
    """How one parameter's arrays are stored: ``state`` the states' dtype, ``master`` whether a
    float32 master copy is kept (state "master_weight"), ``bits`` 8 or 4 if its states are
    quantized (else 0), ``codes`` the many kernel's format codes of the roles
    (kernels/CONTRACT.md), ``single`` whether the single kernel can step it (all float32 or all
    float64)."""
    __slots__ = ("state", "master", "sr", "codes", "single", "key", "bits")

    def __init__(self, o, dtype, nstates, where, bits=0, spec=None):
        pd = np.dtype(dtype)
        half = fmt.code_of(pd) in fmt.HALF
        self.master = bool(o.get("master_weights")) and half
        sd = o.get("state_dtype") or (np.dtype(np.float32) if self.master else pd)
        self.state = sd
        want_sr = bool(o.get("bf16_stochastic_round"))
        sr_param = want_sr and fmt.code_of(pd) == fmt.BF16 and not self.master
        sr_state = want_sr and fmt.code_of(sd) == fmt.BF16
        self.sr = sr_param or sr_state
        if fmt.code_of(pd) is None or (pd == np.float64) != (sd == np.float64):
            raise TypeError(f"{where} is {pd} with state_dtype {sd}: not a supported combination "
                            f"of formats. Supported: {SUPPORTED_FORMATS}")
        pc, sc = fmt.code_of(pd), fmt.code_of(sd)
        self.bits = bits
        if bits and pd == np.float64:
            raise TypeError(f"{where} is float64 with optim_bits={bits}: not a supported "
                            f"combination of formats. Supported: {SUPPORTED_FORMATS}")
        # all float32 or all float64: the single kernel can step it alone
        self.single = (not self.master and not self.sr and not bits and pc == sc
                       and pc in (fmt.F32, fmt.F64))
        first = fmt.F32 if self.master else (fmt.BF16_SR if sr_param else pc)
        state = fmt.BF16_SR if sr_state else sc
        states = [state] * nstates
        if bits:     # each role the code of the array at it (kernels/CONTRACT.md, stand-ins)
            by_name = {x.name: x for x in spec.state}
            states = [fmt.quantized_code(bits, by_name[n].signed8 if bits == 8 else by_name[n].signed4)
                      if n in by_name else pc
                      for n in spec.arrays(_Roles(spec.state_names(o)))]
        self.codes = np.array([first, pc, pc, *states, pc if self.master else fmt.NONE], np.int32)
        self.key = self.codes.tobytes()


def _cacheable(group):
    """Whether the checked options of ``group`` may be reused while its items are the same
    objects: not when a value can change in place (a tensor lr), checked at every step."""
    for k, v in group.items():
        if k != "params" and type(v) not in _CACHEABLE and not (
                type(v) is tuple and all(type(x) in _CACHEABLE for x in v)):
            return False
    return True


class Prep:
    """What a step needs of one checked group: options, kernel, constants, state names, and
    ``snapshot``, the group's items when it was checked (None: check it again next step)."""
    __slots__ = ("o", "kernel", "many", "constants", "maximize", "names", "snapshot", "storage")

    def __init__(self, spec, o, snapshot):
        self.o = o
        self.kernel = None
        self.many = None
        self.storage = {}     # param dtype -> Storage under these options
        self.constants = spec.constants(o)
        self.maximize = o["maximize"]
        self.names = spec.state_names(o)
        self.snapshot = snapshot


class Slot:
    """One parameter as the kernels see it: ``s`` the flat views (``"param"`` and each state
    array), ``spans`` the bytes they occupy, ``fresh`` whether its state arrays were created in
    this step; ``key``/``param``/``store``: what the views were made from, to notice a change."""
    __slots__ = ("param", "s", "spans", "names", "fresh", "store", "containers", "addrs", "key",
                 "pending", "aux", "views", "arrays", "where", "tag", "storage", "row", "ordinal")

    def __init__(self, param, flat):
        self.param = param
        self.s = {"param": flat}
        self.spans = [check.span(flat)]
        self.names = ()
        self.fresh = False
        self.store = None
        self.containers = ()
        self.addrs = ()       # the containers' memory addresses (_addresses) when viewed
        self.key = None
        self.pending = None
        self.aux = None       # the front end's own (fastgd.torch: the data pointer, scalar views)
        self.views = (flat,)  # the flat views, param first (for the grad's one-call check)
        self.arrays = None    # the state arrays in the kernel's order (spec.arrays(s))
        self.where = None     # how error messages name this parameter
        self.tag = (None, None, None)   # the front end's own (fastgd.torch: pointer, shape, copy)
        self.storage = None   # its Storage (None: a flat run of fastgd.torch, single kernel)
        self.row = None       # the roles' addresses (the grad's and acc's filled at each step)
        self.ordinal = 0      # the parameter's position (stochastic rounding's key)


_DEFAULT_FORMATS = check_format_options({})


class Table:
    """A param group's parameters as the many kernel's tables, kept between steps (issue 14).

    The slow path of a step costs microseconds of Python per tensor (the slot's checks, its
    row of addresses, its step count); with a Table a front end checks in a few vectorised
    passes that nothing the table was made from changed (the front end's own ``aux``: e.g.
    the parameters' addresses, their state objects, their step counts) and passes only the
    gradients' addresses, which change every step (``zero_grad(set_to_none=True)``). Made by
    ``Core._table`` from the slots of a completed step; anything it cannot vouch for sends
    the front end back to the slow path, which checks everything and names what is wrong.

    ``segments``: the parameters grouped by storage, one many-kernel call each (as ``_run``
    batches them), each a ``Segment``; ``lo``/``hi``: the sorted, disjoint spans of every
    parameter and state array of the table (a gradient must overlap none of them);
    ``nbytes``: each gradient's size in bytes (its parameter's)."""
    __slots__ = ("slots", "segments", "lo", "hi", "nbytes", "names", "formats", "aux", "pending")

    def __init__(self, slots, segments, lo, hi, nbytes, names, formats):
        self.slots, self.segments = slots, segments
        self.lo, self.hi, self.nbytes = lo, hi, nbytes
        self.names, self.formats = names, formats
        self.aux = None         # the front end's own (fastgd.torch: what it checks each step)
        self.pending = None     # as a Slot's: a table never has new state to store


class Segment:
    """Parameters ``index`` (positions in the Table) of one Storage ``st``: the many kernel's
    ``ptrs`` (the grad column filled at each step), ``offsets`` and, with stochastic rounding,
    ``mixed``, the per-tensor half of formats.sr_key; ``sizes``: the tensors' lengths;
    ``whole``: every tensor of the table, in order."""
    __slots__ = ("st", "index", "ptrs", "sizes", "offsets", "keys", "mixed", "whole")

    def __init__(self, st, index, slots, whole):
        self.st, self.index, self.whole = st, np.array(index, np.intp), whole
        self.ptrs = np.array([slots[i].row for i in index], np.int64)
        self.sizes = np.array([slots[i].s["param"].size for i in index], np.int64)
        self.offsets = np.concatenate(([0], np.cumsum(self.sizes))).astype(np.int64)
        self.keys = np.zeros(len(index), np.uint32)
        self.mixed = (fmt.mix32(np.array([(slots[i].ordinal * fmt.GOLDEN + 1) & 0xFFFFFFFF
                                          for i in index], np.uint32)) if st.sr else None)




class _Names(dict):
    """A stand-in of a slot's views for counting a spec's kernel arrays (every name present)."""

    def __missing__(self, key):
        return key

    def get(self, key, default=None):
        return key


class Core(Clipping):
    """The engine of an optimizer (see the module docstring). Subclasses set ``spec`` and
    ``fixed`` (options the class pins, e.g. AdamW's decoupled weight decay) and provide:

    - ``_state_get(key)`` -> the state dict of one parameter or None, ``_state_put(key, state)``;
    - ``_new_state(slot, name, init, dtype)`` -> a new state container of ``dtype`` filled with
      ``init``, and ``_view(container, flat_param, where, dtype, size=None)`` -> its flat NumPy
      view (checked: ``size`` elements, default the parameter's, of ``dtype``);
    - ``_new_raw(slot, name, size, dtype, like_param)`` -> a new zero container of ``size``
      elements of ``dtype`` (a quantized state's codes or block maxima; ``like_param``: it
      has one code per element, so the front end may give it the parameter's shape);
    - ``_zero_step()``, ``_new_scalar(value)``: new step count and scalar state;
    - ``_advance(slot)`` -> the step count after adding one; ``_scalars_of(slot)`` /
      ``_store_scalars(slot, values)`` for the spec's scalar state;
    - ``_addresses(containers)`` -> where each state container's memory is now, a tuple (()
      by default: a NumPy array cannot be given other memory; a torch tensor can, by
      ``t.data = ...``, and the views made from it would then step the old memory);
    - with Tables (a front end that keeps them, fastgd.torch): ``_table_advance(table)`` -> the
      step counts of the table's parameters after adding one (an array, None if the rule keeps
      none), ``_flat_grad(grad)`` -> a checked gradient as a flat NumPy array.
    """

    spec = None
    fixed = {}

    def _init_core(self, formats=None):
        # the format options (FORMAT_OPTIONS), checked: every group's options carry them
        self._formats = check_format_options(formats or {})
        self._preps = {}
        self._slots = {}
        self._pending = False     # a slot was built whose new state is not stored yet

    # --- options --------------------------------------------------------------------------------

    def _check_group(self, group):
        """The group's options checked by the spec (TypeError/ValueError naming the option), and
        the class's fixed options enforced; returns {name: checked value}."""
        o = self.spec.check_options(group)
        o.update(self.__dict__.get("_formats") or _DEFAULT_FORMATS)
        for name, value in self.fixed.items():
            if o[name] != value:
                raise ValueError(f"{type(self).__name__} always has {name}={value}; this param group "
                                 f"has {name}={group[name]!r} (a state_dict of another optimizer?)")
        return o

    def _prep(self, group):
        """Prep of ``group``, re-checked only when one of its values changed (a schedule setting
        lr, a user editing the group): the check costs more than the step on small arrays."""
        key = id(group)
        prep = self._preps.get(key)
        items = list(group.items())
        try:   # the same objects compare equal by identity, without calling their __eq__
            same = prep is not None and prep.snapshot == items
        except Exception:      # e.g. a replaced params list of arrays: compare as changed
            same = False
        if not same:
            prep = Prep(self.spec, self._check_group(group), None)
            if _cacheable(group):
                prep.snapshot = items
                self._preps[key] = prep
        prep.kernel = kernel(self.spec.name)
        prep.many = None
        return prep

    def storage(self, prep, dtype, where, size=0):
        """The Storage of a parameter of ``dtype`` and ``size`` elements in ``prep``'s group
        (TypeError if its formats are not a supported combination)."""
        bits = quantized(prep.o, size, prep.names)
        st = prep.storage.get((dtype, bits))
        if st is None:
            st = prep.storage[dtype, bits] = Storage(prep.o, dtype, len(self.spec.arrays(_Names())),
                                                     where, bits, self.spec)
        return st

    # --- state ---------------------------------------------------------------------------------

    def _slot(self, key, param, flat, prep, where):
        """The Slot of one parameter with every state array ``prep`` needs, rebuilt when the
        parameter, its state dict or a state array was replaced. Missing state arrays are made
        but not stored: ``_commit`` stores them once every parameter of the step is checked."""
        slot = self._slots.get(key)
        state = self._state_get(key)
        if (slot is None or slot.param is not param or slot.store is not state or state is None
                or slot.names != prep.names):
            return self._build_slot(key, param, flat, {} if state is None else state, prep, where)
        for n, c in zip(self._container_names(slot), slot.containers):
            if state.get(n) is not c:       # a state array loaded or assigned since
                return self._build_slot(key, param, flat, state, prep, where)
        if slot.addrs and self._addresses(slot.containers) != slot.addrs:   # t.data = ...
            return self._build_slot(key, param, flat, state, prep, where)
        return slot

    @staticmethod
    def _addresses(containers):
        """Where each state container's memory is (see the class docstring): () for NumPy."""
        return ()

    @staticmethod
    def _container_names(slot):
        """The names of the state entries a slot's views were made from (slot.containers)."""
        st = slot.storage
        names = slot.names + (("master_weight",) if st is not None and st.master else ())
        if st is not None and st.bits:
            names += tuple(absmax_name(n) for n in slot.names)
        return names

    def _build_slot(self, key, param, flat, state, prep, where):
        slot = Slot(param, flat)
        st = self.storage(prep, flat.dtype, where, flat.size)
        new = {}
        for s in self.spec.state:
            if s.needed(prep.o) and s.name not in state:
                if st.bits:
                    code = self._quantized_code(st, s.name)
                    new[s.name], new[absmax_name(s.name)] = self._new_quantized(
                        slot, s.name, code, s.initial(prep.o))
                else:
                    new[s.name] = self._new_state(slot, s.name, s.initial(prep.o), st.state)
        names = prep.names + (("master_weight",) if st.master else ())
        if st.master and "master_weight" not in state:
            c = new["master_weight"] = self._new_state(slot, "master_weight", 0.0, np.dtype(np.float32))
            self._view(c, flat, f"state 'master_weight' of {where}", np.dtype(np.float32))[...] = flat
        containers = []
        for name in names + (tuple(absmax_name(n) for n in prep.names) if st.bits else ()):
            c = new[name] if name in new else state.get(name)
            size, dtype = self._state_layout(st, name, flat.size)
            v = self._view(c, flat, f"state {name!r} of {where}", dtype, size)
            span = check.span(v)
            for other in slot.spans:
                if span[0] < other[1] and other[0] < span[1]:
                    raise ValueError(f"state {name!r} of {where} shares memory with the parameter "
                                     "or another of its state arrays; each must be its own array")
            slot.spans.append(span)
            slot.s[name] = v
            containers.append(c)
        slot.names, slot.store, slot.containers = prep.names, state, tuple(containers)
        slot.addrs = self._addresses(slot.containers)
        slot.key, slot.pending = key, new
        # the float views the step's one-call check takes with the grad (not codes, absmax)
        slot.views = tuple(slot.s[n] for n in ("param", *names) if not (st.bits and n in prep.names))
        slot.where = where
        slot.arrays = self.spec.arrays(slot.s)
        self._many_row(slot, st)
        self._pending = True
        return slot

    def _quantized_code(self, st, name):
        """The format code of quantized state ``name`` under Storage ``st`` (its map)."""
        s = next(x for x in self.spec.state if x.name == name)
        return fmt.quantized_code(st.bits, s.signed8 if st.bits == 8 else s.signed4)

    def _state_layout(self, st, name, size):
        """(elements, dtype) of state array ``name`` of a parameter of ``size`` elements under
        Storage ``st``: quantized codes (uint8) and their absmax (float32), or like the param."""
        if name == "master_weight":
            return size, np.dtype(np.float32)
        if st.bits:
            base = name[:-len("_absmax")] if name.endswith("_absmax") else None
            if base is not None and base in (x.name for x in self.spec.state):
                return fmt.n_blocks(self._quantized_code(st, base), size), np.dtype(np.float32)
            if name in (x.name for x in self.spec.state):
                return fmt.code_bytes(self._quantized_code(st, name), size), np.dtype(np.uint8)
        return size, st.state

    def _new_quantized(self, slot, name, code, init):
        """New (codes, absmax) containers of quantized state ``name`` holding ``init`` everywhere
        (the front end's ``_new_raw`` makes them)."""
        n = slot.s["param"].size
        codes = self._new_raw(slot, name, fmt.code_bytes(code, n), np.dtype(np.uint8), fmt.QUANTIZED[code][0] == 8)
        absmax = self._new_raw(slot, absmax_name(name), fmt.n_blocks(code, n), np.dtype(np.float32), False)
        if init != 0.0:      # zeros are codes 0 with absmax 0 (as bitsandbytes starts)
            c, a = fmt.quantize(np.full(n, init, np.float32), code)
            self._view(codes, slot.s["param"], name, np.dtype(np.uint8), c.size)[...] = c
            self._view(absmax, slot.s["param"], name, np.dtype(np.float32), a.size)[...] = a
        return codes, absmax

    def _many_row(self, slot, st):
        """The slot's row of the many kernel's table (kernels/CONTRACT.md): the param role (the
        master copy with master weights), grad and acc (filled at each step), the state arrays,
        and the 16-bit param written from the master."""
        first = slot.s["master_weight"] if st.master else slot.s["param"]
        p0 = check.span(first)[0]
        slot.storage = st
        slot.row = [p0, 0, p0, *(check.span(a)[0] for a in slot.arrays),
                    check.span(slot.s["param"])[0] if st.master else 0]
        if st.bits:      # the absmax of each state role's array (its stand-ins': the same)
            absmax = {n: slot.s[absmax_name(n)] for n in slot.names}
            absmax["param"] = slot.s["param"]
            slot.row += [check.span(a)[0] for a in self.spec.arrays(absmax)]
        slot.ordinal = self._ordinal_of(slot.key)

    def _ordinal_of(self, key):
        """The position of parameter ``key`` among all of the optimizer's (the front end's)."""
        return key if isinstance(key, int) else 0

    def _commit(self, work):
        """Store the state the slots of checked ``work`` made (nothing was stored before)."""
        if not self._pending:
            return
        self._pending = False
        spec = self.spec
        for _, slot, _ in work:
            if slot.pending is None:
                continue
            state = slot.store
            if spec.torch_step or not self._torch_layout:
                if "step" not in state:
                    state["step"] = self._zero_step()
            for name, init, _ in spec.scalar_state:
                if name not in state:
                    state[name] = self._new_scalar(init)
            state.update(slot.pending)
            slot.fresh = any(n != "master_weight" for n in slot.pending)
            slot.pending = None
            if state:                     # torch keeps no entry for a stateless SGD
                self._state_put(slot.key, state)
            self._slots[slot.key] = slot

    _torch_layout = False

    # --- the step ------------------------------------------------------------------------------

    def _checked_grad(self, slot, g, where):
        """Refuse a gradient sharing memory with its parameter or state (g already checked for
        dtype, shape and layout)."""
        lo, hi = check.span(g)
        for a, b in slot.spans:
            if lo < b and a < hi:
                raise ValueError(f"the gradient of {where} shares memory with the parameter or its "
                                 "state; each must be its own array")

    def _run(self, work, grad_scale, accs=None):
        """Clip (fastgd.clipping's policy), then the kernel calls of checked ``work`` ([(prep,
        slot, flat grad)], or (prep, Table, its gradients' (addresses, front end's grads)));
        ``accs[i]``: a flat accumulated gradient the kernel adds to item i's gradient and
        zeroes in the same pass, or None. False if the step was skipped.

        A parameter all float32 or all float64 is one call of the rule's single kernel; any
        other storage goes to its many kernel, the parameters of one group with the same
        formats and step scalars in one call (kernels/CONTRACT.md). Each tensor's update is its
        own, whatever it is batched with, so batching by storage (not only consecutive runs)
        changes no result and makes one call of a group interleaving storages (8-bit weights
        between 32-bit biases); a Table batches its parameters the same way."""
        if self._max_grad_norm is not None:
            assert not any(type(w[1]) is Table for w in work), "a Table is never clipped"
            grad_scale = self._clipped_scale([w[2] for w in work], accs, grad_scale)
            if grad_scale is None:
                return False
        self._commit(work)
        spec = self.spec
        scalars = spec.scalars
        has_scalar_state = bool(spec.scalar_state)
        advance = self._advance
        current = None
        batches = {}        # key -> parameters waiting for one call (_run_batch), this group's
        for i, (prep, slot, g) in enumerate(work):
            if prep is not current:     # per group: its kernel, constants, and a memo of the
                self._flush(batches, grad_scale)    # step scalars by (t, fresh): equal steps
                current = prep                      # compute them once
                kernel, o, maximize, constants, memo = (prep.kernel, prep.o, prep.maximize,
                                                        prep.constants, {})
            if type(slot) is Table:
                self._run_table(prep, slot, g, grad_scale)
                continue
            t = advance(slot)
            fresh = slot.fresh
            if scalars is None:
                sc = ()
            elif has_scalar_state:
                values = self._scalars_of(slot)
                sc = scalars(o, t, values, fresh)
                self._store_scalars(slot, values)
            else:
                sc = memo.get((t, fresh))
                if sc is None:
                    sc = memo[t, fresh] = scalars(o, t, None, fresh)
            slot.fresh = False
            acc = None if accs is None else accs[i]
            st = slot.storage
            if st is not None:
                batches.setdefault((prep, st.key, sc, acc is not None), []).append((slot, g, acc, t))
                continue
            p = slot.s["param"]       # a flat run of fastgd.torch, made for this step
            arrays = spec.arrays(slot.s)
            if acc is None:
                kernel(p, g, p, *arrays, grad_scale, maximize, False, *constants, *sc)
            else:
                kernel(p, g, acc, *arrays, grad_scale, maximize, True, *constants, *sc)
        self._flush(batches, grad_scale)
        return True

    def _flush(self, batches, grad_scale):
        for key, batch in batches.items():
            self._run_batch(batch, key, grad_scale)
        batches.clear()

    def _run_batch(self, batch, key, grad_scale):
        """Step ``batch`` ([(slot, flat grad, flat acc or None, step count)]: one group, one set
        of formats and step scalars): one float32/float64 parameter by the single kernel, any
        other batch by one call of the many kernel (kernels/CONTRACT.md)."""
        prep, _, sc, use_acc = key
        slot, g, acc, t = batch[0]
        st = slot.storage
        if len(batch) == 1 and st.single:
            p = slot.s["param"]
            prep.kernel(p, g, acc if use_acc else p, *slot.arrays, grad_scale, prep.maximize,
                        use_acc, *prep.constants, *sc)
            return
        if prep.many is None:
            prep.many = kernel(self.spec.name + "_many")
        span = check.span
        rows, sizes, keys = [], [0], []
        seed = prep.o["stochastic_round_seed"] if st.sr else None   # per tensor; roles mix it
        for slot, g, acc, t in batch:
            row = list(slot.row)
            row[1] = span(g)[0]
            if use_acc:
                row[2] = span(acc)[0]
            rows.append(row)
            sizes.append(g.size)
            keys.append(0 if seed is None else fmt.sr_key(seed, t, slot.ordinal))
        offsets = np.cumsum(sizes, dtype=np.int64)
        prep.many(np.array(rows, np.int64), offsets, st.codes, np.array(keys, np.uint32),
                  grad_scale, prep.maximize, use_acc, *prep.constants, *sc)

    # --- tables: a group's kernel calls kept between steps (Table) ------------------------------

    def _table(self, prep, slots):
        """A Table of ``slots`` (one group's, of a step that completed: no new state), or None
        if its steps need what a table does not do (scalar state beyond the step count, a
        flat run, clipping, shared memory between the parameters' arrays)."""
        spec = self.spec
        if spec.scalar_state or self._max_grad_norm is not None or not slots or any(
                s.storage is None or s.pending is not None or s.fresh for s in slots):
            return None
        spans = sorted((a, b) for s in slots for a, b in s.spans if b > a)
        lo = np.array([a for a, _ in spans], np.int64)
        hi = np.array([b for _, b in spans], np.int64)
        if (hi[:-1] > lo[1:]).any():      # arrays of two parameters share memory: slow path
            return None
        groups = {}
        for i, s in enumerate(slots):
            groups.setdefault(s.storage.key, []).append(i)
        segments = [Segment(slots[idx[0]].storage, idx, slots, len(idx) == len(slots))
                    for idx in groups.values()]
        nbytes = np.array([s.s["param"].nbytes for s in slots], np.int64)
        return Table(slots, segments, lo, hi, nbytes, prep.names,
                     tuple(prep.o[k] for k in FORMAT_OPTIONS))

    def _table_fits(self, table, prep):
        """Whether ``prep`` (this step's options of the table's group) keeps the table's
        arrays and formats (a schedule changing lr does; amsgrad switched on does not)."""
        return prep.names == table.names and table.formats == tuple(prep.o[k] for k in FORMAT_OPTIONS)

    def _table_grads(self, table, addresses):
        """The gradients' addresses as an int64 array if none of the gradients (each of its
        parameter's dtype and shape, C-contiguous: the front end checked) overlaps any
        parameter or state array of the table; else None (the slow path then refuses or
        takes it, as it does without a table)."""
        return check.disjoint(addresses, table.nbytes, table.lo, table.hi)

    def _run_table(self, prep, table, grads, grad_scale):
        """Step checked ``table`` with ``grads``: (addresses from _table_grads, the front
        end's gradients), one kernel call per segment and step count (as ``_run`` batches
        the same parameters: usually one count, e.g. not after one parameter had no
        gradient for a step)."""
        addresses, items = grads
        steps = self._table_advance(table)
        if steps is None:
            runs = [(0, None)]
        elif steps[0] == steps[-1] and (steps == steps[0]).all():
            runs = [(int(steps[0]), None)]
        else:
            runs = [(int(t), steps == t) for t in np.unique(steps)]
        scalars = self.spec.scalars
        for t, mask in runs:
            sc = () if scalars is None else scalars(prep.o, t, None, False)
            for seg in table.segments:
                self._run_segment(prep, table, seg, None if mask is None else mask[seg.index],
                                  addresses, items, t, sc, grad_scale)

    def _run_segment(self, prep, table, seg, sel, addresses, items, t, sc, grad_scale):
        """One call over the tensors of ``seg`` selected by boolean ``sel`` (None: all)."""
        index = seg.index if sel is None else seg.index[sel]
        if len(index) == 0:
            return
        if len(index) == 1 and seg.st.single:     # as _run_batch steps one such tensor
            slot = table.slots[index[0]]
            p = slot.s["param"]
            prep.kernel(p, self._flat_grad(items[index[0]]), p, *slot.arrays, grad_scale,
                        prep.maximize, False, *prep.constants, *sc)
            return
        if sel is None:
            ptrs, offsets, mixed, keys = seg.ptrs, seg.offsets, seg.mixed, seg.keys
            ptrs[:, 1] = addresses if seg.whole else addresses[index]
        else:
            ptrs = seg.ptrs[sel]
            ptrs[:, 1] = addresses[index]
            offsets = np.concatenate(([0], np.cumsum(seg.sizes[sel]))).astype(np.int64)
            mixed = None if seg.mixed is None else seg.mixed[sel]
            keys = np.zeros(len(index), np.uint32)
        if mixed is not None:      # formats.sr_key of every tensor at once
            s = fmt._mix32((prep.o["stochastic_round_seed"] & 0xFFFFFFFF) ^ fmt._mix32(t & 0xFFFFFFFF))
            keys = fmt.mix32(np.uint32(s) ^ mixed)
        kernel(self.spec.name + "_many")(ptrs, offsets, seg.st.codes, keys, grad_scale,
                                         prep.maximize, False, *prep.constants, *sc)

    # --- checkpoints ---------------------------------------------------------------------------

    def _checked_param_state(self, saved, o, shape, dtype, where, to_array):
        """One parameter's saved state, checked against the spec under options ``o``:
        {name: array | step int | scalar}. ``to_array(value)``: the value as a NumPy array (a
        copy is made later) or raise. A state array has the parameter's shape, or is flat, and
        the dtype its storage says (``state_dtype``; the master copy float32); fastgd.torch
        takes any float dtype, cast to that one as torch casts to the parameter's. Returns
        the arrays as they are; ``expected_dtype(o, dtype, name)`` says what to cast them to."""
        spec = self.spec
        if not isinstance(saved, dict):
            raise ValueError(f"{where}: a parameter's state must be a dict; got {type(saved).__name__}")
        size = int(np.prod(shape))
        st = Storage(o, dtype, len(spec.arrays(_Names())), where,
                     quantized(o, size, spec.state_names(o)), spec)
        has_step = spec.torch_step or not self._torch_layout
        names = spec.state_names(o) + (("master_weight",) if st.master else ())
        if st.bits:
            names += tuple(absmax_name(n) for n in spec.state_names(o))
        expected = set(names) | {n for n, _, _ in spec.scalar_state}
        if has_step:
            expected.add("step")
        if not saved and self._torch_layout:
            return {}
        if set(saved) != expected:
            kept = (f" (optim_bits={st.bits}: quantized states with their block maxima)" if st.bits
                    else "")
            raise ValueError(f"{where} has state keys {sorted(map(str, saved))}; {type(self).__name__} "
                             f"with these options keeps {sorted(expected)}{kept} (a state_dict of "
                             "another optimizer or other options?)")
        out = {}
        if has_step:
            out["step"] = step_count(saved["step"], where)
        for name, _, check_one in spec.scalar_state:
            out[name] = check_one(f"{where}: {name}", _item(saved[name]))
        for name in names:
            try:
                a = to_array(saved[name])
            except (TypeError, ValueError, RuntimeError) as exc:
                raise ValueError(f"{where}: state {name!r} is not an array: {exc}") from None
            n, want = self._state_layout(st, name, size)
            raw = want == np.uint8 or (st.bits and name.endswith("_absmax"))
            if raw:      # codes and block maxima: exactly their layout, never cast
                ok = a.dtype == want and (a.shape == (n,) or (a.shape == tuple(shape) and n == size))
                if ok and a.dtype == np.float32 and not (np.isfinite(a).all() and (a >= 0).all()):
                    raise ValueError(f"{where}: state {name!r} (block maxima of a quantized state) "
                                     "must be finite and >= 0")
                what = (f"{n} {want} ({'codes' if want == np.uint8 else 'block maxima'} of an "
                        f"{st.bits}-bit state)")
            else:
                ok = (fmt.code_of(a.dtype) is not None) if self._torch_layout else a.dtype == want
                ok = ok and a.shape in ((size,), tuple(shape))
                what = f"{size} elements kept in {want} (state_dtype / master_weights)"
            if not ok:
                raise ValueError(f"{where}: state {name!r} has shape {a.shape} and dtype {a.dtype}; "
                                 f"the parameter has {size} elements and this state is {what}")
            out[name] = a
        return out

    def expected_dtype(self, o, dtype, name, size=0):
        """The dtype state ``name`` of a parameter of ``dtype`` and ``size`` elements is kept in
        under options ``o``."""
        spec = self.spec
        st = Storage(o, dtype, len(spec.arrays(_Names())), "a parameter",
                     quantized(o, size, spec.state_names(o)), spec)
        return self._state_layout(st, name, size)[1]

    def _checked_groups(self, saved_groups, current_groups, defaults):
        """The param groups of a state_dict checked against this optimizer's: the same count and
        sizes, exactly this optimizer's options, each checked; the fixed options unchanged.
        Returns [(saved group, checked options)]."""
        kind = type(self).__name__
        if not isinstance(saved_groups, (list, tuple)):
            raise ValueError("state_dict['param_groups'] must be a list of param-group dicts")
        if len(saved_groups) != len(current_groups):
            raise ValueError(f"state_dict has {len(saved_groups)} param groups; this optimizer has "
                             f"{len(current_groups)}")
        out = []
        for i, (mine, saved) in enumerate(zip(current_groups, saved_groups)):
            if not isinstance(saved, dict) or not isinstance(saved.get("params"), (list, tuple)):
                raise ValueError(f"param_groups[{i}] of the state_dict is not a param-group dict "
                                 "with a 'params' list")
            if len(saved["params"]) != len(mine["params"]):
                raise ValueError(f"param_groups[{i}] has {len(saved['params'])} parameters in the "
                                 f"state_dict but {len(mine['params'])} here")
            keys = set(saved) - {"params"}
            unknown, missing = keys - set(defaults), set(defaults) - keys
            if unknown:
                raise ValueError(f"param_groups[{i}] has option(s) {sorted(unknown)} that {kind} "
                                 "does not know (a state_dict of another optimizer?)")
            if missing:
                raise ValueError(f"param_groups[{i}] of the state_dict lacks option(s) "
                                 f"{sorted(missing)} of {kind} (a state_dict of another optimizer?)")
            try:
                o = self._check_group(saved)
            except (TypeError, ValueError) as exc:
                raise type(exc)(f"param_groups[{i}] of the state_dict: {exc}") from None
            for name in self.spec.fixed:
                if o[name] != self._check_group(mine)[name]:
                    raise ValueError(f"param_groups[{i}] of the state_dict has {name}={saved[name]!r} "
                                     f"but this {kind} has {mine[name]!r}: another rule's state_dict "
                                     "(e.g. AdamW's into Adam)")
            out.append((saved, o))
        order = [i for saved in saved_groups for i in saved["params"]]
        if (not all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in order)
                or len(set(order)) != len(order)):
            raise ValueError("the state_dict's param groups must list distinct parameter indices (ints)")
        return out
