"""Quantized states (format codes 5-8) in the Numba ``<rule>_many`` kernels
(kernels/CONTRACT.md, "Quantized states"; fastgd/_numba/_many.py and _quant.py) against the
reference's ``many`` (fastgd._reference), bit for bit: params, out, grad_acc, and every state's
codes AND absmax. Numba never contracts a * b + c into an FMA, so its float32 arithmetic is the
reference's exactly; any difference is a bug.

A case is one call: one rule variant, a param recipe, every state role the variant uses
quantized at 8 or 4 bits (its code from the spec's State.signed8/signed4), six tensors of odd
lengths (1, 7, 255, 257, 1023, 100_003: above PARALLEL_MIN in all, so the parallel variant
runs, and a 2-thread boundary falls inside a block of the last tensor), a NaN in one
gradient, a block of zeros (states, grad and param) in the last tensor. Each case is a cold
compile of its format combination (~3-5 s), so the set is representative, not a grid: every
rule once at 8 bits, AMSGrad, 4 bits for Adam, SGD with momentum and RMSprop, the param
recipes f32, bf16, f16, master (f32 param, bf16 grad and out) and bf16 with stochastic
rounding spread over them.
"""
import numpy as np
import pytest

import fastgd._numba as nb
from fastgd import _reference as ref
from fastgd import formats, quant
from fastgd.rules import SPECS
from _helpers import require_backend, run_at_thread_counts

pytest.importorskip("ml_dtypes")

F32, BF16, F16, F64, SR, NONE = (formats.F32, formats.BF16, formats.F16, formats.F64,
                                 formats.BF16_SR, formats.NONE)
LENGTHS = (1, 7, 255, 257, 1023, 100_003)
NAN_AT = (3, 100)          # (tensor, element) whose gradient is NaN
ZERO_AT = (5, 512, 768)    # (tensor, start, end): a block of zeros in every state, grad, param
SEED = 99

#: name -> (param, grad and grad_acc, out)
RECIPES = {
    "f32": (F32, F32, NONE),
    "bf16": (BF16, BF16, NONE),
    "f16": (F16, F16, NONE),
    "master": (F32, BF16, BF16),
    "sr": (SR, BF16, NONE),
}

#: (rule, variant, options, call, recipe, bits); call: t (default 3), use_acc, grad_scale
CASES = [
    ("adam", "adamw", {"weight_decay": 0.05, "decoupled_weight_decay": True}, {}, "f32", 8),
    ("adam", "amsgrad-maximize", {"amsgrad": True, "maximize": True}, {"grad_scale": 0.7},
     "bf16", 8),
    ("sgd", "momentum-nesterov", {"momentum": 0.9, "nesterov": True}, {}, "f16", 8),
    ("adagrad", "wd-acc", {"weight_decay": 0.05, "lr_decay": 0.01}, {"use_acc": True},
     "master", 8),
    ("rmsprop", "centered-momentum", {"centered": True, "momentum": 0.5}, {}, "sr", 8),
    ("adamax", "wd", {"weight_decay": 0.05}, {}, "bf16", 8),
    ("nadam", "decoupled", {"weight_decay": 0.05, "decoupled_weight_decay": True}, {}, "f32", 8),
    ("radam", "adaptive", {"weight_decay": 0.05}, {"t": 10}, "master", 8),
    ("lion", "acc", {"weight_decay": 0.1}, {"use_acc": True}, "f16", 8),
    ("adam", "plain", {}, {}, "sr", 4),
    ("sgd", "momentum-dampening", {"momentum": 0.9, "dampening": 0.1}, {}, "bf16", 4),
    ("rmsprop", "centered-momentum-acc", {"centered": True, "momentum": 0.5},
     {"use_acc": True}, "master", 4),
]
CASE_IDS = [f"{r}-{v}-{recipe}-{bits}bit" for r, v, _, _, recipe, bits in CASES]

#: state arrays that are second moments or maxima: positive, as in a real run
POSITIVE = {"exp_avg_sq", "max_exp_avg_sq", "sum", "square_avg", "exp_inf"}


class Case:
    """The arrays of one quantized ``_many`` call and its (N, R + S) table, kept alive.

    Per tensor ``arrays``: param, grad, grad_acc (with use_acc), out (master), and per state
    name its (codes, absmax). ``names``: the array in each role (param, grad, grad_acc,
    *state roles, out) as fastgd._core passes them: an unused grad_acc is the param, an unused
    state role what the spec's ``arrays`` gives in its place (then its code and absmax column
    are that array's). ``plain``: {state name: code} of states stored unquantized."""

    def __init__(self, rule, options, call, recipe, bits, lengths=LENGTHS, seed=0, plain=None):
        spec = SPECS[rule]
        self.rule = rule
        o = spec.check_options({**spec.defaults, "lr": 0.03, **options})
        t = call.get("t", 3)
        self.use_acc = call.get("use_acc", False)
        self.grad_scale = call.get("grad_scale", 1.0)
        self.maximize = o["maximize"]
        scalar_state = {n: v for n, v, _ in spec.scalar_state}
        step = spec.scalars(o, t, scalar_state, False) if spec.scalars else ()
        self.scalars = (*spec.constants(o), *step)
        p_code, g_code, out_code = RECIPES[recipe]
        self.state = spec.state_names(o)
        by_name = {s.name: s for s in spec.state}
        plain = plain or {}
        self.scodes = {n: formats.quantized_code(
            bits, by_name[n].signed8 if bits == 8 else by_name[n].signed4)
            for n in self.state if n not in plain}
        rng = np.random.default_rng(seed)
        self.tensors = []
        for k, n in enumerate(lengths):
            values = {"param": rng.standard_normal(n), "grad": rng.standard_normal(n)}
            if self.use_acc:
                values["grad_acc"] = rng.standard_normal(n)
            for name in self.state:
                v = rng.standard_normal(n)
                values[name] = np.abs(v) + 0.01 if name in POSITIVE else v
            if "grad_avg" in values:    # centered: square_avg > grad_avg^2 by a margin that
                # survives 4-bit rounding (the unsigned map's smallest value is absmax / 16)
                values["grad_avg"] *= 0.1
                values["square_avg"] += 1.2 * values["grad_avg"] ** 2
            if k == NAN_AT[0]:
                values["grad"][NAN_AT[1]] = np.nan
            if k == ZERO_AT[0]:
                for v in values.values():
                    v[ZERO_AT[1]:ZERO_AT[2]] = 0.0
            a = {}
            for name, v in values.items():
                v = v.astype(np.float32)
                if name in self.scodes:
                    a[name] = formats.quantize(v, self.scodes[name])
                else:
                    code = {"param": p_code, **plain}.get(name, g_code)
                    a[name] = formats.store(v, BF16 if code == SR else code)
            if out_code != NONE:
                a["out"] = formats.store(rng.standard_normal(n).astype(np.float32), out_code)
            self.tensors.append(a)
        states = spec.arrays({**{n: n for n in self.state}, "param": "param"})
        self.names = ["param", "grad", "grad_acc" if self.use_acc else "param", *states,
                      "out" if out_code != NONE else None]
        codes = {"param": p_code, "grad": g_code, "grad_acc": g_code, "out": out_code,
                 None: out_code, **plain, **self.scodes}
        self.fmts = np.array([codes[nm] for nm in self.names], np.int32)
        self.fmts[2] = g_code
        self.offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        self.keys = np.array([formats.sr_key(SEED, t, k) for k in range(len(lengths))], np.uint32)
        self._table()

    @property
    def roles(self):
        return len(self.names)

    def _table(self):
        r = self.roles
        self.ptrs = np.zeros((len(self.tensors), 2 * r - 4), np.int64)
        for k, a in enumerate(self.tensors):
            for j, nm in enumerate(self.names):
                if nm is None:
                    continue
                x = a[nm]
                if isinstance(x, tuple):          # a quantized state: codes, absmax
                    self.ptrs[k, j] = x[0].ctypes.data
                    if 3 <= j < r - 1:
                        self.ptrs[k, r + j - 3] = x[1].ctypes.data
                else:
                    self.ptrs[k, j] = x.ctypes.data

    def clone(self):
        twin = object.__new__(Case)
        twin.__dict__.update(self.__dict__)
        twin.tensors = [{nm: tuple(p.copy() for p in x) if isinstance(x, tuple) else x.copy()
                         for nm, x in a.items()} for a in self.tensors]
        twin._table()
        return twin

    def call(self, fn, ptrs=None, fmts=None):
        fn(self.ptrs if ptrs is None else ptrs, self.offsets,
           self.fmts if fmts is None else fmts, self.keys, self.grad_scale, self.maximize,
           self.use_acc, *self.scalars)
        return self


def _bits(a):
    return a.view({1: np.uint8, 2: np.uint16, 4: np.uint32}[a.dtype.itemsize])


def assert_same(got, want, what):
    """Every array of every tensor bitwise equal (a float16 NaN only as a NaN: formats.py
    promises "NaN stays a NaN", not its payload)."""
    for k, (g, w) in enumerate(zip(got.tensors, want.tensors)):
        for name in w:
            pairs = zip(g[name], w[name]) if isinstance(w[name], tuple) else [(g[name], w[name])]
            for part, (a, b) in zip(("codes", "absmax") if isinstance(w[name], tuple) else
                                    ("values",), pairs):
                bad = np.flatnonzero(_bits(a) != _bits(b))
                if bad.size and a.dtype == np.float16:
                    bad = bad[~(np.isnan(a[bad]) & np.isnan(b[bad]))]
                assert not bad.size, (f"{what}: tensor {k} (n={a.size}) {name} {part}: "
                                      f"{bad.size} differ, e.g. at {bad[:5]}: {a[bad[:5]]} "
                                      f"vs {b[bad[:5]]}")


@pytest.fixture(scope="module")
def numba_backend():
    require_backend("numba")


@pytest.mark.parametrize("rule, vid, options, call, recipe, bits", CASES, ids=CASE_IDS)
def test_quantized_many_is_the_reference_bitwise(numba_backend, rule, vid, options, call,
                                                 recipe, bits):
    case = Case(rule, options, call, recipe, bits, seed=len(vid) * 31 + bits)
    before = case.clone()
    want = case.clone().call(getattr(ref, f"{rule}_many"))
    got = case.clone().call(getattr(nb, f"{rule}_many"))
    assert_same(got, want, f"{rule} {vid} {recipe} {bits}-bit")
    # the step did something (the NaN and the zero block aside), and left the grad alone
    for g, b in zip(got.tensors, before.tensors):
        assert np.array_equal(_bits(g["grad"]), _bits(b["grad"]))
    first = got.names[3]
    assert not np.array_equal(got.tensors[-1][first][0], before.tensors[-1][first][0])


def test_quantized_many_with_an_unquantized_state(numba_backend):
    """Quantized and plain states in one call: AMSGrad's exp_avg and max_exp_avg_sq at 8 bits,
    exp_avg_sq in bfloat16 with stochastic rounding (its role's own random bits: the element
    index in the tensor, role 4's key), a float16 param."""
    case = Case("adam", {"amsgrad": True, "weight_decay": 0.05}, {}, "f16", 8, seed=11,
                plain={"exp_avg_sq": SR})
    assert list(case.fmts[3:6]) == [formats.Q8_SIGNED, SR, formats.Q8_UNSIGNED]
    want = case.clone().call(ref.adam_many)
    got = case.clone().call(nb.adam_many)
    assert_same(got, want, "adam 8-bit with an SR state")


def test_unquantized_call_takes_either_table_width(numba_backend):
    """Without quantized codes the table may be (N, R) or (N, R + S) (the absmax columns then
    unread): the same results, from one compiled copy."""
    case = Case("lion", {}, {}, "bf16", 8, plain={"exp_avg": F32})
    assert case.ptrs.shape[1] == 6 and case.fmts[3] == F32
    narrow = case.clone()
    narrow.ptrs = np.ascontiguousarray(narrow.ptrs[:, :5])
    wide = case.clone().call(nb.lion_many)
    assert_same(narrow.call(nb.lion_many), wide, "lion, (N, R) against (N, R + S)")
    assert_same(wide, case.clone().call(ref.lion_many), "lion, the reference")
    fmts = tuple(case.fmts.tolist())
    entries = {key[1]: e for key, e in nb.lion_many.table.items() if key[0] == fmts}
    assert set(entries) == {5, 6} and entries[5] == entries[6]


def test_quantized_many_zero_block_and_nan():
    """The cases' special blocks come out as quant.py says: a block of zeros that stays zero
    has absmax 0 and codes 0 (AdamW: decoupled decay keeps a zero param zero); a NaN gradient
    element's states get code 0, its block's absmax is that of the others."""
    rule, vid, options, call, recipe, bits = CASES[CASE_IDS.index("adam-adamw-f32-8bit")]
    case = Case(rule, options, call, recipe, bits)
    got = case.clone().call(nb.adam_many)
    _, lo, hi = ZERO_AT
    for name in ("exp_avg", "exp_avg_sq"):
        codes, absmax = got.tensors[ZERO_AT[0]][name]
        assert absmax[lo // 256] == 0.0 and not codes[lo:hi].any()
        codes, absmax = got.tensors[NAN_AT[0]][name]
        assert codes[NAN_AT[1]] == 0 and np.isfinite(absmax).all() and absmax[0] > 0


@pytest.mark.parametrize("which", ["adam-adamw-f32-8bit",
                                   "rmsprop-centered-momentum-acc-master-4bit"])
def test_quantized_many_same_bits_at_1_and_2_threads(numba_backend, which):
    """A piece boundary inside a tensor moves up to a block boundary: 1 and 2 threads give the
    same codes, absmax and params (and the 2-thread boundary of these lengths is not on one)."""
    rule, vid, options, call, recipe, bits = CASES[CASE_IDS.index(which)]
    case = Case(rule, options, call, recipe, bits, seed=5)
    half = (case.offsets[-1] + 1) // 2 - case.offsets[-2]
    assert half % formats.block_of(int(case.fmts[3])) != 0
    def run(n):
        assert nb.get_num_threads() == n        # the setting reached the Numba backend
        return case.clone().call(getattr(nb, f"{rule}_many"))

    runs = run_at_thread_counts(run)
    assert_same(runs[1], runs[0], f"{which}: 2 threads against 1")
    assert_same(runs[0], case.clone().call(getattr(ref, f"{rule}_many")), f"{which}: reference")


def _small_adam(bits=8, amsgrad=False):
    return Case("adam", {"amsgrad": amsgrad}, {}, "f32", bits, lengths=(300, 5))


@pytest.mark.parametrize("bad, expected", [
    ("param", "state roles"), ("grad", "state roles"), ("grad_acc", "state roles"),
    ("out", "state roles"), ("mixed", "all 8-bit"), ("float64", "not float64"),
    ("narrow", "columns"), ("code", "format codes"),
])
def test_quantized_many_refuses_bad_tables(numba_backend, bad, expected):
    """ValueError, naming what was expected, before any compiled code runs (and on every call:
    a refused key never enters the call table)."""
    case = _small_adam(amsgrad=True)
    fmts, ptrs = case.fmts.copy(), case.ptrs
    if bad in ("param", "grad", "grad_acc", "out"):
        fmts[{"param": 0, "grad": 1, "grad_acc": 2, "out": 6}[bad]] = formats.Q8_SIGNED
    elif bad == "mixed":
        fmts[5] = formats.Q4_UNSIGNED
    elif bad == "float64":
        fmts[0] = fmts[1] = fmts[2] = F64
    elif bad == "narrow":
        ptrs = np.ascontiguousarray(ptrs[:, :7])
    else:
        fmts[4] = 9
    for _ in range(2):
        with pytest.raises(ValueError, match=expected):
            case.call(nb.adam_many, ptrs=ptrs, fmts=fmts)
    # the reference refuses the same tables (an unknown code aside: it has no list of them)
    if bad != "code":
        with pytest.raises(ValueError):
            case.call(ref.adam_many, ptrs=ptrs, fmts=fmts)


def test_quantized_many_unused_role_keeps_its_stand_in(numba_backend):
    """AdamW without amsgrad: max_exp_avg_sq's role holds exp_avg_sq's codes and absmax (its
    code says so). The kernel never touches it (the role is NONE in its copy), so exp_avg_sq
    is updated once, as the reference's shared copy is."""
    case = _small_adam()
    assert case.names[5] == case.names[4] == "exp_avg_sq"
    assert case.ptrs[0, 5] == case.ptrs[0, 4] and case.ptrs[0, 9] == case.ptrs[0, 8]
    want = case.clone().call(ref.adam_many)
    got = case.clone().call(nb.adam_many)
    assert_same(got, want, "adam, vmax a stand-in")


def _block_roundtrip(code, portable=False):
    """A compiled loop over a state's blocks: quantize x into (codes, absmax), dequantize
    them into out, with the kernels' block functions (fastgd/_numba/_quant.py: those the
    kernels use, or with ``portable`` the portable ones, whatever the CPU)."""
    from numba import njit
    from fastgd._numba import _quant as Q
    if portable:
        quantize, dequantize = Q.QUANTIZE_PORTABLE[code], Q.DEQUANTIZE_PORTABLE[code]
    else:
        quantize, dequantize = Q.QUANTIZE[code], Q.DEQUANTIZE[code]
    block = Q.BLOCK[code]

    @njit(error_model="numpy")
    def roundtrip(x, codes, absmax, out):
        n = x.shape[0]
        stage = Q.stack_buffer(256, np.float32)
        for s in range(0, n, block):
            e = min(s + block, n)
            for i in range(e - s):
                stage[i] = x[s + i]
            quantize(codes.ctypes.data, absmax.ctypes.data, stage, s, e)
            dequantize(codes.ctypes.data, absmax.ctypes.data, stage, s, e)
            for i in range(e - s):
                out[s + i] = stage[i]

    return roundtrip


PATHS = ["chosen", "portable"]


@pytest.mark.parametrize("portable", [False, True], ids=PATHS)
@pytest.mark.parametrize("code", [5, 6, 7, 8])
def test_block_functions_are_quant_py_on_special_values(numba_backend, code, portable):
    """Codes, absmax and values of one block at a time against fastgd.quant: NaN (code 0, never
    the absmax), an inf (the block's absmax; finite elements then 0, the inf NaN), a block of
    zeros, one of NaNs, a subnormal absmax (1 / absmax overflows), -0.0, odd tails."""
    rng = np.random.default_rng(code)
    n = 9 * 256 + 77
    x = rng.standard_normal(n).astype(np.float32)
    if code in (6, 8):
        x = np.abs(x)
    x[::37] = np.nan
    x[3] = np.inf
    x[256:512] = 0.0
    x[300] = -0.0
    x[512:768] = np.nan
    x[768:1024] *= np.float32(1e-39)         # subnormal: absmax subnormal
    x[1024:1280] = x[1024:1280] * 1e-30       # tiny but normal
    want_codes, want_absmax = formats.quantize(x, code)
    codes = np.zeros_like(want_codes)
    absmax = np.zeros_like(want_absmax)
    out = np.empty(n, np.float32)
    _block_roundtrip(code, portable)(x, codes, absmax, out)
    _check_roundtrip(x, code, codes, absmax, out)


def _check_roundtrip(x, code, codes, absmax, out):
    want_codes, want_absmax = formats.quantize(x, code)
    assert np.array_equal(codes, want_codes)
    assert np.array_equal(_bits(absmax), _bits(want_absmax))
    want = formats.dequantize(want_codes, want_absmax, code, x.shape[0])
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(out), nan)
    assert np.array_equal(_bits(out[~nan]), _bits(want[~nan]))


def test_vector_paths_are_chosen_where_the_cpu_has_them():
    """The 8-bit quantize computes its codes with AVX-512 where the Numba target has AVX-512 F,
    the dequantize looks them up in byte planes where it also has VBMI and BW, the 4-bit
    functions use 16-lane permutes with AVX-512 F; else the portable functions (the table
    lookups) are the kernels'."""
    from fastgd._numba import _quant as Q
    feats = Q._features()
    assert Q.VECTOR_Q8 == ("+avx512f" in feats)
    assert Q.VECTOR_DQ8 == (Q.VECTOR_Q8 and {"+avx512vbmi", "+avx512bw"} <= feats)
    assert (Q.QUANTIZE[5] is Q.quantize_s8_vector) == Q.VECTOR_Q8
    assert (Q.DEQUANTIZE[6] is Q.dequantize_u8_planes) == Q.VECTOR_DQ8
    assert (Q.DEQUANTIZE[5] is Q.dequantize_s8_registers) == (Q.VECTOR_Q8 and not Q.VECTOR_DQ8)
    assert Q.VECTOR_Q4 == Q.VECTOR_Q8
    assert (Q.QUANTIZE[7] is Q.quantize_s4_vector) == Q.VECTOR_Q4
    assert (Q.DEQUANTIZE[8] is Q.dequantize_u4_vector) == Q.VECTOR_Q4


def _grid_blocks(code, scale):
    """Every grid point g[i] (quant.grid_values) in blocks of 255 points and a +-1 (absmax 1,
    v = x: grid index i), times ``scale`` (a power of two: the same v): every grid index once
    through the quantize's 16-lane groups and its scalar tail (the last block is short)."""
    g = quant.grid_values()
    assert np.array_equal(quant.grid_index(g), np.arange(quant.GRID))
    blocks = []
    for b in range(0, quant.GRID, 255):
        part = g[b:b + 255]
        blocks.append(np.r_[part[:100], np.float32(-1 if code == 5 else 1), part[100:]])
    return np.concatenate(blocks).astype(np.float32) * np.float32(scale)


@pytest.mark.parametrize("path", ["chosen", "portable", "registers"])
@pytest.mark.parametrize("code", [5, 6])
def test_8bit_every_grid_index_and_code(numba_backend, code, path):
    """Every grid index of the 8-bit quantize (so every code of the table) and every code of
    the dequantize, on the path the kernels use and the portable one: the codes, absmax and
    values of fastgd.quant bit for bit. Then every code in random order in blocks of random
    absmax, and values in random blocks (the grid points near each piece's ends: random v).
    "registers": the dequantize of AVX-512 without VBMI (16 codes from the map in registers),
    on a CPU with AVX-512 F whichever the kernels use."""
    from fastgd._numba import _quant as Q
    if path == "registers" and not Q.VECTOR_Q8:
        pytest.skip("the Numba target has no AVX-512 F")
    portable = path == "portable"
    run = _block_roundtrip(code, portable)
    for scale in (1.0, 2.0 ** -20, 2.0 ** 100):
        x = _grid_blocks(code, scale)
        codes, absmax, out = (np.zeros(x.shape[0], np.uint8), np.zeros(-(-x.shape[0] // 256),
                              np.float32), np.empty(x.shape[0], np.float32))
        run(x, codes, absmax, out)
        _check_roundtrip(x, code, codes, absmax, out)
        assert set(codes.tolist()) == set(quant.grid_table(
            quant.SIGNED8 if code == 5 else quant.UNSIGNED8).tolist())
    rng = np.random.default_rng(code)
    n = 4099 * 16 + 13
    x = rng.standard_normal(n).astype(np.float32) * np.exp(
        rng.uniform(-30, 30, n)).astype(np.float32)
    if code == 6:
        x = np.abs(x)
    codes, absmax, out = (np.zeros(n, np.uint8), np.zeros(-(-n // 256), np.float32),
                          np.empty(n, np.float32))
    run(x, codes, absmax, out)
    _check_roundtrip(x, code, codes, absmax, out)
    # every code through the dequantize alone, in random order, random absmax per block
    from numba import njit
    dequantize = (Q.DEQUANTIZE_PORTABLE if portable else Q.DEQUANTIZE)[code]
    if path == "registers":
        dequantize = Q.dequantize_s8_registers if code == 5 else Q.dequantize_u8_registers

    @njit(error_model="numpy")
    def values(codes, absmax, out):
        n = codes.shape[0]
        for s in range(0, n, 256):
            e = min(s + 256, n)
            dequantize(codes.ctypes.data, absmax.ctypes.data,
                       Q.offset(Q._pointer(out.ctypes.data, np.float32), s), s, e)

    n = 256 * 40 + 93          # a short last block: 64 + 16 + 13
    codes = np.concatenate([rng.permutation(256) for _ in range(41)])[:n].astype(np.uint8)
    absmax = np.exp(rng.uniform(-40, 40, -(-n // 256))).astype(np.float32)
    absmax[3] = 0.0
    absmax[5] = np.inf
    out = np.empty(n, np.float32)
    values(codes, absmax, out)
    want = formats.dequantize(codes, absmax, code, n)
    assert np.array_equal(np.isnan(out), np.isnan(want))
    assert np.array_equal(_bits(out[~np.isnan(want)]), _bits(want[~np.isnan(want)]))


def test_vector_tables_are_generated_from_the_segments():
    """fastgd/_numba/_quant_tables.py's numbers are kernels/_quant_segments.py's (the header's
    mirrored tables)."""
    import os
    from fastgd._numba import _quant_tables as T
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if not os.path.exists(os.path.join(root, "kernels", "_quant_segments.py")):
        pytest.skip("no source tree")
    with open(T.__file__) as f:
        text = f.read()
    start = text.index("\n", text.index("# ---- BEGIN GENERATED")) + 1
    got = text[start:text.index("# ---- END GENERATED")].strip()
    assert got == T.generate(T._load_segments(root)).strip()


@pytest.mark.parametrize("portable", [False, True], ids=PATHS)
@pytest.mark.parametrize("code", [7, 8])
def test_4bit_every_code_and_midpoint(numba_backend, code, portable):
    """The 4-bit quantize at every midpoint and the floats either side of it (2 ulps), at
    every map value, +-1 and 0 (blocks with absmax 1: v = x, scaled by powers of two), in the
    16-lane groups and the odd tails; the dequantize on every code in every position of a
    byte (random order, random absmax per block): fastgd.quant's codes, absmax and values."""
    from fastgd._numba import _quant as Q
    from numba import njit
    qmap = quant.SIGNED4 if code == 7 else quant.UNSIGNED4
    mid = quant.midpoints(qmap).astype(np.float32)
    pts = [mid, np.asarray(qmap, np.float32), np.float32([0.0, -0.0, 1.0, -1.0])]
    for d in (1, 2):
        up = mid.copy()
        down = mid.copy()
        for _ in range(d):
            up = np.nextafter(up, np.float32(np.inf))
            down = np.nextafter(down, np.float32(-np.inf))
        pts += [up, down]
    v = np.concatenate(pts).astype(np.float32)
    v = np.concatenate([v, -v]) if code == 7 else np.abs(v)
    rng = np.random.default_rng(code)
    run = _block_roundtrip(code, portable)
    for scale in (1.0, 2.0 ** -30, 2.0 ** 90):
        blocks = []
        for b in range(0, v.shape[0], 127):
            part = rng.permutation(v[b:b + 127])
            blocks.append(np.r_[part[:50], np.float32(1), part[50:]])
        for tail in (0, 1, 17):      # a short last block: 16-lane groups, an odd tail
            x = np.concatenate(blocks)
            x = (x[:x.shape[0] - tail] if tail else x) * np.float32(scale)
            n = x.shape[0]
            codes, absmax, out = (np.zeros((n + 1) // 2, np.uint8),
                                  np.zeros(-(-n // 128), np.float32), np.empty(n, np.float32))
            run(x, codes, absmax, out)
            _check_roundtrip(x, code, codes, absmax, out)
    dequantize = (Q.DEQUANTIZE_PORTABLE if portable else Q.DEQUANTIZE)[code]

    @njit(error_model="numpy")
    def values(codes, absmax, out):
        n = out.shape[0]
        for s in range(0, n, 128):
            e = min(s + 128, n)
            dequantize(codes.ctypes.data, absmax.ctypes.data,
                       Q.offset(Q._pointer(out.ctypes.data, np.float32), s), s, e)

    for n in (128 * 20, 128 * 20 + 33):
        c = np.concatenate([rng.permutation(16) for _ in range(-(-n // 16))])[:n]
        packed = quant.pack4(c.astype(np.uint8))
        absmax = np.exp(rng.uniform(-40, 40, -(-n // 128))).astype(np.float32)
        absmax[2] = 0.0
        absmax[4] = np.inf
        out = np.empty(n, np.float32)
        values(packed, absmax, out)
        want = formats.dequantize(packed, absmax, code, n)
        assert np.array_equal(np.isnan(out), np.isnan(want))
        assert np.array_equal(_bits(out[~np.isnan(want)]), _bits(want[~np.isnan(want)]))
