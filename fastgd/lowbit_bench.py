"""Preset lowbit (``fastgd bench --preset lowbit``, issue 15): AdamW with 8-bit and 4-bit states.

The rows, per size and thread count, all timed in one round-robin (fastgd.timing) with the
measurement machinery of fastgd.benchmarks (``run_groups``, ``measure``, ``Group``, ``Entry``,
``Stream.case_formats``; this module only builds the groups and adds the ratios):

  fastgd       ``adam_many`` on ``cython`` and ``numba`` in each recipe of LOWBIT_RECIPES:
               fp32 (every array float32, 28 B/element: the plain row), 8bit (float32 p and g,
               exp_avg code 5, exp_avg_sq code 6: 16 B + absmax), bf16+8bit (bfloat16 p and g,
               the same states: 10 B + absmax), 4bit (float32 p and g, codes 7 and 8: 14 B +
               absmax). A backend whose adam_many does not step a tiny quantized table as the
               NumPy reference does (``quantized_support``) has its quantized rows skipped with
               the reason ("no quantized adam_many yet" while the kernels are being written).
  peers        torch.optim.AdamW(fused=True) on float32 (``torch-fused``, fp32 group);
               bitsandbytes' ``bnb.optim.AdamW8bit`` (``bnb-8bit``, 8bit group) and 32-bit
               ``bnb.optim.AdamW`` (``bnb-32bit``, fp32 group) on CPU float32 tensors (their CPU
               path); torchao's ``torchao.optim.AdamW8bit`` (``torchao-8bit``, 8bit group) and
               ``AdamW4bit`` (``torchao-4bit``, 4bit group), torch.compile'd on their first step
               (the warm-up, untimed). Each is skipped with the reason where absent or failing.
  stream       per recipe, ``stream_formats`` moving exactly its bytes in its roles and widths: p
               read and written, g read, each state's codes (a byte per element at 8 bits, per two
               at 4) and absmax (a float32 per 256 or 128 elements) read and written.

A peer row sits in the group whose nominal bytes it moves (bnb-8bit: float32 p, g and 8-bit
states, 16 B), so its ``fraction_of_bandwidth`` is of that recipe's stream; what it really moves
(bitsandbytes' CPU step dequantizes both states to float32 tensors and back) is more.

Extra row fields (the rest is fastgd.benchmarks' row schema, recipe and formats as in preset
formats; ``bytes_per_element`` counts the absmax, e.g. 16.0625):
  ``speedup_vs_torch_fused``  torch fused fp32's seconds / this row's (every recipe)
  ``speedup_vs_bnb8``         bitsandbytes AdamW8bit's seconds / this row's
  ``speedup_vs_torchao8``     torchao AdamW8bit's seconds / this row's
  ``speedup_vs_fp32``         fastgd rows: the same backend's fp32 adam_many / this row's

``run_lowbit`` returns (rows, skipped, targets, memory): ``targets`` issue 15's (LOWBIT_TARGETS,
the formats preset's entry format; a fastgd row skipped gives entries with value None and the
reason), ``memory`` the optimizer state bytes per parameter of each optimizer, measured from its
state arrays after a step (fastgd's: fastgd.AdamW / AdamW8bit / AdamW4bit, ``state_memory``),
with issue 15's bounds (MEMORY_TARGETS).
"""
import contextlib
import functools
import importlib
import importlib.util
import warnings
from dataclasses import dataclass

import numpy as np

from . import backends as _backends
from . import benchmarks as B
from . import formats as F
from .rules import RULES

F32, BF16 = F.F32, F.BF16
Q8S, Q8U, Q4S, Q4U = F.Q8_SIGNED, F.Q8_UNSIGNED, F.Q4_SIGNED, F.Q4_UNSIGNED
RULE = B.FORMATS_RULE            # "adamw": lr 1e-3, betas (0.9, 0.999), eps 1e-8, weight decay 1e-2
STATES = ("exp_avg", "exp_avg_sq")


@dataclass(frozen=True)
class LowbitRecipe:
    """The storage formats of AdamW's arrays in one group of preset lowbit (fastgd/formats.py
    codes; the states may be quantized, codes 5-8)."""
    name: str
    param: int
    grad: int
    exp_avg: int
    exp_avg_sq: int

    @property
    def codes(self):
        return {"param": self.param, "grad": self.grad, "exp_avg": self.exp_avg, "exp_avg_sq": self.exp_avg_sq}

    @property
    def bits(self):
        """8 or 4 for quantized states, None for float ones."""
        return F.QUANTIZED[self.exp_avg][0] if self.exp_avg in F.QUANTIZED else None

    def _state_widths(self, code):
        """(codes width, absmax width) in bytes per element of a state in format ``code``."""
        if code not in F.QUANTIZED:
            return (F.ITEMSIZE[code],), ()
        return ((1 if F.QUANTIZED[code][0] == 8 else 0.5),), (4 / F.block_of(code),)

    @property
    def pattern(self):
        """(read-write widths, read widths, write-only widths), Stream.case_formats' widths:
        p, the states' codes, then their absmax arrays read and written; g read."""
        widths = [self._state_widths(self.codes[s]) for s in STATES]
        rw = (F.ITEMSIZE[self.param],) + tuple(w for c, _ in widths for w in c) + tuple(
            w for _, a in widths for w in a)
        return rw, (F.ITEMSIZE[self.grad],), ()

    @property
    def bytes_per_element(self):
        rw, read, out = self.pattern
        return 2 * sum(rw) + sum(read) + sum(out)

    @property
    def formats(self):
        return {role: F.NAMES[code] for role, code in self.codes.items()}


# Issue 15's rows; bytes per element 28, 16.0625, 10.0625, 14.125 (absmax included).
LOWBIT_RECIPES = (
    LowbitRecipe("fp32", F32, F32, F32, F32),
    LowbitRecipe("8bit", F32, F32, Q8S, Q8U),
    LowbitRecipe("bf16+8bit", BF16, BF16, Q8S, Q8U),
    LowbitRecipe("4bit", F32, F32, Q4S, Q4U),
)
RECIPES = {r.name: r for r in LOWBIT_RECIPES}
COMPILED = ("cython", "numba")
# peer row -> (the --backends name that selects it, the recipe whose group it joins, label)
PEERS = {
    "torch-fused": ("torch", "fp32", "torch.optim.AdamW(fused=True), float32"),
    "bnb-32bit": ("bitsandbytes", "fp32", "bitsandbytes.optim.AdamW (32-bit states), CPU"),
    "bnb-8bit": ("bitsandbytes", "8bit", "bitsandbytes.optim.AdamW8bit, CPU"),
    "torchao-8bit": ("torchao", "8bit", "torchao.optim.AdamW8bit (torch.compile)"),
    "torchao-4bit": ("torchao", "4bit", "torchao.optim.AdamW4bit (torch.compile)"),
}
BACKEND_CHOICES = COMPILED + ("torch", "bitsandbytes", "torchao")
# Issue 15's targets per fastgd adam_many row (formats_targets' shape).
LOWBIT_TARGETS = (
    ("8bit", "fraction_of_bandwidth", 0.8, "8bit (f32 params, 16 B) >= 0.8 of its stream"),
    ("8bit", "speedup_vs_torch_fused", 1.4, "8bit >= 1.4x torch fused fp32"),
    ("8bit", "speedup_vs_bnb8", 30.0, "8bit >= 30x bitsandbytes AdamW8bit"),
    ("8bit", "speedup_vs_torchao8", 30.0, "8bit >= 30x torchao AdamW8bit"),
    ("bf16+8bit", "speedup_vs_torch_fused", 1.8, "bf16+8bit (10 B) >= 1.8x torch fused fp32"),
    ("4bit", "speedup_vs_torch_fused", 1.4, "4bit (f32 params) >= 1.4x torch fused fp32"),
)
# state bytes per parameter / float32 states' (8): at most
MEMORY_TARGETS = {8: 0.26, 4: 0.14}


# --- peers: installed or not ---------------------------------------------------------------------

def peer_status():
    """{'torch' | 'bitsandbytes' | 'torchao': None (usable) | why absent}."""
    out = {"torch": B.peer_status()["torch"]}
    for name, hint in (("bitsandbytes", "pip install bitsandbytes"), ("torchao", "pip install torchao")):
        if _find_spec(name) is None:
            out[name] = f"{name} is not installed (optional peer: {hint})"
        elif out["torch"] is not None:
            out[name] = f"{name} needs torch, which is not installed"
        else:
            out[name] = None
    return out


def _find_spec(name):
    try:
        return importlib.util.find_spec(name)
    except ValueError:   # in sys.modules without a spec (a test hiding it): absent
        return None


def environment_extra():
    """What preset lowbit adds to benchmarks.environment(): the peers' versions and status."""
    return {"bitsandbytes": B._version("bitsandbytes"), "torchao": B._version("torchao"),
            "peers": peer_status()}


def default_backends():
    """Every compiled backend usable here and every peer name: an absent peer's rows are
    skipped with the reason."""
    return [b for b in COMPILED if _backends.backend_status()[b][0]] + ["torch", "bitsandbytes", "torchao"]


def expand_backends(names):
    """--backends names -> row backends (torch -> torch-fused, bitsandbytes -> bnb-8bit and
    bnb-32bit, torchao -> torchao-8bit and torchao-4bit); others are not rows of this preset."""
    out = [n for n in names if n in COMPILED]
    out += [peer for peer, (name, _, _) in PEERS.items() if name in names]
    return out


# --- fastgd rows ---------------------------------------------------------------------------------

def lowbit_arrays(recipe, lengths):
    """[{role: array}] of tensors of ``lengths``: random data in each role's format (never
    zeros; exp_avg_sq positive), as preset formats makes it; a quantized state as its codes
    (role name) and absmax (``role + ".absmax"``), quantized per tensor (formats.quantize:
    blocks from the tensor's element 0)."""
    total = sum(lengths)
    whole = {"param": B._random(total, np.float32, 0), "grad": B._random(total, np.float32, 1),
             "exp_avg": 0.1 * B._random(total, np.float32, 2),
             "exp_avg_sq": 0.01 * np.abs(B._random(total, np.float32, 3)) + 1e-6}
    stored = {}
    for role, code in recipe.codes.items():
        if code not in F.QUANTIZED:
            dt = B._np_dtype(code)
            stored[role] = whole[role] if dt == np.float32 else whole[role].astype(dt)
    out, start = [], 0
    for n in lengths:
        t = {role: a[start:start + n].copy() for role, a in stored.items()}
        for role in STATES:
            code = recipe.codes[role]
            if code in F.QUANTIZED:
                t[role], t[role + ".absmax"] = F.quantize(whole[role][start:start + n], code)
        out.append(t)
        start += n
    return out


def _lengths(size):
    return [size.per_tensor] * size.tensors


def many_table(recipe, tensors):
    """(ptrs, offsets, fmts, keys) of one adam_many call over ``tensors`` (kernels/CONTRACT.md):
    (N, R) without quantized states, (N, R + S) with, the absmax addresses in columns R + r - 3;
    grad_acc's stand-in is the grad, max_exp_avg_sq's exp_avg_sq (its code, its absmax)."""
    spec = RULES[RULE].spec
    rows, fmts = [], None
    for t in tensors:
        states = spec.arrays(t)            # the kernel's order: exp_avg, exp_avg_sq, its stand-in
        role_of = {id(t[r]): r for r in STATES}
        row = [a.ctypes.data for a in (t["param"], t["grad"], t["grad"], *states)] + [0]
        if recipe.bits:
            row += [t[role_of[id(a)] + ".absmax"].ctypes.data for a in states]
        rows.append(row)
        fmts = [recipe.param, recipe.grad, recipe.grad] + [recipe.codes[role_of[id(a)]] for a in states] + [F.NONE]
    ptrs = np.ascontiguousarray(rows, dtype=np.int64)
    offsets = np.zeros(len(tensors) + 1, np.int64)
    offsets[1:] = np.cumsum([t["param"].size for t in tensors])
    keys = np.asarray([F.sr_key(0, B.FORMATS_STEP, k) for k in range(len(tensors))], np.uint32)
    return ptrs, offsets, np.asarray(fmts, np.int32), keys


def _kernel(backend):
    ok, why = _backends.backend_status()[backend]
    if not ok:
        raise B.Skip(f"backend {backend} is unusable: {why}")
    try:
        return _backends.kernel(f"{RULES[RULE].spec.name}_many", backend)
    except NotImplementedError:
        raise B.Skip(f"backend {backend} has no adam_many kernel (yet)") from None


def _step(kernel, recipe, tensors):
    table = many_table(recipe, tensors)
    _, scalars = B._formats_options()

    def step():
        kernel(*table, 1.0, False, False, *scalars)
        return tensors                     # the arrays live as long as the case
    return step


PROBE_LENGTHS = (600, 77)   # 8 bits: 2 full blocks and a short one, then a short tensor; 4: 4 + 1


@functools.lru_cache(maxsize=None)
def quantized_support(backend, recipe_name):
    """None when ``backend``'s adam_many steps a tiny table in the recipe's formats (two
    tensors of PROBE_LENGTHS) as the NumPy reference does, else why not: the feature flag of
    the quantized rows. An exception is "no quantized adam_many yet"; a disagreement (params
    beyond float32 rounding, absmax beyond 1e-5, more than 1% of the codes) is a failure."""
    from . import _reference
    recipe = RECIPES[recipe_name]
    kernel = _kernel(backend)
    mine, ref = (lowbit_arrays(recipe, PROBE_LENGTHS) for _ in range(2))
    try:
        _step(kernel, recipe, mine)()
    except Exception as exc:  # the kernels of issue 15 not there yet: refuse, or raise on the codes
        return (f"backend {backend} has no quantized adam_many yet ({type(exc).__name__}: "
                f"{str(exc)[:100]})")
    _step(_reference.adam_many, recipe, ref)()
    for k, (a, b) in enumerate(zip(mine, ref)):
        for role in a:
            x, y = a[role], b[role]
            if role in STATES and recipe.codes[role] in F.QUANTIZED:
                agree = np.mean(x == y) if x.size else 1.0
                ok = agree >= 0.99
            else:
                x, y = F.load(x).astype(np.float32), F.load(y).astype(np.float32)
                rtol = 1e-5 if role.endswith(".absmax") or recipe.codes.get(role) == F32 else 2 ** -7
                ok = np.allclose(x, y, rtol=rtol, atol=1e-7, equal_nan=True)
            if not ok:
                return (f"FAILED: backend {backend}'s adam_many disagrees with the reference in recipe "
                        f"{recipe_name} (tensor {k}, {role})")
    return None


def _fastgd_entry(recipe, backend, tensors, layout):
    kernel = _kernel(backend)
    if recipe.bits:
        why = quantized_support(backend, recipe.name)
        if why:
            raise B.Skip(why)
    return B.Entry(backend, "fastgd", _step(kernel, recipe, tensors), layout, uses=backend)


# --- peers ---------------------------------------------------------------------------------------

def _import_peer(name):
    why = peer_status()[name.split(".")[0]]
    if why:
        raise B.Skip(why)
    try:
        return importlib.import_module(name)
    except Exception as exc:  # a broken install: a skipped row with the reason
        raise B.Skip(f"cannot import {name}: {type(exc).__name__}: {str(exc)[:120]}") from None


def _float32_params(torch, size):
    return B._peer_params(torch, B.FORMAT_RECIPES[0], size, parameter=True)   # fp32: param, grad


def _adamw_options():
    o, _ = B._formats_options()
    return {"lr": o["lr"], "betas": o["betas"], "eps": o["eps"], "weight_decay": o["weight_decay"]}


@contextlib.contextmanager
def _quiet():
    with warnings.catch_warnings():   # torch.compile's and the peers' notices on the first step
        warnings.simplefilter("ignore")
        yield


def _torch_states(torch, opt):
    """[(key, tensor)] of every state tensor of a torch optimizer (torchao's subclasses: their
    inner tensors), the step counters excepted."""
    out = []
    for state in opt.state.values():
        for key, value in state.items():
            if key == "step" or not torch.is_tensor(value):
                continue
            inner = getattr(type(value), "tensor_attrs", None)
            if inner:
                out += [(f"{key}.{a}", getattr(value, a)) for a in inner]
            else:
                out.append((key, value))
    return out


def _peer_memory(torch, peer, opt, shared=()):
    """(state bytes, shared bytes) of a peer: its state tensors' nbytes, those whose key is in
    ``shared`` (one tensor for the whole optimizer: bitsandbytes' qmaps) counted once apart."""
    own, common = 0, {}
    for key, t in _torch_states(torch, opt):
        if key in shared:
            common[t.data_ptr()] = t.nbytes
        else:
            own += t.nbytes
    return own, sum(common.values())


@dataclass
class Case:
    fn: object
    memory: tuple = None     # (state bytes, shared bytes excluded, what is counted)


def _bnb_case(peer, size):
    bnb = _import_peer("bitsandbytes")
    import torch
    cls = bnb.optim.AdamW8bit if peer == "bnb-8bit" else bnb.optim.AdamW
    params = _float32_params(torch, size)
    try:
        with _quiet():
            opt = cls(params, **_adamw_options())
            opt.step()
    except Exception as exc:  # no CPU path for it in this bitsandbytes: a skipped row, with its words
        raise B.Skip(f"bitsandbytes {cls.__name__}: {type(exc).__name__}: {str(exc)[:160]}") from None
    states = dict(_torch_states(torch, opt))
    if peer == "bnb-8bit" and states["state1"].dtype != torch.uint8:
        raise B.Skip(f"bitsandbytes AdamW8bit keeps 32-bit states for tensors below min_8bit_size (4096 "
                     f"elements): {size.label}")
    memory = _peer_memory(torch, peer, opt, shared=("qmap1", "qmap2"))
    what = ("state1, state2 (uint8 codes), absmax1, absmax2 (float32); the qmaps (shared by all "
            "params of the optimizer) counted apart" if peer == "bnb-8bit" else "state1, state2 (float32)")
    return Case(opt.step, memory + (what,))


def _torchao_case(peer, size):
    ao = _import_peer("torchao.optim")
    import torch
    cls = ao.AdamW8bit if peer == "torchao-8bit" else ao.AdamW4bit
    params = _float32_params(torch, size)
    why = (f"torchao {cls.__name__} keeps float32 states for a tensor below 4096 elements or not a multiple "
           "of its block ({}): {}")
    try:
        opt = cls(params, **_adamw_options())
    except Exception as exc:  # an API change: a skipped row, the reason
        raise B.Skip(f"torchao {cls.__name__}: {type(exc).__name__}: {str(exc)[:200]}") from None
    block = getattr(opt, "block_size", 1)
    if any(p.numel() < 4096 or p.numel() % block for p in params):   # torchao's rule (_new_buffer)
        raise B.Skip(why.format(block, size.label))                 # known before compiling
    try:
        with _quiet():
            opt.step()    # torch.compile: the first step compiles (tens of seconds)
    except Exception as exc:  # torch.compile failing here (no compiler, ...): a skipped row, the reason
        raise B.Skip(f"torchao {cls.__name__}: {type(exc).__name__}: {str(exc)[:200]}") from None
    kinds = {type(v).__name__ for s in opt.state.values() for k, v in s.items() if k != "step"}
    if kinds & {"Tensor", "Parameter"}:    # should the rule above change
        raise B.Skip(why.format(block, size.label))

    def step():
        with _quiet():
            opt.step()
    return Case(step, _peer_memory(torch, peer, opt) + (
        "codes (uint8), scale (float32 per block) and qmap (float32, one per state tensor)",))


def _torch_fused_case(size):
    return Case(B._torch_formats_case(B.FORMAT_RECIPES[0], size))


def make_lowbit_case(recipe, backend, size):
    """One AdamW step over ``size`` on ``backend`` in ``recipe``'s formats (a fastgd backend) or
    the peer row ``backend`` (PEERS; its recipe is fixed): a zero-argument callable, or Skip
    with the reason (bench/test_lowbit.py). A fastgd case steps whichever fastgd backend the
    kernel is: no use_backend needed."""
    if backend in COMPILED:
        return _fastgd_entry(recipe, backend, lowbit_arrays(recipe, _lengths(size)), "array").fn
    return _peer_case(backend, size).fn


def _peer_case(peer, size):
    if peer == "torch-fused":
        return _torch_fused_case(size)
    if peer.startswith("bnb-"):
        return _bnb_case(peer, size)
    if peer.startswith("torchao-"):
        return _torchao_case(peer, size)
    raise ValueError(f"unknown peer {peer!r}")


# --- state memory --------------------------------------------------------------------------------

def _memory_row(size, optimizer, recipe, state_bytes, shared, counted, float32_bytes):
    """A state memory row; issue 15's bound (``most``) on fastgd's quantized recipes only."""
    per = state_bytes / size.elements
    ratio = per / float32_bytes if float32_bytes else None
    most = MEMORY_TARGETS.get(RECIPES[recipe].bits) if optimizer == "fastgd" else None
    return {"size": size.label, "elements": size.elements, "optimizer": optimizer, "recipe": recipe,
            "state_bytes": int(state_bytes), "bytes_per_param": per, "vs_float32": ratio,
            "shared_bytes": int(shared), "counted": counted, "most": most,
            "met": None if most is None or ratio is None else ratio <= most}


OPTIMIZERS = {None: "AdamW", 8: "AdamW8bit", 4: "AdamW4bit"}   # fastgd's, by the recipe's bits


def fastgd_state_bytes(recipe, tensors):
    """(state bytes, what is counted) of fastgd's optimizer of ``recipe`` (fastgd.AdamW,
    AdamW8bit, AdamW4bit; min_8bit_size=0: every tensor quantized, as the preset's rows) over
    copies of ``tensors``' params after one step: the nbytes of its state arrays (codes and
    absmax of quantized states; the step counter not counted). The step runs on a compiled
    backend that has the recipe's kernel, else on the NumPy reference (seconds at 16M)."""
    import fastgd
    cls = getattr(fastgd, OPTIMIZERS[recipe.bits])
    extra = {"min_8bit_size": 0} if recipe.bits else {}
    usable = [b for b in COMPILED if _backends.backend_status()[b][0]
              and (not recipe.bits or quantized_support(b, recipe.name) is None)]
    for backend in usable + ["numpy"]:
        opt = cls([t["param"].copy() for t in tensors], **_adamw_options(), **extra)
        try:
            with fastgd.use_backend(backend):
                opt.step([t["grad"] for t in tensors])
            break
        except Exception:  # noqa: BLE001 - the optimizer's path failing there: the next backend
            if backend == "numpy":
                raise
    arrays = [(k, v) for state in opt.state.values() for k, v in state.items() if isinstance(v, np.ndarray)]
    names = ", ".join(dict.fromkeys(k for k, _ in arrays))
    return sum(v.nbytes for _, v in arrays), f"fastgd.{cls.__name__}{' (min_8bit_size=0)' if extra else ''}: {names}"


def state_memory(size, fastgd_bytes, peer_memory):
    """The state memory rows of ``size``: fastgd's (``fastgd_bytes``: recipe -> (state bytes,
    counted), fastgd_state_bytes), then the peers' (``peer_memory``: peer -> Case.memory), each
    with its bytes per parameter and their ratio to fastgd's float32 states' (8 B)."""
    float32 = fastgd_bytes["fp32"][0] / size.elements if "fp32" in fastgd_bytes else 8.0
    rows = [_memory_row(size, "fastgd", name, state, 0, counted, float32)
            for name, (state, counted) in fastgd_bytes.items()]
    for peer, (state, shared, counted) in peer_memory.items():
        rows.append(_memory_row(size, peer, PEERS[peer][1], state, shared, counted, float32))
    return rows


# --- the run -------------------------------------------------------------------------------------

def _groups(size, backends, skipped, memory):
    """The round-robin groups of preset lowbit over ``size``: per recipe, adam_many on each
    compiled backend and the peers of that recipe; the state memory rows appended to ``memory``."""
    compiled = [b for b in backends if b in COMPILED]
    layout = "array" if size.tensors == 1 else "list"
    groups, fastgd_bytes, peer_memory = [], {}, {}
    for recipe in LOWBIT_RECIPES:
        label = f"{RULE} {recipe.name}"
        try:
            tensors = lowbit_arrays(recipe, _lengths(size))
        except B.Skip as why:
            skipped.extend({"rule": label, "size": size.label, "backend": b, "reason": str(why)}
                           for b in backends if b in compiled or (b in PEERS and PEERS[b][1] == recipe.name))
            continue
        entries = [B._guarded(skipped, label, size, b, lambda b=b: _fastgd_entry(recipe, b, tensors, layout))
                   for b in compiled]
        for peer in (p for p in backends if p in PEERS and PEERS[p][1] == recipe.name):
            def build(peer=peer):
                case = _peer_case(peer, size)
                if case.memory:
                    peer_memory[peer] = case.memory
                return B.Entry(peer, "peer", case.fn, "list", note=PEERS[peer][2])
            entries.append(B._guarded(skipped, label, size, peer, build))
        entries = [e for e in entries if e]
        if entries:
            groups.append(B.Group(RULE, recipe.bytes_per_element, 3, entries, pattern=recipe.pattern,
                                  recipe=recipe))
        try:
            fastgd_bytes[recipe.name] = fastgd_state_bytes(recipe, tensors)
        except Exception as exc:  # an optimizer refusing the recipe: no memory row, the reason
            skipped.append({"rule": f"state memory {recipe.name}", "size": size.label, "backend": "fastgd",
                            "reason": f"FAILED: {type(exc).__name__}: {str(exc)[:160]}"})
    memory.extend(state_memory(size, fastgd_bytes, peer_memory))
    return groups


def lowbit_ratios(rows):
    """Each row's speedups over the same run's (size, threads) torch fused fp32, bitsandbytes
    AdamW8bit and torchao AdamW8bit rows, and (fastgd rows) its backend's fp32 row."""
    runs = {}
    for row in rows:
        runs.setdefault((row["size"], row["threads"]), {})[(row["recipe"], row["backend"])] = row["seconds"]
    for row in rows:
        times = runs[(row["size"], row["threads"])]

        def vs(key):
            other = times.get(key)
            return None if row["kind"] == "stream" or other is None else other / row["seconds"]
        row.update(speedup_vs_torch_fused=vs(("fp32", "torch-fused")), speedup_vs_bnb8=vs(("8bit", "bnb-8bit")),
                   speedup_vs_torchao8=vs(("8bit", "torchao-8bit")),
                   speedup_vs_fp32=vs(("fp32", row["backend"])) if row["kind"] == "fastgd" else None)
    return rows


def lowbit_targets(rows, skipped, sizes, threads, compiled):
    """Issue 15's targets (LOWBIT_TARGETS) of every fastgd adam_many row (formats_targets), and
    of every (size, threads, backend) of a compiled backend whose row of the target's recipe
    was skipped: value None, the skip's reason."""
    out = B.formats_targets(rows, LOWBIT_TARGETS)
    reasons = {(s["rule"], s["size"], s["backend"]): s["reason"] for s in skipped}
    for recipe, field, least, text in LOWBIT_TARGETS:
        for size in sizes:
            for backend in compiled:
                why = reasons.get((f"{RULE} {recipe}", size.label, backend))
                if why is None:
                    continue
                out += [{"target": text, "recipe": recipe, "field": field, "size": size.label, "threads": t,
                         "backend": backend, "value": None, "least": least, "met": None,
                         "why_not_measured": f"row skipped: {why}"} for t in threads]
    return out


def run_lowbit(*, sizes, threads, backends, rounds=7, min_seconds=0.05, stream_elements=B.STREAM_ELEMENTS,
               progress=None):
    """Preset lowbit (issue 15): per size and thread count, in one round-robin, AdamW through
    adam_many in every recipe of LOWBIT_RECIPES on each compiled backend, the peers (PEERS) and
    a stream of each recipe's bytes. ``backends``: --backends names (BACKEND_CHOICES).
    Returns (rows, skipped, targets, memory)."""
    rows_backends = expand_backends(backends)
    compiled = [b for b in rows_backends if b in COMPILED]
    skipped, memory = [], []

    def units(size):
        groups = _groups(size, rows_backends, skipped, memory)
        B.release_pool()      # the random data the groups were made from (1 GiB at 64M): copied
        yield "adamw lowbit", groups
    rows = B.run_groups(units, sizes=sizes, dtype=np.float32, threads=threads, rounds=rounds,
                        min_seconds=min_seconds, stream_elements=stream_elements, progress=progress)
    rows = lowbit_ratios(rows)
    return rows, skipped, lowbit_targets(rows, skipped, sizes, threads, compiled), memory
