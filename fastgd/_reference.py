"""The NumPy reference: the readable specification of every update rule, and the test oracle.

Each function here has the same name and signature as the compiled kernels of the Cython and
Numba backends (bottleneck's "slow twin"), updates its arrays in place, and is written to be
read: one NumPy expression per line of the rule as its spec (fastgd/rules/<rule>.py) states it. Scalars that depend on
the step count (bias corrections) are computed by fastgd.functional and passed in.
Arithmetic happens in the arrays' dtype (NumPy keeps float32 with Python-float scalars).
``<rule>_many`` (many tensors, each array in its own storage format) is ``many(<rule>)``: the
single rule on float32 copies of each tensor's arrays, stored back with fastgd.formats.
"""
import ctypes
import inspect
import math

import numpy as np

from . import formats


def read_grad(grad, grad_acc, grad_scale, maximize, use_acc):
    """The gradient every rule sees: g = grad_scale * grad, negated if maximize.

    With use_acc, the last micro-batch's grad is added to the accumulated sum grad_acc as it is
    read, and grad_acc is reset to zero (gradient accumulation fused into the step).
    """
    g = grad * (-grad_scale if maximize else grad_scale)
    if use_acc:
        g = (grad_acc + grad) * (-grad_scale if maximize else grad_scale)
        grad_acc[...] = 0
    return g


def decay_weights(g, param, lr, weight_decay, decoupled):
    """Weight decay, coupled or decoupled: returns the gradient the rule goes on with.

    coupled (Adam):      g = g + weight_decay * p
    decoupled (AdamW):   p = p * (1 - lr * weight_decay)  (in place; g unchanged)
    """
    if weight_decay != 0 and not decoupled:
        g = g + weight_decay * param
    if decoupled:
        param *= 1 - lr * weight_decay
    return g


def adam_moments(g, exp_avg, exp_avg_sq, beta1, beta2):
    """Adam's moment updates, in place (Adam, NAdam, RAdam):

    m = m + (1 - beta1) * (g - m)            (= beta1 * m + (1 - beta1) * g, torch's lerp form)
    v = beta2 * v + (1 - beta2) * g^2
    """
    exp_avg += (1 - beta1) * (g - exp_avg)
    exp_avg_sq *= beta2
    exp_avg_sq += (1 - beta2) * g * g


def adam(param, grad, grad_acc, exp_avg, exp_avg_sq, max_exp_avg_sq, grad_scale, maximize, use_acc,
         lr, beta1, beta2, eps, weight_decay, decoupled, amsgrad, bias_correction1, bias_correction2):
    """Adam (Kingma & Ba 2015), AdamW (Loshchilov & Hutter 2019) and AMSGrad, as torch.optim.Adam.

    g = read_grad(...)   (grad_scale * grad, negated if maximize; plus grad_acc if use_acc)
    Adam:  g = g + weight_decay * p          AdamW:  p = p * (1 - lr * weight_decay)
    m = m + (1 - beta1) * (g - m)            (= beta1 * m + (1 - beta1) * g, torch's lerp form)
    v = beta2 * v + (1 - beta2) * g^2
    AMSGrad: vmax = max(vmax, v), and vmax is used for v below
    p = p - (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps),   bc1 = 1 - beta1^t, bc2 = 1 - beta2^t
    """
    g = read_grad(grad, grad_acc, grad_scale, maximize, use_acc)
    g = decay_weights(g, param, lr, weight_decay, decoupled)
    adam_moments(g, exp_avg, exp_avg_sq, beta1, beta2)
    v = exp_avg_sq
    if amsgrad:
        np.maximum(max_exp_avg_sq, exp_avg_sq, out=max_exp_avg_sq)
        v = max_exp_avg_sq
    denom = np.sqrt(v) * (1 / math.sqrt(bias_correction2)) + eps
    param -= (lr / bias_correction1) * exp_avg / denom


# --- gradient-wide operations (clipping, accumulation): the twins of kernels/norms.pyx ----------

def norm_partial(x, y, use_y, norm_type):
    """The part of a p-norm one array contributes, in float64: sum |v|^p, or max |v| for p = inf.

    v = x + y (in the arrays' dtype) if use_y, else x. The norm of several arrays is
    (sum of their partials)^(1/p) (max for p = inf). The compiled kernels sum in fixed blocks and
    lanes so that the result does not depend on the thread count; here NumPy sums in float64.
    NaN anywhere gives NaN (also for p = inf, as torch).
    """
    v = (x + y) if use_y else x
    a = np.abs(v.astype(np.float64))
    if a.size == 0:
        return 0.0
    if norm_type == math.inf:
        return float(np.max(a))
    if norm_type == 2.0:
        return float(np.sum(a * a))
    if norm_type == 1.0:
        return float(np.sum(a))
    return float(np.sum(a ** norm_type))


def scale(x, s):
    """x = s * x (the gradients scaled by the clipping coefficient)."""
    x *= s


def clamp(x, lo, hi):
    """x = min(max(x, lo), hi); NaN stays NaN (torch.clamp)."""
    np.clip(x, lo, hi, out=x)


def accumulate(acc, grad, scale):
    """acc = acc + scale * grad (gradient accumulation over micro-batches)."""
    acc += scale * grad


def sgd(param, grad, grad_acc, momentum_buffer, grad_scale, maximize, use_acc, lr, momentum,
        dampening, weight_decay, nesterov, first):
    """SGD with momentum (Polyak; Nesterov as Sutskever et al. 2013), as torch.optim.SGD.

    g = read_grad(...)
    g = g + weight_decay * p
    momentum != 0:  buf = g                                   at the buffer's first step
                    buf = momentum * buf + (1 - dampening) * g  after
                    g = g + momentum * buf  (nesterov)  |  g = buf
    p = p - lr * g
    momentum_buffer is untouched when momentum == 0 (any array may be passed).
    """
    g = read_grad(grad, grad_acc, grad_scale, maximize, use_acc)
    if weight_decay != 0:
        g = g + weight_decay * param
    if momentum != 0:
        if first:
            momentum_buffer[...] = g
        else:
            momentum_buffer *= momentum
            momentum_buffer += (1 - dampening) * g
        g = g + momentum * momentum_buffer if nesterov else momentum_buffer
    param -= lr * g


def adagrad(param, grad, grad_acc, state_sum, grad_scale, maximize, use_acc, clr, weight_decay,
            eps):
    """Adagrad (Duchi et al. 2011), as torch.optim.Adagrad.

    g = read_grad(...)
    g = g + weight_decay * p
    s = s + g^2
    p = p - clr * g / (sqrt(s) + eps),    clr = lr / (1 + (t - 1) * lr_decay)  (computed by the caller)
    """
    g = read_grad(grad, grad_acc, grad_scale, maximize, use_acc)
    if weight_decay != 0:
        g = g + weight_decay * param
    state_sum += g * g
    param -= clr * (g / (np.sqrt(state_sum) + eps))


def rmsprop(param, grad, grad_acc, square_avg, momentum_buffer, grad_avg, grad_scale, maximize,
            use_acc, lr, alpha, eps, weight_decay, momentum, centered):
    """RMSprop (Hinton 2012; centered: Graves 2013), as torch.optim.RMSprop.

    g = read_grad(...)
    g = g + weight_decay * p
    sq = alpha * sq + (1 - alpha) * g^2
    centered:  ga = ga + (1 - alpha) * (g - ga);  d = sqrt(sq - ga^2) + eps
    else:      d = sqrt(sq) + eps
    momentum > 0:  buf = momentum * buf + g / d;  p = p - lr * buf
    else:          p = p - lr * g / d
    momentum_buffer is untouched unless momentum > 0, grad_avg unless centered.
    """
    g = read_grad(grad, grad_acc, grad_scale, maximize, use_acc)
    if weight_decay != 0:
        g = g + weight_decay * param
    square_avg *= alpha
    square_avg += (1 - alpha) * g * g
    if centered:
        grad_avg += (1 - alpha) * (g - grad_avg)
        d = np.sqrt(square_avg - grad_avg * grad_avg) + eps
    else:
        d = np.sqrt(square_avg) + eps
    if momentum > 0:
        momentum_buffer *= momentum
        momentum_buffer += g / d
        param -= lr * momentum_buffer
    else:
        param -= lr * (g / d)


def adamax(param, grad, grad_acc, exp_avg, exp_inf, grad_scale, maximize, use_acc, lr, beta1,
           beta2, eps, weight_decay, bias_correction1):
    """Adamax (Kingma & Ba 2015, section 7: Adam with the infinity norm), as torch.optim.Adamax.

    g = read_grad(...)
    g = g + weight_decay * p
    m = m + (1 - beta1) * (g - m)
    u = max(beta2 * u, |g| + eps)
    p = p - (lr / bc1) * m / u,    bc1 = 1 - beta1^t
    """
    g = read_grad(grad, grad_acc, grad_scale, maximize, use_acc)
    if weight_decay != 0:
        g = g + weight_decay * param
    exp_avg += (1 - beta1) * (g - exp_avg)
    exp_inf *= beta2
    np.maximum(exp_inf, np.abs(g) + eps, out=exp_inf)
    param -= (lr / bias_correction1) * (exp_avg / exp_inf)


def nadam(param, grad, grad_acc, exp_avg, exp_avg_sq, grad_scale, maximize, use_acc, lr, beta1,
          beta2, eps, weight_decay, decoupled, grad_coef, avg_coef, bias_correction2):
    """NAdam (Dozat 2016, with the momentum schedule mu_t), as torch.optim.NAdam.

    g = read_grad(...)
    NAdam: g = g + weight_decay * p          decoupled (NAdamW): p = p * (1 - lr * weight_decay)
    m = m + (1 - beta1) * (g - m);  v = beta2 * v + (1 - beta2) * g^2
    d = sqrt(v) / sqrt(bc2) + eps,   bc2 = 1 - beta2^t
    p = p - grad_coef * g / d - avg_coef * m / d
    with mu_t = beta1 * (1 - 0.5 * 0.96^(t * momentum_decay)) (computed by the caller):
    grad_coef = lr * (1 - mu_t) / (1 - mu_1 ... mu_t),  avg_coef = lr * mu_{t+1} / (1 - mu_1 ... mu_{t+1})
    """
    g = read_grad(grad, grad_acc, grad_scale, maximize, use_acc)
    g = decay_weights(g, param, lr, weight_decay, decoupled)
    adam_moments(g, exp_avg, exp_avg_sq, beta1, beta2)
    denom = np.sqrt(exp_avg_sq) * (1 / math.sqrt(bias_correction2)) + eps
    param -= (grad_coef * g + avg_coef * exp_avg) / denom


def radam(param, grad, grad_acc, exp_avg, exp_avg_sq, grad_scale, maximize, use_acc, lr, beta1,
          beta2, eps, weight_decay, decoupled, bias_correction1, bias_correction2, adaptive, rect):
    """RAdam (Liu et al. 2020, "On the Variance of the Adaptive Learning Rate"), as torch.optim.RAdam.

    g = read_grad(...)
    RAdam: g = g + weight_decay * p          decoupled (RAdamW): p = p * (1 - lr * weight_decay)
    m = m + (1 - beta1) * (g - m);  v = beta2 * v + (1 - beta2) * g^2
    adaptive (rho_t > 5):  p = p - lr * rect * (m / bc1) * sqrt(bc2) / (sqrt(v) + eps)
    else (early steps):    p = p - lr * m / bc1
    with rho_inf = 2 / (1 - beta2) - 1, rho_t = rho_inf - 2 t beta2^t / bc2 and
    rect = sqrt((rho_t - 4)(rho_t - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2) rho_t)) (caller).
    """
    g = read_grad(grad, grad_acc, grad_scale, maximize, use_acc)
    g = decay_weights(g, param, lr, weight_decay, decoupled)
    adam_moments(g, exp_avg, exp_avg_sq, beta1, beta2)
    if adaptive:
        param -= (lr * rect * math.sqrt(bias_correction2) / bias_correction1) * exp_avg / (
            np.sqrt(exp_avg_sq) + eps)
    else:
        param -= (lr / bias_correction1) * exp_avg


def lion(param, grad, grad_acc, exp_avg, grad_scale, maximize, use_acc, lr, beta1, beta2,
         weight_decay):
    """Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms"); torch has none.

    g = read_grad(...)
    c = beta1 * m + (1 - beta1) * g          (the update direction interpolates m and g)
    p = p * (1 - lr * weight_decay) - lr * sign(c)
    m = beta2 * m + (1 - beta2) * g          (the momentum tracks g more slowly)
    """
    g = read_grad(grad, grad_acc, grad_scale, maximize, use_acc)
    c = beta1 * exp_avg + (1 - beta1) * g
    param *= 1 - lr * weight_decay
    param -= lr * np.sign(c)
    exp_avg *= beta2
    exp_avg += (1 - beta2) * g


# --- many tensors, any storage format: the twins of the compiled <rule>_many kernels -------------

def _role_view(address, n, code):
    """The n elements at ``address`` as a NumPy array of format ``code`` (a view: writes go to
    the caller's memory)."""
    dtype = formats.dtype_of(formats.NAMES[code])
    buf = (ctypes.c_char * (n * dtype.itemsize)).from_address(address)
    return np.frombuffer(buf, dtype=dtype)


def _quantized_view(address, absmax_address, n, code):
    """(codes, absmax) of a quantized state of n elements: views of the caller's memory."""
    nb = (ctypes.c_char * formats.code_bytes(code, n)).from_address(address)
    na = (ctypes.c_char * (4 * formats.n_blocks(code, n))).from_address(absmax_address)
    return np.frombuffer(nb, dtype=np.uint8), np.frombuffer(na, dtype=np.float32)


def _check_quantized(name, fmts, roles):
    """Whether the call has quantized states; ValueError unless they are state roles of one
    width (8 or 4 bits) with 16- or 32-bit params (kernels/CONTRACT.md)."""
    q = [r for r, f in enumerate(fmts) if f in formats.QUANTIZED]
    if not q:
        return False
    if any(r < 3 or r >= roles - 1 for r in q):
        raise ValueError(f"{name}_many: quantized formats are for state roles only; got codes {fmts}")
    if len({formats.QUANTIZED[fmts[r]][0] for r in q}) != 1:
        raise ValueError(f"{name}_many: one call has 8-bit or 4-bit states, not both; got {fmts}")
    if formats.F64 in fmts:
        raise ValueError(f"{name}_many: quantized states with float32 or 16-bit arrays only; "
                         f"got {fmts}")
    return True


def _python_scalar(x):
    # NumPy 2 promotes a float32 array with a numpy.float64 scalar to float64; the kernels cast
    # every scalar to the compute dtype, which a Python float does in NumPy (a "weak" scalar).
    return x.item() if isinstance(x, np.generic) else x


def many(rule):
    """The ``<rule>_many`` kernel of a single reference kernel ``rule`` (kernels/CONTRACT.md,
    "Many tensors, any storage format"): ``rule_many(ptrs, offsets, fmts, keys, grad_scale,
    maximize, use_acc, *scalars)`` steps tensor k = 0..N-1, each as follows:

    - every role (param, grad, grad_acc, *state arrays, out) is viewed at its address
      ``ptrs[k, r]`` in its format ``fmts[r]`` and loaded to float32 (formats.load, exact), or
      to float64 when every role but out is float64;
    - ``rule`` (the single reference) steps those copies with the call's scalars;
    - every array the step may write is stored back in its format with formats.store (param
      in format 4: stochastic rounding with ``keys[k]``); ``out``, if present, gets the updated
      param in out's format (rounded to nearest even); grad is never written.

    Stand-ins (a role the call does not use holds the address of another role of the tensor):
    roles at the same address share ONE copy, so ``rule`` sees the same aliasing as the single
    kernel does with its stand-ins, and the array is stored back once. Writing each role's own
    copy back would be wrong: adam without amsgrad passes exp_avg_sq as max_exp_avg_sq, and
    that untouched copy, stored after v's, would undo v's update. The array at an address is
    read and stored in the format of its first role (in role order) that may be written, i.e.
    not grad and, without ``use_acc``, not grad_acc (so a grad_acc stand-in before the array's
    own role does not decide its format, nor that it is skipped); an address with no such role
    (the grad, a grad_acc stand-in at the grad, an unused distinct grad_acc) is never written.
    A stand-in's own format code is never used: fastgd._core gives every role its nominal code
    (a grad_acc stand-in at a float32 master param says bfloat16, a momentum_buffer stand-in at
    a bfloat16 param says float32), and viewing the memory in that format would read, and
    write, past the array. Stand-ins at ``out``'s address (with master weights _core passes the
    16-bit param, which is out, where the spec passes the param) are loaded in out's format and
    never stored: out is written last, from the updated param.
    An unused state role always aliases another role (the contract's stand-in rule), so every
    stored array is one the rule writes; a distinct array in an unused role would be stored back
    unchanged (bit-exact, but bfloat16 subnormals flush and signalling NaNs become quiet, as any
    bfloat16 store does; the compiled kernels would leave it alone).
    """
    names = list(inspect.signature(rule).parameters)
    n_states = names.index("grad_scale") - 3   # param, grad, grad_acc, *states, grad_scale, ...
    roles = 4 + n_states                       # ... and out

    def rule_many(ptrs, offsets, fmts, keys, grad_scale, maximize, use_acc, *scalars):
        ptrs = np.asarray(ptrs, dtype=np.int64)
        offsets = np.asarray(offsets, dtype=np.int64)
        fmts = [int(f) for f in np.asarray(fmts).reshape(-1)]
        keys = np.asarray(keys, dtype=np.uint32)
        quantized = _check_quantized(rule.__name__, fmts, roles)
        width = roles + n_states if quantized else roles
        if ptrs.ndim != 2 or ptrs.shape[1] not in (roles, roles + n_states) or len(fmts) != roles:
            raise ValueError(f"{rule.__name__}_many: ptrs must be (N, {roles}) (or (N, "
                             f"{roles + n_states}) with quantized states) and fmts ({roles},); "
                             f"got {ptrs.shape} and {len(fmts)} codes")
        if ptrs.shape[1] < width:
            raise ValueError(f"{rule.__name__}_many: quantized states need the absmax columns: "
                             f"ptrs must be (N, {width}); got {ptrs.shape}")
        if offsets.shape != (ptrs.shape[0] + 1,) or keys.shape[0] < ptrs.shape[0]:
            raise ValueError(f"{rule.__name__}_many: offsets must be (N + 1,) and keys (N,)")
        wide = [f == formats.F64 for f in fmts[:-1]]
        if any(wide) and not all(wide):
            raise ValueError(f"{rule.__name__}_many: float64 only with every array float64; "
                             f"got format codes {fmts}")
        compute = np.float64 if all(wide) else np.float32
        scalars = [_python_scalar(s) for s in scalars]
        unwritten = {1} if use_acc else {1, 2}   # grad; grad_acc unless used
        out_code = fmts[-1]
        for k in range(ptrs.shape[0]):
            n = int(offsets[k + 1] - offsets[k])
            if n == 0:
                continue
            at = {}         # address -> the roles at it (several: stand-ins)
            for r in range(roles - 1):
                at.setdefault(int(ptrs[k, r]), []).append(r)
            out = int(ptrs[k, roles - 1]) if out_code != formats.NONE else 0
            copies, stores = {}, []
            for address, rs in at.items():
                if address == out:   # stand-ins at the 16-bit param: out is written, below
                    r, written = roles - 1, []
                else:
                    written = [r for r in rs if r not in unwritten]
                    r = (written or rs)[0]       # the role whose array this is
                if fmts[r] in formats.QUANTIZED:     # codes here, its absmax in column R + r - 3
                    view = _quantized_view(address, int(ptrs[k, roles + r - 3]), n, fmts[r])
                    copies[address] = formats.dequantize(*view, fmts[r], n)
                else:
                    view = _role_view(address, n, fmts[r])
                    copies[address] = formats.load(view).astype(compute)   # a writable copy
                if written:
                    stores.append((view, copies[address], fmts[r], r))
            rule(*[copies[int(ptrs[k, r])] for r in range(roles - 1)], grad_scale, maximize,
                 use_acc, *scalars)
            for view, values, code, r in stores:
                if code in formats.QUANTIZED:
                    codes, absmax = formats.quantize(values, code)
                    view[0][...], view[1][...] = codes, absmax
                else:
                    view[...] = formats.store(values, code, int(keys[k]), r)
            if out:
                _role_view(out, n, out_code)[...] = formats.store(copies[int(ptrs[k, 0])], out_code)

    rule_many.__name__ = rule_many.__qualname__ = rule.__name__ + "_many"
    rule_many.__doc__ = (f"{rule.__name__} over many tensors in any storage format "
                         f"(fastgd._reference.many; kernels/CONTRACT.md).")
    return rule_many


adam_many = many(adam)
sgd_many = many(sgd)
adagrad_many = many(adagrad)
rmsprop_many = many(rmsprop)
adamax_many = many(adamax)
nadam_many = many(nadam)
radam_many = many(radam)
lion_many = many(lion)
