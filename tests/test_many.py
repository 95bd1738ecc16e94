"""The ``<rule>_many`` kernels (kernels/CONTRACT.md, "Many tensors, any storage format") of every
backend against the reference's (fastgd._reference.many), and fastgd/formats.py's rounding.

A case is one call: one rule variant (the options that switch arrays on and off), one format
recipe (the storage format of each role), four tensors of odd lengths (1, 7, 1023, 100_003; in
all above PARALLEL_MIN, so the compiled kernels run in parallel), random data (never zeros;
second moments positive), a NaN in one gradient element. A case is built from its seed, and
every call gets fresh copies of its inputs (Case.clone), so every call sees the same inputs.

The compiled backends' tests skip while a backend has no ``<rule>_many`` (see many_kernel).
"""
import copy
import zlib

import numpy as np
import pytest

from fastgd import _reference as ref
from fastgd import formats
from fastgd.backends import kernel
from fastgd.rules import SPECS
from _helpers import BACKENDS, COMPILED, require_backend, run_at_thread_counts

ml_dtypes = pytest.importorskip("ml_dtypes")

F32, BF16, F16, F64, SR, NONE = (formats.F32, formats.BF16, formats.F16, formats.F64,
                                 formats.BF16_SR, formats.NONE)
LENGTHS = (1, 7, 1023, 100_003)
NAN_AT = (2, 5)            # (tensor, element) whose gradient is NaN
SEED = 1234                # the stochastic-rounding seed (sr_key's)

#: name -> (param, grad (and grad_acc), state arrays, out): the format of each role
RECIPES = {
    "f32": (F32, F32, F32, NONE),
    "f64": (F64, F64, F64, NONE),
    "bf16": (BF16, BF16, BF16, NONE),
    "f16": (F16, F16, F16, NONE),
    "bf16-f32states": (BF16, BF16, F32, NONE),
    "f16-f32states": (F16, F16, F32, NONE),
    "f32-bf16states": (F32, F32, BF16, NONE),
    "f32-f16states": (F32, F32, F16, NONE),
    "master-bf16": (F32, BF16, F32, BF16),
    "master-bf16-bf16states": (F32, BF16, BF16, BF16),
    "master-f16": (F32, F16, F32, F16),
    "master-f16-f16states": (F32, F16, F16, F16),
    "sr-bf16-f32states": (SR, BF16, F32, NONE),
    "sr-bf16": (SR, BF16, BF16, NONE),
    "sr-bf16-srstates": (SR, BF16, SR, NONE),          # bf16_stochastic_round: states too
    "f32-srstates": (F32, F32, SR, NONE),
    "master-bf16-srstates": (F32, BF16, SR, BF16),
}

#: quantized states (kernels/CONTRACT.md, "Quantized states"): name -> (param, grad, bits, out);
#: each state array is on its own map (formats.quantized_code(bits, State.signed8/signed4)).
#: Kept out of RECIPES: a backend runs them once it has them (QBACKENDS).
QRECIPES = {
    "f32-q8": (F32, F32, 8, NONE),
    "bf16-q8": (BF16, BF16, 8, NONE),
    "f16-q8": (F16, F16, 8, NONE),
    "master-bf16-q8": (F32, BF16, 8, BF16),
    "sr-bf16-q8": (SR, BF16, 8, NONE),
    "f32-q4": (F32, F32, 4, NONE),
    "bf16-q4": (BF16, BF16, 4, NONE),
    "master-f16-q4": (F32, F16, 4, F16),
    "sr-bf16-q4": (SR, BF16, 4, NONE),
}
#: the backends whose ``<rule>_many`` take quantized states
QBACKENDS = ["cython", "numba"]
#: quantized cases' lengths: around the blocks (255, 257), an empty tensor, a long one
QLENGTHS = (1, 7, 255, 0, 257, 1023, 100_003)
#: (tensor, start, end) of quantized cases where grad, grad_acc and the states are 0: blocks
#: whose new state is all zeros where nothing adds to it (absmax 0, codes of 0 / NaN)
ZERO_AT = (6, 512, 768)
#: the name of a quantized state's absmax array in a Case's tensors
ABSMAX = ".absmax"

#: (rule, id, options, call): the variants whose options switch arrays (amsgrad, momentum,
#: nesterov, centered), with use_acc, maximize, grad_scale and weight decay (coupled and
#: decoupled) spread over them; call: t (default 3), fresh, use_acc, grad_scale
VARIANTS = [
    ("adam", "plain", {}, {}),
    ("adam", "amsgrad-maximize", {"amsgrad": True, "maximize": True}, {}),
    ("adam", "adamw-acc", {"weight_decay": 0.05, "decoupled_weight_decay": True}, {"use_acc": True}),
    ("adam", "coupled-amsgrad-acc", {"weight_decay": 0.05, "amsgrad": True},
     {"use_acc": True, "grad_scale": 0.7}),
    ("sgd", "plain", {}, {}),
    ("sgd", "momentum-first", {"momentum": 0.9}, {"t": 1, "fresh": True}),
    ("sgd", "momentum-dampening-wd", {"momentum": 0.9, "dampening": 0.1, "weight_decay": 0.05},
     {"grad_scale": 0.7}),
    ("sgd", "nesterov-maximize-acc", {"momentum": 0.9, "nesterov": True, "maximize": True},
     {"use_acc": True}),
    ("adagrad", "plain", {}, {}),
    ("adagrad", "wd-decay-maximize-acc", {"weight_decay": 0.05, "lr_decay": 0.01, "maximize": True},
     {"use_acc": True}),
    ("rmsprop", "plain", {}, {}),
    ("rmsprop", "centered", {"centered": True}, {}),
    ("rmsprop", "momentum-maximize", {"momentum": 0.5, "maximize": True}, {}),
    ("rmsprop", "centered-momentum-wd-acc", {"centered": True, "momentum": 0.5, "weight_decay": 0.05},
     {"use_acc": True, "grad_scale": 0.7}),
    ("adamax", "plain", {}, {}),
    ("adamax", "wd-maximize-acc", {"weight_decay": 0.05, "maximize": True}, {"use_acc": True}),
    ("nadam", "plain", {}, {}),
    ("nadam", "coupled-acc", {"weight_decay": 0.05}, {"use_acc": True}),
    ("nadam", "decoupled-maximize", {"weight_decay": 0.05, "decoupled_weight_decay": True,
                                     "maximize": True}, {}),
    ("radam", "adaptive", {}, {"t": 10}),
    ("radam", "early-decoupled-acc", {"weight_decay": 0.05, "decoupled_weight_decay": True},
     {"t": 2, "use_acc": True}),
    ("radam", "adaptive-coupled-maximize", {"weight_decay": 0.05, "maximize": True}, {"t": 10}),
    ("lion", "plain", {}, {}),
    ("lion", "wd-maximize-acc", {"weight_decay": 0.1, "maximize": True}, {"use_acc": True}),
]
VARIANT_IDS = [f"{r}-{v}" for r, v, _, _ in VARIANTS]

#: float32 roles against the reference: a few roundings apart (the kernels may fuse a*b+c)
RTOL32, ATOL32 = 1e-5, 1e-6
#: the fraction of a 16-bit role that may differ by 1 ulp from the reference. Measured with
#: FMA-contracted float32 arithmetic (the Cython single kernels under the reference's driver):
#: at most 0.21% (SGD's momentum buffer from 16-bit inputs: inputs of few bits times 0.9f fall
#: near 16-bit ties far more often than the 2**-16 of random bits); elsewhere <= 0.09%.
MAX_FLIPS = 0.01

#: state arrays that are second moments or maxima: positive (as they are in a real run)
POSITIVE = {"exp_avg_sq", "max_exp_avg_sq", "sum", "square_avg", "exp_inf"}


def _stored(values, code):
    """Initial data in format ``code`` (the SR param starts from a nearest-even bfloat16)."""
    return formats.store(np.asarray(values, dtype=np.float64 if code == F64 else np.float32),
                         BF16 if code == SR else code)


class Case:
    """The arrays of one ``_many`` call and its table (ptrs, offsets, fmts, keys), kept alive.

    ``names``: the array name in each role (param, grad, grad_acc, *state roles, out; out is
    None when absent); an unused role names the array standing in for it, by ``convention``:

    - "core", as fastgd._core builds its table: every role's code is its nominal format (grad_acc
      the grad's, a state role the states', whatever stands in for it); an unused grad_acc is the
      param role's array (the master copy with master weights); unused state roles are what the
      spec's ``arrays`` passes for them given the param, which with master weights is the 16-bit
      param, i.e. out;
    - "contract", as kernels/CONTRACT.md words it: a stand-in is another array of the tensor in
      a format the role may have, and the role's code is that array's format: an unused grad_acc
      is the param if it is stored as the grad is (the single kernel's stand-in), else the grad;
      unused state roles are what ``arrays`` passes given the param role's array.
    """

    def __init__(self, rule, options, call, recipe, lengths=None, seed=0, convention="core"):
        spec = SPECS[rule]
        self.rule, self.recipe_name = rule, recipe
        self.recipe = RECIPES[recipe] if recipe in RECIPES else QRECIPES[recipe]
        #: 8 or 4 with quantized states (then a state's entry is its codes, name + ABSMAX its
        #: absmax), else 0
        self.bits = self.recipe[2] if recipe in QRECIPES else 0
        if lengths is None:
            lengths = QLENGTHS if self.bits else LENGTHS
        #: each state's quantized format (formats.quantized_code of its spec State)
        self.qcode = {st.name: formats.quantized_code(
            self.bits, st.signed8 if self.bits == 8 else st.signed4)
            for st in spec.state} if self.bits else {}
        o = spec.check_options({**spec.defaults, "lr": 0.03, **options})
        self.t = call.get("t", 3)
        self.use_acc = call.get("use_acc", False)
        self.grad_scale = call.get("grad_scale", 1.0)
        self.maximize = o["maximize"]
        scalar_state = {n: v for n, v, _ in spec.scalar_state}
        step = spec.scalars(o, self.t, scalar_state, call.get("fresh", False)) if spec.scalars else ()
        self.scalars = (*spec.constants(o), *step)
        if rule == "radam":   # the variants cover both branches of the rectification
            assert step[2] == (self.t >= 6)
        p_code, g_code, s_code, out_code = self.recipe
        self.state = spec.state_names(o)
        rng = np.random.default_rng(seed)
        dtype = np.float64 if p_code == F64 else np.float32

        def normal(n):
            return rng.standard_normal(n, dtype=dtype)

        def state(a, k, name, values):   # a state array's initial values, stored
            if not self.bits:
                a[name] = _stored(values, s_code)
                return
            values = np.asarray(values, np.float32)
            if k == ZERO_AT[0]:
                values[ZERO_AT[1]:ZERO_AT[2]] = 0.0
            a[name], a[name + ABSMAX] = formats.quantize(values, self.qcode[name])

        def zeroed(k, g):       # quantized cases: ZERO_AT's gradients are 0
            if self.bits and k == ZERO_AT[0]:
                g[ZERO_AT[1]:ZERO_AT[2]] = 0.0
            return g

        self.tensors = []
        for k, n in enumerate(lengths):
            a = {"param": _stored(normal(n), p_code)}
            g = zeroed(k, normal(n))
            if k == NAN_AT[0]:
                g[NAN_AT[1]] = np.nan
            a["grad"] = _stored(g, g_code)
            if self.use_acc:
                a["grad_acc"] = _stored(zeroed(k, normal(n)), g_code)
            for name in self.state:
                v = normal(n)
                if name == "square_avg" and "grad_avg" in self.state:
                    continue   # made with grad_avg below
                if name == "grad_avg":   # centered: square_avg > grad_avg^2, as in a real run
                    # (by a margin that survives rounding both to bfloat16; quantized, a wider
                    # one: 4-bit codes of 1.02 v^2 + ... gave grad_avg^2 > square_avg at 6%)
                    wide = (2.0, 1.0) if self.bits else (1.02, 0.01)
                    state(a, k, "square_avg", wide[0] * v * v + np.abs(normal(n)) + wide[1])
                state(a, k, name, np.abs(v) + 0.01 if name in POSITIVE else v)
            if out_code != NONE:
                a["out"] = _stored(normal(n), out_code)   # garbage: written, never read
            self.tensors.append(a)
        # the roles, by name (the same for every tensor)
        a = self.tensors[0]
        named = {id(arr): name for name, arr in a.items()}
        master = out_code != NONE
        if convention == "core":
            given = a["out"] if master else a["param"]
            acc = "grad_acc" if self.use_acc else "param"
        else:
            given = a["param"]
            acc = ("grad_acc" if self.use_acc else
                   "param" if a["param"].dtype == a["grad"].dtype else "grad")
        states = spec.arrays({**{n: a[n] for n in self.state}, "param": given})
        self.names = ["param", "grad", acc, *[named[id(s)] for s in states],
                      "out" if master else None]
        #: the format each array is stored in (SR for an SR param)
        self.codes = {"param": p_code, "grad": g_code, "grad_acc": g_code, "out": out_code,
                      **{n: s_code for n in self.state}}
        if self.bits:
            # a state role has the code of the array at its address (a stand-in at the param
            # that of the param as stored, bfloat16 for an SR param), as fastgd._core gives them
            self.codes.update({n: self.qcode[n] for n in self.state})
            self.codes.update({n + ABSMAX: F32 for n in self.state})
            states = [self.codes[nm] if nm in self.state else
                      BF16 if self.codes[nm] == SR else self.codes[nm] for nm in self.names[3:-1]]
            self.fmts = np.array([p_code, g_code, g_code, *states, out_code], np.int32)
        elif convention == "core":
            self.fmts = np.array([p_code, g_code, g_code, *[s_code] * len(states), out_code], np.int32)
        else:   # a stand-in at the SR param's address says what it is stored as (bfloat16)
            self.fmts = np.array([NONE if nm is None else
                                  BF16 if (nm == "param" and r > 0 and p_code == SR) else
                                  self.codes[nm] for r, nm in enumerate(self.names)], np.int32)
        self.offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        self.keys = np.array([formats.sr_key(SEED, self.t, k) for k in range(len(lengths))],
                             dtype=np.uint32)
        self._table()

    def _table(self):
        self.ptrs = np.array([[0 if nm is None else t[nm].ctypes.data for nm in self.names]
                              for t in self.tensors], dtype=np.int64)
        if self.bits:   # the absmax columns: role r's in column R + r - 3 (0: not quantized)
            absmax = [[t[nm + ABSMAX].ctypes.data if nm in self.state else 0
                       for nm in self.names[3:-1]] for t in self.tensors]
            self.ptrs = np.ascontiguousarray(np.hstack([self.ptrs, np.array(absmax, np.int64)]))

    def clone(self):
        """The same case on copies of its arrays (as they are now), with its own table."""
        twin = copy.copy(self)
        twin.tensors = [{name: arr.copy() for name, arr in t.items()} for t in self.tensors]
        twin._table()
        return twin

    @property
    def written(self):
        """The arrays the step writes: param, the state it keeps, grad_acc with use_acc, out."""
        return ("param", *self.state, *(n + ABSMAX for n in self.state if self.bits),
                *(("grad_acc",) if self.use_acc else ()),
                *(("out",) if "out" in self.tensors[0] else ()))

    def code(self, name):
        """The format a named array is stored in (SR for an SR param)."""
        return self.codes[name]

    def call(self, fn):
        fn(self.ptrs, self.offsets, self.fmts, self.keys, self.grad_scale, self.maximize,
           self.use_acc, *self.scalars)
        return self

    def snapshot(self):
        return [{name: arr.copy() for name, arr in t.items()} for t in self.tensors]


def oracle(case):
    """What the call must leave, computed from the arrays themselves (no addresses): the single
    reference on float32 (float64) copies with the single kernel's aliasing, each written array
    stored in its format, every other array as it was."""
    single = getattr(ref, case.rule)
    wide = case.recipe[0] == F64
    result = []
    for k, t in enumerate(case.tensors):
        x = {name: formats.load(arr).astype(np.float64 if wide else np.float32)
             for name, arr in t.items()}   # out too: with master weights, a stand-in
        for name in case.qcode if case.bits else ():   # quantized states: their values
            if name in t:
                x[name] = formats.dequantize(t[name], t[name + ABSMAX], case.qcode[name],
                                             len(t["param"]))
        single(*[x[nm] for nm in case.names[:-1]], case.grad_scale, case.maximize, case.use_acc,
               *case.scalars)
        want = {name: arr.copy() for name, arr in t.items()}
        for name in case.written:
            if name in case.qcode:
                want[name], want[name + ABSMAX] = formats.quantize(x[name], case.qcode[name])
                continue
            if name.endswith(ABSMAX):
                continue
            source = x["param" if name == "out" else name]
            role = 0 if name == "out" else case.names.index(name)
            want[name] = formats.store(source, case.code(name), int(case.keys[k]), role)
        result.append(want)
    return result


def _ordered(a):
    """16-bit floats as integers in the order of their values (so 1 ulp apart = 1 apart)."""
    b = a.view(np.uint16).astype(np.int32)
    return np.where(b & 0x8000, -(b & 0x7FFF), b & 0x7FFF)


def assert_matches(got, want, case, what, exact_codes=True):
    """float32/float64 arrays within a tight relative tolerance (FMA contraction may differ);
    16-bit arrays equal or 1 ulp apart (one rounding of float32 can flip the 16-bit rounding)
    or, where a result cancels to near zero, as close as float32 must be (bfloat16 keeps
    float32's range, so there a float32 rounding is many bfloat16 ulps), the differing ones a
    small fraction (MAX_FLIPS); NaN exactly where the reference has NaN (any payload)."""
    for name in want[0]:
        a = np.concatenate([t[name] for t in got])
        b = np.concatenate([t[name] for t in want])
        label = f"{what}: {name} ({formats.NAMES[int(case.code(name))]})"
        assert a.dtype == b.dtype, label
        if a.dtype == np.uint8:     # a quantized state's codes
            assert_codes_match(a, b, case.bits, label, exact_codes)
            continue
        uint = {8: np.uint64, 4: np.uint32, 2: np.uint16}[a.dtype.itemsize]
        at = np.flatnonzero(a.view(uint) != b.view(uint))   # only these need a look
        if at.size == 0:
            continue
        x, y = a[at].astype(np.float64), b[at].astype(np.float64)
        nan_x, nan_y = np.isnan(x), np.isnan(y)
        assert np.array_equal(nan_x, nan_y), (
            f"{label}: NaN at {at[nan_x][:8]}, the reference's at {at[nan_y][:8]}")
        keep = ~nan_y
        at, x, y = at[keep], x[keep], y[keep]
        if a.dtype.itemsize >= 4:
            rtol, atol = (1e-12, 1e-14) if a.dtype == np.float64 else (RTOL32, ATOL32)
            bad = ~(np.abs(x - y) <= atol + rtol * np.abs(y))
            assert not bad.any(), (f"{label}: {np.count_nonzero(bad)} of {a.size} not close, e.g. "
                                   f"at {at[bad][0]}: {x[bad][0]!r} vs {y[bad][0]!r}")
        else:
            ulps = np.abs(_ordered(a[at]) - _ordered(b[at]))
            bad = (ulps > 1) & ~(np.abs(x - y) <= ATOL32)
            assert not bad.any(), (f"{label}: {ulps[bad].max()} ulps apart, e.g. at {at[bad][0]}: "
                                   f"{x[bad][0]!r} vs {y[bad][0]!r}")
            assert at.size <= max(2, MAX_FLIPS * a.size), f"{label}: {at.size} of {a.size} differ"


def _nibbles(packed):
    """4-bit codes, two a byte (element 2k in the high nibble), one a byte."""
    return np.stack([packed >> 4, packed & 15], axis=1).reshape(-1)


#: the (backend, rule)s whose float32 arithmetic is the reference's, bit for bit: Numba never
#: contracts a * b + c into an FMA, the Cython kernels compiled with -ffp-contract=off neither
#: (setup.py NO_FP_CONTRACT). Their quantized results are bitwise the reference's.
def fma_free(backend, rule):
    return backend == "numba" or (backend == "cython" and rule in ("adagrad", "rmsprop", "lion"))


#: the fraction of a contracted kernel's quantized codes that may be 1 code off the reference.
#: A state one float32 rounding away from the reference's (an FMA) crosses the rounding boundary
#: of its code (8 bits: one of the 65536 grid points; 4 bits: a midpoint) only when it sits on
#: one, or its block's absmax is 1 ulp off (measured, every variant x QRECIPES, cython: absmax 1
#: ulp apart in up to 27% of the blocks of exp_avg_sq, codes off by 1 in 1 of 101546 elements in
#: 2 of 216 cases, never more than 1 apart). The float twin of
#: test_quantized_many_matches_the_reference shows the staging itself is exact.
QFLIPS = 1e-4


def assert_codes_match(a, b, bits, label, exact=True):
    """Quantized codes (uint8, 4-bit ones packed) against the reference's: equal, or (not
    ``exact``: FMA contraction) 1 code apart in a tiny fraction (QFLIPS)."""
    x, y = (a, b) if bits == 8 else (_nibbles(a), _nibbles(b))
    at = np.flatnonzero(x != y)
    msg = (f"{label}: {at.size} of {x.size} codes differ, e.g. at {at[:8]}: {x[at[:8]]} vs "
           f"{y[at[:8]]}")
    if exact:
        assert at.size == 0, msg
    else:
        assert (np.abs(x[at].astype(np.int32) - y[at]) <= 1).all(), msg
        assert at.size <= max(2, QFLIPS * x.size), msg


def many_kernel(backend, rule):
    """``<rule>_many`` of ``backend``; the test fails if the backend is unusable (as every test
    does)."""
    require_backend(backend)
    return kernel(f"{rule}_many", backend)


def _seed(*parts):
    return zlib.crc32("-".join(parts).encode())


CASES = [(v, r) for v in VARIANTS for r in RECIPES]
CASE_IDS = [f"{r}-{v}-{recipe}" for (r, v, _, _), recipe in CASES]


# --- the reference itself ---------------------------------------------------------------------

@pytest.mark.parametrize("variant, recipe", CASES, ids=CASE_IDS)
def test_reference_many_is_the_single_reference_per_tensor(variant, recipe):
    """Bitwise: the reference's views of the addresses, its stand-in handling and its stores
    are those of the oracle, which works on the arrays themselves; grad is never written."""
    rule, vid, options, call = variant
    case = Case(rule, options, call, recipe, seed=_seed(rule, vid, recipe, "oracle"))
    got = case.clone().call(getattr(ref, f"{rule}_many")).snapshot()
    want = oracle(case)
    for k, (g, w) in enumerate(zip(got, want)):
        for name in w:
            assert g[name].tobytes() == w[name].tobytes(), f"tensor {k}, {name}"


def test_reference_many_by_hand():
    """SGD on a bfloat16 param with stochastic rounding, and on a float32 master param with a
    float16 copy, written out without the single reference: p = p - lr * g in float32."""
    rng = np.random.default_rng(0)
    lr = 0.03
    p_sr = formats.to_bfloat16(rng.standard_normal(1001).astype(np.float32))
    g_bf = formats.to_bfloat16(rng.standard_normal(1001).astype(np.float32))
    master = rng.standard_normal(1001).astype(np.float32)
    g_f16 = rng.standard_normal(1001).astype(np.float16)
    out = np.zeros(1001, np.float16)
    updated = p_sr.astype(np.float32) - np.float32(lr) * g_bf.astype(np.float32)
    want_sr = formats.to_bfloat16_sr(updated, 77)
    want_master = master - np.float32(lr) * g_f16.astype(np.float32)
    # sgd roles: param, grad, grad_acc, momentum_buffer, out (no momentum: stand-ins)
    ref.sgd_many(np.array([[p_sr.ctypes.data, g_bf.ctypes.data, g_bf.ctypes.data,
                            p_sr.ctypes.data, 0]]),
                 np.array([0, 1001]), np.array([SR, BF16, BF16, BF16, NONE], np.int32),
                 np.array([77], np.uint32), 1.0, False, False, lr, 0.0, 0.0, 0.0, False, False)
    ref.sgd_many(np.array([[master.ctypes.data, g_f16.ctypes.data, master.ctypes.data,
                            master.ctypes.data, out.ctypes.data]]),
                 np.array([0, 1001]), np.array([F32, F16, F32, F32, F16], np.int32),
                 np.array([0], np.uint32), 1.0, False, False, lr, 0.0, 0.0, 0.0, False, False)
    assert p_sr.tobytes() == want_sr.tobytes()
    assert master.tobytes() == want_master.tobytes()
    assert out.tobytes() == want_master.astype(np.float16).tobytes()
    # ... and SR is not nearest-even: some elements round the other way
    assert (want_sr.view(np.uint16) != formats.to_bfloat16(updated).view(np.uint16)).any()


def test_reference_many_stand_in_before_its_array():
    """A stand-in role whose address comes before the array's own role (not what the specs do,
    but the reference does not depend on it): v is updated, not overwritten by a stale copy."""
    rng = np.random.default_rng(1)
    n = 33
    p, g, m = (rng.standard_normal(n).astype(np.float32) for _ in range(3))
    v = np.abs(rng.standard_normal(n)).astype(np.float32) + 0.01
    ps, gs, ms, vs = p.copy(), g.copy(), m.copy(), v.copy()
    scalars = (0.03, 0.9, 0.999, 1e-8, 0.0, False, False, 0.1, 0.01)
    ref.adam(ps, gs, ps, ms, vs, vs, 1.0, False, False, *scalars)
    # adam's roles: param, grad, grad_acc, exp_avg, exp_avg_sq, max_exp_avg_sq, out; here
    # the grad_acc stand-in is v (not used without use_acc), before v's own role
    ptrs = np.array([[p.ctypes.data, g.ctypes.data, v.ctypes.data, m.ctypes.data, v.ctypes.data,
                      v.ctypes.data, 0]])
    ref.adam_many(ptrs, np.array([0, n]), np.zeros(7, np.int32) - np.eye(7, dtype=np.int32)[6],
                  np.zeros(1, np.uint32), 1.0, False, False, *scalars)
    for a, b in ((p, ps), (m, ms), (v, vs)):
        assert a.tobytes() == b.tobytes()


# --- every backend against the reference ------------------------------------------------------

_memo = {}   # one case: its pristine inputs and the reference's result


def _case_and_reference(variant, recipe):
    """(the case's inputs, the reference's snapshot); the tests below run the backends of one
    case one after the other, so one memo slot builds each case and its reference once."""
    rule, vid, options, call = variant
    key = (rule, vid, recipe)
    if key not in _memo:
        _memo.clear()
        case = Case(rule, options, call, recipe, seed=_seed(rule, vid, recipe))
        _memo[key] = case, case.clone().call(getattr(ref, f"{rule}_many")).snapshot()
    return _memo[key]




def _numba_runs(variant, recipe, recipes=tuple(RECIPES)):
    """Whether the Numba backend runs this (variant, recipe) case. Numba compiles one copy of
    a kernel per combination of formats and array-switching flags (3-6 s each, once; then it is
    cached on disk): every case would be ~400 copies, half an hour on a cold cache. It runs
    each variant on a rotating two of the recipes instead, so every recipe meets several
    variants and every variant two recipes (Cython and the reference run every case)."""
    vi = VARIANTS.index(variant)
    ri = recipes.index(recipe)
    return (ri - 2 * vi) % len(recipes) in (0, 1)


MATCH = [(b, v, r) for v, r in CASES for b in BACKENDS
         if b != "numba" or _numba_runs(v, r)]   # the backends of a case in a row


@pytest.mark.parametrize("backend, variant, recipe", MATCH,
                         ids=[f"{b}-{r}-{v}-{recipe}" for b, (r, v, _, _), recipe in MATCH])
def test_many_matches_the_reference(backend, variant, recipe):
    rule, vid, _, _ = variant
    fn = many_kernel(backend, rule)
    pristine, want = _case_and_reference(variant, recipe)
    case = pristine.clone()
    got = case.call(fn).snapshot()
    assert [t["grad"].tobytes() for t in got] == [t["grad"].tobytes() for t in pristine.tensors], (
        "grad was written")
    assert_matches(got, want, case, f"{backend} {rule}-{vid} {recipe}")


# The variants with unused roles, on the recipes where the two conventions' stand-ins differ.
STAND_IN_RECIPES = ("master-bf16", "master-f16-f16states", "sr-bf16-f32states", "f32-bf16states")
STAND_IN = [(b, v, r) for v in VARIANTS if v[1] in ("plain", "centered", "momentum-maximize")
            for r in ("master-bf16", "master-f16-f16states", "sr-bf16-f32states", "f32-bf16states")
            for b in BACKENDS if b != "numba" or _numba_runs(v, r, STAND_IN_RECIPES)]


@pytest.mark.parametrize("backend, variant, recipe", STAND_IN,
                         ids=[f"{b}-{r}-{v}-{recipe}" for b, (r, v, _, _), recipe in STAND_IN])
def test_many_with_the_contracts_stand_ins(backend, variant, recipe):
    """The other table convention (Case's "contract"): stand-ins whose codes are their arrays'
    formats give the same results as fastgd._core's table (the unused roles are never read)."""
    rule, vid, options, call = variant
    fn = many_kernel(backend, rule)
    case = Case(rule, options, call, recipe, seed=_seed(rule, vid, recipe), convention="contract")
    pristine = case.clone()
    got = case.call(fn).snapshot()
    want = Case(rule, options, call, recipe, seed=_seed(rule, vid, recipe)).call(
        getattr(ref, f"{rule}_many")).snapshot()
    assert [t["grad"].tobytes() for t in got] == [t["grad"].tobytes() for t in pristine.tensors]
    assert_matches(got, want, case, f"{backend} {rule}-{vid} {recipe}")


# The variants with the most arrays in use (one or two per rule), for the thread test.
FULL = [v for v in VARIANTS if v[1] in (
    "coupled-amsgrad-acc", "nesterov-maximize-acc", "wd-decay-maximize-acc",
    "centered-momentum-wd-acc", "wd-maximize-acc", "coupled-acc", "early-decoupled-acc",
    "adaptive-coupled-maximize")]
FULL_IDS = [f"{r}-{v}" for r, v, _, _ in FULL]


THREAD_RECIPES = ("f32", "f64", "master-bf16", "f16-f32states", "sr-bf16")
THREADS = [(b, v, r) for b in COMPILED for v in FULL for r in THREAD_RECIPES
           if b != "numba" or (THREAD_RECIPES.index(r) - FULL.index(v)) % len(THREAD_RECIPES) == 0]


@pytest.mark.parametrize("backend, variant, recipe", THREADS,
                         ids=[f"{b}-{v[0]}-{v[1]}-{r}" for b, v, r in THREADS])
def test_many_same_bits_at_1_and_2_threads(backend, variant, recipe):
    """The N tensors are cut into pieces as one buffer (boundaries inside tensors, on odd
    lengths): the bits do not depend on where the cuts fall."""
    rule, vid, options, call = variant
    fn = many_kernel(backend, rule)
    assert sum(LENGTHS) > 32768   # PARALLEL_MIN: in parallel with 2 threads
    seed = _seed(rule, vid, recipe, "threads")
    one, two = run_at_thread_counts(
        lambda n: Case(rule, options, call, recipe, seed=seed).call(fn).snapshot())
    for k, (a, b) in enumerate(zip(one, two)):
        for name in a:
            assert a[name].tobytes() == b[name].tobytes(), f"tensor {k}, {name}"


FLOAT = [(b, v, r) for b in BACKENDS for v in VARIANTS for r in ("f32", "f64")
         if b != "numba" or VARIANTS.index(v) % 2 == ("f32", "f64").index(r)]


@pytest.mark.parametrize("backend, variant, recipe", FLOAT,
                         ids=[f"{b}-{v[0]}-{v[1]}-{r}" for b, v, r in FLOAT])
def test_float_tensors_through_many_equal_the_single_kernel(backend, variant, recipe):
    """All float32 (float64): each tensor's arrays after ``<rule>_many`` are bitwise those of
    the backend's single kernel ``<rule>`` on a copy of that tensor (same stand-ins)."""
    rule, vid, options, call = variant
    fn = many_kernel(backend, rule)
    single = kernel(rule, backend)
    seed = _seed(rule, vid, recipe, "single")
    got = Case(rule, options, call, recipe, seed=seed).call(fn).snapshot()
    case = Case(rule, options, call, recipe, seed=seed)
    for t in case.tensors:
        single(*[t[nm] for nm in case.names[:-1]], case.grad_scale, case.maximize, case.use_acc,
               *case.scalars)
    for k, (a, t) in enumerate(zip(got, case.tensors)):
        for name in t:
            assert a[name].tobytes() == t[name].tobytes(), f"tensor {k}, {name}"


#: (p, g, p - g stored as bfloat16): bit patterns through the bfloat16 store's special cases
BF16_SPECIALS = [
    (0x00C0, 0x00A0, 0x0000),   # 1.5 * 2**-126 - 1.25 * 2**-126: a float32 subnormal, flushed
    (0x80C0, 0x80A0, 0x8000),   # ... its negative: flushed to -0
    (0x0040, 0x8080, 0x00C0),   # a subnormal input is loaded exactly (no flush on load)
    (0x3F80, 0x0001, 0x3F80),   # 1 - a tiny subnormal
    (0x3F80, 0x3F80, 0x0000),   # x - x = +0
    (0x8000, 0x0000, 0x8000),   # -0 - +0 = -0
    (0x7F40, 0xFF40, 0x7F80),   # overflow in float32: inf
    (0x7F7F, 0xFB00, 0x7F80),   # the largest bfloat16 + half an ulp: a tie, to even, is inf
    (0x3F80, 0xBB80, 0x3F80),   # 1 + 2**-8: tie to even (down)
    (0x3F81, 0xBB80, 0x3F82),   # 1 + 3 * 2**-8: tie to even (up)
    (0x7F80, 0x3F80, 0x7F80),   # inf - 1
    (0xFF80, 0x3F80, 0xFF80),   # -inf - 1
    (0x7F80, 0x7F80, None),     # inf - inf: NaN
    (0x7FC5, 0x3F80, None),     # a NaN param with a payload
    (0x7F81, 0x3F80, None),     # a signalling NaN param
    (0x3F80, 0xFFC3, None),     # a NaN gradient
]
#: (p, g) as float16 values: overflow, the largest half, subnormal halves (kept), zeros, inf, NaN
F16_SPECIALS = [(60000.0, -10000.0), (65504.0, -8.0), (65504.0, -24.0), (2**-14, 2**-14 - 5 * 2**-24),
                (3 * 2**-24, 2**-24), (2**-24, 2**-23), (1.0, 1.0), (-0.0, 0.0),
                (1.0, -2**-11), (1 + 2**-10, -2**-11), (np.inf, 1.0), (np.inf, np.inf),
                (np.nan, 1.0), (1.0, np.nan)]


def _specials(family):
    """(p, g) of the special cases as float32 values and as 16-bit bit patterns of ``family``."""
    if family == BF16:
        p16 = np.array([c[0] for c in BF16_SPECIALS], np.uint16)
        g16 = np.array([c[1] for c in BF16_SPECIALS], np.uint16)
        return (p16, g16, formats.load(p16.view(formats.bfloat16)),
                formats.load(g16.view(formats.bfloat16)))
    p = np.array([c[0] for c in F16_SPECIALS], np.float16)
    g = np.array([c[1] for c in F16_SPECIALS], np.float16)
    return p.view(np.uint16), g.view(np.uint16), p.astype(np.float32), g.astype(np.float32)


@pytest.mark.parametrize("recipe", ["bf16", "f16", "sr-bf16", "master-bf16", "master-f16", "f32",
                                    "bf16-f32states"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_many_special_values(backend, recipe):
    """SGD with lr = 1 (p - g, one rounding: FMA cannot change it) on inputs that hit the special
    cases of the loads and stores: bitwise the reference (NaN where it has NaN, any payload),
    and the bfloat16 recipe's results are the table's. One tensor of the cases, one of them
    tiled past PARALLEL_MIN (so every thread's piece has them)."""
    fn = many_kernel(backend, "sgd")
    p_code, g_code, _, out_code = RECIPES[recipe]
    family = F16 if F16 in (p_code, g_code) else BF16
    p16, g16, p32, g32 = _specials(family)
    reps = 40_003 // len(p16) + 1

    def make(bits, values, code):
        a = bits if code in (BF16, SR, F16) else values
        return [a.copy(), np.tile(a, reps)]

    def run(kernel_fn):
        ps = make(p16, p32, p_code)
        gs = make(g16, g32, g_code)
        outs = [np.zeros(len(p), np.uint16) for p in ps] if out_code != NONE else None
        # sgd's roles: param, grad, grad_acc and momentum_buffer (unused: stand-ins as in Case), out
        acc_is_param = ps[0].dtype == gs[0].dtype     # param stored as the grad is (not master)
        rows = [[p.ctypes.data, g.ctypes.data, (p if acc_is_param else g).ctypes.data, p.ctypes.data,
                 outs[k].ctypes.data if outs else 0] for k, (p, g) in enumerate(zip(ps, gs))]
        fmts = np.array([p_code, g_code, g_code, BF16 if p_code == SR else p_code, out_code], np.int32)
        offsets = np.array([0, len(ps[0]), len(ps[0]) + len(ps[1])], np.int64)
        keys = np.array([formats.sr_key(SEED, 1, 0), formats.sr_key(SEED, 1, 1)], np.uint32)
        with np.errstate(all="ignore"):   # inf - inf, overflow: on purpose
            kernel_fn(np.array(rows, np.int64), offsets, fmts, keys, 1.0, False, False,
                      1.0, 0.0, 0.0, 0.0, False, False)
        return ps + (outs or []), [p_code, p_code] + ([out_code] * 2 if outs else [])

    got, codes = run(fn)
    want, _ = run(ref.sgd_many)
    for k, (a, b, code) in enumerate(zip(got, want, codes)):
        dtype = np.float32 if code == F32 else formats.bfloat16 if code in (BF16, SR) else np.float16
        x, y = a.view(dtype).astype(np.float32), b.view(dtype).astype(np.float32)
        nan = np.isnan(y)
        assert nan.any() and np.isinf(y).any(), "the cases are not there"  # the test tests something
        assert np.array_equal(np.isnan(x), nan), f"array {k}: NaN at {np.flatnonzero(np.isnan(x))[:8]}"
        assert a[~nan].tobytes() == b[~nan].tobytes(), (
            f"array {k} ({formats.NAMES[code]}): at {np.flatnonzero(a[~nan] != b[~nan])[:8]}")
    if recipe == "bf16":
        for k, (p, g, bits) in enumerate(BF16_SPECIALS):
            if bits is None:
                assert np.isnan(got[0][k:k + 1].view(formats.bfloat16).astype(np.float32)[0]), k
            else:
                assert int(got[0][k]) == bits, f"case {k}: {int(got[0][k]):#06x}, not {bits:#06x}"


# --- quantized states (kernels/CONTRACT.md, "Quantized states"; format codes 5-8) -------------

QCASES = [(v, r) for v in VARIANTS for r in QRECIPES]
QCASE_IDS = [f"{r}-{v}-{recipe}" for (r, v, _, _), recipe in QCASES]


#: the quantized recipes Numba runs here: tests/test_numba_quant.py covers every rule at 8 bits,
#: AMSGrad, 4 bits and the param recipes (f32, bf16, f16, master, SR) besides
NUMBA_QRECIPES = ("f32-q8", "bf16-q8", "master-bf16-q8", "f32-q4", "sr-bf16-q4")


def _numba_runs_quantized(variant, recipe):
    """Numba on five quantized recipes, once each, with variants spread over the rules (each
    compiled copy costs 3-6 s cold; see _numba_runs)."""
    if recipe not in NUMBA_QRECIPES:
        return False
    ri, vi = NUMBA_QRECIPES.index(recipe), VARIANTS.index(variant)
    return vi == (ri * (len(VARIANTS) // len(NUMBA_QRECIPES) + 1)) % len(VARIANTS)


QMATCH = [(b, v, r) for v, r in QCASES for b in QBACKENDS
          if b != "numba" or _numba_runs_quantized(v, r)]
QMATCH_IDS = [f"{b}-{r}-{v}-{recipe}" for b, (r, v, _, _), recipe in QMATCH]


@pytest.mark.parametrize("variant, recipe", QCASES, ids=QCASE_IDS)
def test_reference_many_quantized_is_the_single_reference_per_tensor(variant, recipe):
    """The reference's quantized states (whole tensors dequantized, stepped, quantized back)
    are the oracle's: bitwise, codes and absmax too."""
    rule, vid, options, call = variant
    case = Case(rule, options, call, recipe, seed=_seed(rule, vid, recipe, "oracle"))
    got = case.clone().call(getattr(ref, f"{rule}_many")).snapshot()
    for k, (g, w) in enumerate(zip(got, oracle(case))):
        for name in w:
            assert g[name].tobytes() == w[name].tobytes(), f"tensor {k}, {name}"


def float_twin(case):
    """The case with its quantized states as float32 arrays (their dequantized values) and a
    table of (N, R) with code 0 in their roles: (twin tensors, ptrs, fmts)."""
    n_roles = len(case.names)
    tensors = []
    for t in case.tensors:
        n = len(t["param"])
        twin = {name: arr.copy() for name, arr in t.items() if not name.endswith(ABSMAX)}
        for name in case.state:
            twin[name] = formats.dequantize(t[name], t[name + ABSMAX], case.qcode[name], n)
        tensors.append(twin)
    ptrs = np.array([[0 if nm is None else t[nm].ctypes.data for nm in case.names]
                     for t in tensors], dtype=np.int64)
    fmts = np.array([F32 if f in formats.QUANTIZED else f for f in case.fmts[:n_roles]], np.int32)
    return tensors, ptrs, fmts


@pytest.mark.parametrize("backend, variant, recipe", QMATCH, ids=QMATCH_IDS)
def test_quantized_many_matches_the_reference(backend, variant, recipe):
    """Against the reference: bitwise where the kernel's float32 arithmetic is the reference's
    (fma_free); else codes equal or 1 apart in a tiny fraction (QFLIPS), absmax and params as
    close as float32 arithmetic with or without FMA contraction (assert_matches). And bitwise
    the backend's own
    ``<rule>_many`` with the states as float32 arrays of their dequantized values, quantized
    after (formats.quantize): the staging block by block changes nothing, whatever the
    contraction."""
    rule, vid, _, _ = variant
    fn = many_kernel(backend, rule)
    pristine, want = _case_and_reference(variant, recipe)
    case = pristine.clone()
    twin, ptrs, fmts = float_twin(case)
    got = case.call(fn).snapshot()
    assert [t["grad"].tobytes() for t in got] == [t["grad"].tobytes() for t in pristine.tensors], (
        "grad was written")
    if fma_free(backend, rule):
        for k, (g, w) in enumerate(zip(got, want)):
            for name in w:
                assert g[name].tobytes() == w[name].tobytes(), f"tensor {k}, {name}"
    else:
        assert_matches(got, want, case, f"{backend} {rule}-{vid} {recipe}", exact_codes=False)
    fn(ptrs, case.offsets, fmts, case.keys, case.grad_scale, case.maximize, case.use_acc,
       *case.scalars)
    for k, (g, t) in enumerate(zip(got, twin)):
        for name in g:
            if name in case.qcode and name in case.state:
                codes, absmax = formats.quantize(t[name], case.qcode[name])
                assert g[name].tobytes() == codes.tobytes(), f"tensor {k}, {name}"
                assert g[name + ABSMAX].tobytes() == absmax.tobytes(), f"tensor {k}, {name}"
            elif not name.endswith(ABSMAX):
                assert g[name].tobytes() == t[name].tobytes(), f"tensor {k}, {name}"


QTHREADS = [(b, v, r) for b in QBACKENDS for v in FULL for r in QRECIPES
            if b != "numba" or (r == "f32-q8" and v is FULL[0])]


@pytest.mark.parametrize("backend, variant, recipe", QTHREADS,
                         ids=[f"{b}-{v[0]}-{v[1]}-{r}" for b, v, r in QTHREADS])
def test_quantized_many_same_bits_at_1_and_2_threads(backend, variant, recipe):
    """Pieces cut on the blocks of the tensor a boundary falls in: codes, absmax and params do
    not depend on the thread count."""
    rule, vid, options, call = variant
    fn = many_kernel(backend, rule)
    assert sum(QLENGTHS) > 32768   # PARALLEL_MIN: in parallel with 2 threads
    seed = _seed(rule, vid, recipe, "threads")
    one, two = run_at_thread_counts(
        lambda n: Case(rule, options, call, recipe, seed=seed).call(fn).snapshot())
    for k, (a, b) in enumerate(zip(one, two)):
        for name in a:
            assert a[name].tobytes() == b[name].tobytes(), f"tensor {k}, {name}"


@pytest.mark.parametrize("recipe", ["f32-q8", "bf16-q4"])
@pytest.mark.parametrize("backend", QBACKENDS)
def test_quantized_all_zero_block(backend, recipe):
    """A block whose new state is all zeros (grad 0, state 0: ZERO_AT) has absmax 0 and codes of
    0 (8 bits: a NaN's code, 0 * inf; 4 bits: the lowest code), as in the reference; the
    params there are unchanged. A zero-length tensor is left alone (QLENGTHS has one)."""
    fn = many_kernel(backend, "adam")
    case = Case("adam", {}, {}, recipe, seed=_seed("adam", "zero", recipe))
    want = case.clone().call(ref.adam_many).snapshot()
    got = case.clone().call(fn).snapshot()
    k, lo, hi = ZERO_AT
    block = formats.block_of(case.qcode["exp_avg"])
    per_byte = 1 if case.bits == 8 else 2
    for name in ("exp_avg", "exp_avg_sq"):
        for result in (got, want):
            absmax = result[k][name + ABSMAX]
            assert (absmax[lo // block:hi // block] == 0).all(), name
            assert (absmax[:lo // block] > 0).all(), name
        zero = slice(lo // per_byte, hi // per_byte)
        assert got[k][name][zero].tobytes() == want[k][name][zero].tobytes(), name
        assert not got[k][name][zero].any(), name
    assert got[k]["param"][lo:hi].tobytes() == case.tensors[k]["param"][lo:hi].tobytes()
    assert len(got[3]["param"]) == 0 and len(got[3]["exp_avg" + ABSMAX]) == 0


@pytest.mark.parametrize("backend", QBACKENDS)
@pytest.mark.parametrize("what, fmts, width, match", [
    ("narrow table", [0, 0, 0, 5, 6, 6, -1], 7, "absmax columns"),
    ("quantized param", [5, 0, 0, 5, 6, 6, -1], 10, "state roles"),
    ("quantized grad", [0, 6, 6, 5, 6, 6, -1], 10, "state roles"),
    ("quantized out", [0, 0, 0, 5, 6, 6, 5], 10, "state roles"),
    ("8 and 4 bits", [0, 0, 0, 5, 8, 8, -1], 10, "8-bit"),
    ("float64", [3, 3, 3, 5, 6, 6, -1], 10, "float64"),
    ("a width of neither", [0, 0, 0, 5, 6, 6, -1], 9, "absmax columns"),
])
def test_quantized_table_errors(backend, what, fmts, width, match):
    """ValueError, naming what was expected, for what kernels/CONTRACT.md refuses; nothing is
    written."""
    fn = many_kernel(backend, "adam")
    case = Case("adam", {}, {}, "f32-q8", lengths=(300, 40), seed=1)
    before = case.snapshot()
    ptrs = np.ascontiguousarray(case.ptrs[:, :width])
    with pytest.raises(ValueError, match=match):
        fn(ptrs, case.offsets, np.array(fmts, np.int32), case.keys, case.grad_scale,
           case.maximize, case.use_acc, *case.scalars)
    for a, b in zip(before, case.snapshot()):
        for name in a:
            assert a[name].tobytes() == b[name].tobytes(), (what, name)


@pytest.mark.parametrize("backend", QBACKENDS)
@pytest.mark.parametrize("rule, role, code", [
    ("sgd", 3, formats.Q8_SIGNED),   # momentum_buffer's stand-in (the param) says quantized
    ("adam", 5, F32),                # max_exp_avg_sq's stand-in (exp_avg_sq's codes) says f32
    ("rmsprop", 4, formats.Q8_UNSIGNED),   # momentum_buffer's (square_avg's codes), other map
])
def test_quantized_stand_ins_whatever_their_codes(backend, rule, role, code):
    """A stand-in's code is never used (kernels/CONTRACT.md): one at the param with a quantized
    code is not staged (the param is stepped, never quantized), one at a quantized state with
    another code shares that state's staging; as in the reference."""
    fn = many_kernel(backend, rule)
    case = Case(rule, {}, {}, "bf16-q8", lengths=(7, 300, 40_000), seed=_seed(rule, "stand-in"))
    case.fmts = case.fmts.copy()
    case.fmts[role] = code
    want = case.clone().call(getattr(ref, f"{rule}_many")).snapshot()
    got = case.clone().call(fn).snapshot()
    assert_matches(got, want, case, f"{backend} {rule} stand-in code {code}",
                   exact_codes=fma_free(backend, rule))


@pytest.mark.parametrize("backend", QBACKENDS)
def test_wide_table_without_quantized_codes(backend):
    """A table of (N, R + S) without quantized codes is the (N, R) table: the absmax columns are
    skipped (each row is R + S long)."""
    fn = many_kernel(backend, "adam")
    case = Case("adam", {}, {}, "bf16-f32states", lengths=(1, 7, 1023, 40_003), seed=3)
    wide = case.clone()
    wide.ptrs = np.ascontiguousarray(np.hstack([wide.ptrs, np.zeros((len(wide.ptrs), 3), np.int64)]))
    a = case.call(fn).snapshot()
    b = wide.call(fn).snapshot()
    for k, (x, y) in enumerate(zip(a, b)):
        for name in x:
            assert x[name].tobytes() == y[name].tobytes(), f"tensor {k}, {name}"


# --- fastgd/formats.py ------------------------------------------------------------------------

def _bf16_bits(x):
    return formats.to_bfloat16(np.asarray(x, dtype=np.float32)).view(np.uint16)


def _f32(bits):
    return np.asarray(bits, dtype=np.uint32).view(np.float32)


def test_to_bfloat16_is_ml_dtypes_conversion_but_subnormals_and_nan_payloads():
    rng = np.random.default_rng(2)
    x = (rng.standard_normal(200_000) * 10.0 ** rng.uniform(-45, 38, 200_000)).astype(np.float32)
    x[:1000] = _f32(rng.integers(0, 2**32, 1000, dtype=np.uint64))   # any bits: NaN, inf, subnormal
    ours = _bf16_bits(x)
    with np.errstate(invalid="ignore", over="ignore"):
        theirs = x.astype(ml_dtypes.bfloat16).view(np.uint16)
    u = x.view(np.uint32)
    nan = np.isnan(x)
    subnormal = ((u & 0x7F800000) == 0) & ((u & 0x7FFFFF) != 0)
    assert subnormal.sum() > 100 and nan.sum() > 0
    same = ~nan & ~subnormal
    np.testing.assert_array_equal(ours[same], theirs[same])
    # subnormal float32: flushed to a zero of its sign (ml_dtypes rounds them)
    np.testing.assert_array_equal(ours[subnormal], (u[subnormal] >> 16) & 0x8000)
    # NaN: a quiet NaN of the same sign, the top payload bits kept (ml_dtypes may differ there)
    assert np.isnan(ours[nan].view(ml_dtypes.bfloat16).astype(np.float32)).all()
    np.testing.assert_array_equal(ours[nan], (u[nan] >> 16) | 0x40)
    np.testing.assert_array_equal(ours[nan] & 0x8000, (u[nan] >> 16) & 0x8000)


@pytest.mark.parametrize("bits, want", [
    (0x00000000, 0x0000), (0x80000000, 0x8000),              # zeros keep their sign
    (0x00000001, 0x0000), (0x807FFFFF, 0x8000),              # subnormals flush to a signed zero
    (0x00800000, 0x0080),                                    # the smallest normal is kept
    (0x7F800000, 0x7F80), (0xFF800000, 0xFF80),              # infinities
    (0x7F7FFFFF, 0x7F80),                                    # the largest float32 rounds to inf
    (0x7FC00000, 0x7FC0), (0xFFC00000, 0xFFC0),              # quiet NaNs
    (0x7F800001, 0x7FC0), (0xFF80FFFF, 0xFFC0),              # signalling NaNs: quiet, never inf
    (0x3F808000, 0x3F80), (0x3F818000, 0x3F82),              # ties to even
    (0x3F808001, 0x3F81), (0x3F807FFF, 0x3F80),              # above and below the tie
], ids=lambda v: f"{v:#x}")
def test_to_bfloat16_special_values(bits, want):
    assert int(_bf16_bits(_f32([bits]))[0]) == want
    # stochastic rounding treats NaN, zero and subnormals as nearest-even does
    if (bits & 0x7F800000) == 0 or (bits & 0x7FFFFFFF) > 0x7F800000:
        for key in (0, 1, 0xFFFFFFFF):
            assert int(formats.to_bfloat16_sr(_f32([bits]), key).view(np.uint16)[0]) == want


def test_bfloat16_load_store_round_trip_of_every_bit_pattern():
    b = np.arange(2**16, dtype=np.uint32).astype(np.uint16)
    x = formats.load(b.view(ml_dtypes.bfloat16))
    assert x.dtype == np.float32
    np.testing.assert_array_equal(x.view(np.uint32), b.astype(np.uint32) << 16)   # exact load
    back = formats.store(x, BF16).view(np.uint16)
    e = b & 0x7F80
    nan = (b & 0x7FFF) > 0x7F80
    sub = (e == 0) & ((b & 0x7F) != 0)
    keep = ~nan & ~sub
    np.testing.assert_array_equal(back[keep], b[keep])
    np.testing.assert_array_equal(back[sub], b[sub] & 0x8000)
    np.testing.assert_array_equal(back[nan], b[nan] | 0x40)
    # stochastic rounding of an exact bfloat16 value is that value
    sr = formats.store(x, SR, 12345).view(np.uint16)
    np.testing.assert_array_equal(sr[keep], b[keep])


def test_float16_store_is_ieee_nearest_even_with_subnormals():
    x = np.array([1.0, 1 + 2**-11, 1 + 3 * 2**-11, 65504.0, 65520.0, 2**-24, 2**-25, 3 * 2**-25,
                  -0.0, np.inf, np.nan], dtype=np.float32)
    with np.errstate(over="ignore"):
        h = formats.store(x, F16)
    assert h.dtype == np.float16
    np.testing.assert_array_equal(h[:10].astype(np.float64),
                                  [1.0, 1.0, 1 + 2**-9, 65504.0, np.inf, 2**-24, 0.0, 2**-23, -0.0,
                                   np.inf])   # 2**-25, 3 * 2**-25: subnormal ties to even
    assert np.signbit(h[8]) and np.isnan(h[10])
    b = np.arange(2**16, dtype=np.uint32).astype(np.uint16)
    x = formats.load(b.view(np.float16))
    keep = (b & 0x7FFF) <= 0x7C00
    np.testing.assert_array_equal(formats.store(x, F16).view(np.uint16)[keep], b[keep])


@pytest.mark.parametrize("frac", [0.1, 0.5, 0.93])
@pytest.mark.parametrize("sign", [1.0, -1.0])
@pytest.mark.parametrize("role", [0, 3, 4, 5])
def test_stochastic_rounding_is_unbiased(frac, sign, role):
    """x between two bfloat16 values: the mean of SR roundings is x within 4 standard errors,
    over the elements of one tensor and over the keys of many tensors, for the param's random
    bits and each state role's (one hash, the role's multiplier)."""
    lo = np.float32(1.5)
    ulp = 2.0 ** -7
    x = np.float32(sign * (lo + frac * ulp))
    se = ulp * np.sqrt(frac * (1 - frac))
    n = 200_000
    one = formats.to_bfloat16_sr(np.full(n, x, np.float32), formats.sr_key(7, 3, 1),
                                 role).astype(np.float64)
    assert set(np.abs(one)) == {float(lo), float(lo) + ulp}
    assert abs(one.mean() - x) < 4 * se / np.sqrt(n)
    keys = [formats.sr_key(s, step, i) for s in range(2) for step in range(25) for i in range(20)]
    many = np.array([formats.to_bfloat16_sr(np.array([x], np.float32), k, role)[0] for k in keys],
                    dtype=np.float64)
    assert abs(many.mean() - x) < 4 * se / np.sqrt(len(keys))


def test_stochastic_rounding_roles_draw_apart():
    """The roles' roundings of one element are not the same draw: over a tensor of one value
    halfway between two bfloat16s, the param's (role 0) and a state's (3, 4) round alike about
    half the time, as independent draws would (a shared draw would always agree)."""
    x = np.full(100_000, np.float32(1.5 + 0.5 * 2.0 ** -7))
    key = formats.sr_key(11, 2, 0)
    r = [formats.to_bfloat16_sr(x, key, role).view(np.uint16) for role in (0, 3, 4)]
    for a, b in ((0, 1), (0, 2), (1, 2)):
        assert abs((r[a] == r[b]).mean() - 0.5) < 0.01


def test_stochastic_rounding_is_reproducible_and_keyed():
    rng = np.random.default_rng(3)
    x = rng.standard_normal(10_000).astype(np.float32)
    a = formats.to_bfloat16_sr(x, 99).view(np.uint16)
    assert a.tobytes() == formats.to_bfloat16_sr(x.copy(), 99).view(np.uint16).tobytes()
    b = formats.to_bfloat16_sr(x, 100).view(np.uint16)
    assert (a != b).mean() > 0.2      # about half the inexact elements round the other way
    # the element index matters: the same value at every index does not round alike
    c = formats.to_bfloat16_sr(np.full(1000, x[0]), 99).view(np.uint16)
    assert len(set(c.tolist())) == 2
    # at most 1 ulp from x, always one of its two neighbours
    ne = formats.to_bfloat16(x).view(np.uint16).astype(np.int32)
    assert (np.abs(_ordered(a) - _ordered(ne.astype(np.uint16))) <= 1).all()
    # sr_bits: the 16 random bits of element i do not depend on n
    np.testing.assert_array_equal(formats.sr_bits(99, 10), formats.sr_bits(99, 1000)[:10])


def test_sr_key_differs_across_seed_step_and_index():
    keys = {(s, t, i): formats.sr_key(s, t, i) for s in range(8) for t in range(8) for i in range(8)}
    assert all(isinstance(k, int) and 0 <= k < 2**32 for k in keys.values())
    assert len(set(keys.values())) == len(keys)
    assert formats.sr_key(1, 2, 3) == formats.sr_key(1, 2, 3)
    assert formats.sr_key(2**32 + 1, 2, 3) == formats.sr_key(1, 2, 3)   # taken mod 2**32
