"""FlatParams: many parameter arrays packed into one contiguous buffer, with views per tensor.

A model with many small tensors costs an optimizer one kernel call (and its Python overhead) per
tensor per step; packed into one buffer it costs one call over all of them, with the optimizer
state equally flat. The per-tensor arrays a model computes with are views into the buffer (and
the gradients views into a second buffer), so writing a gradient into ``flat.grads[i]`` is
writing into ``flat.grad``, and the optimizer's update of ``flat.data`` is seen by every
``flat.params[i]``::

    flat = fastgd.FlatParams([w1, b1, w2, b2])      # copies the values in once
    w1, b1, w2, b2 = flat.params                     # use these from now on (views)
    opt = fastgd.Adam(flat, lr=1e-3)                 # one flat parameter, one kernel call a step
    ...  write gradients into flat.grads[i] (or flat.grad) ...
    opt.step()                                       # grads default to flat.grad

This is what torch's ``foreach``/``fused`` multi-tensor kernels approximate by batching pointers;
here the memory itself is contiguous.
"""
import numpy as np

from . import _validate as check


class FlatParams:
    """Parameter arrays of one float dtype packed into ``data`` (and their gradients into ``grad``).

    ``params[i]`` / ``grads[i]`` are views of shape ``shapes[i]`` into ``data`` / ``grad``
    (tensors packed in order, no padding). The values of ``arrays`` are copied in; the
    originals are not used afterwards. Pickling (and so copy.deepcopy) keeps the views views.
    """

    def __init__(self, arrays, dtype=None):
        if isinstance(arrays, np.ndarray):
            raise TypeError("FlatParams takes a list of arrays; wrap one array: [array]")
        arrays = [np.asarray(a) if not isinstance(a, np.ndarray) else a for a in arrays]
        if not arrays:
            raise ValueError("FlatParams needs at least one array")
        if dtype is None:
            dtypes = {a.dtype for a in arrays}
            if len(dtypes) != 1:
                raise TypeError(f"the arrays have dtypes {sorted(map(str, dtypes))}; pass dtype= to "
                                "convert them to one")
            dtype = arrays[0].dtype
        dtype = np.dtype(dtype)
        if dtype not in check.FLOAT_DTYPES:
            raise TypeError(f"FlatParams dtype must be float32 or float64; got {dtype}")
        for i, a in enumerate(arrays):
            if a.dtype.kind not in "fiub":
                raise TypeError(f"arrays[{i}] has dtype {a.dtype}, which is not numeric")
        self._build(tuple(a.shape for a in arrays), dtype)
        for view, a in zip(self.params, arrays):
            view[...] = a

    @classmethod
    def zeros(cls, shapes, dtype=np.float32):
        """A FlatParams of zeros with tensors of the given shapes (to be initialised in place)."""
        shapes = [(s,) if isinstance(s, int) else tuple(s) for s in shapes]
        return cls([np.zeros(s, dtype) for s in shapes])

    def _build(self, shapes, dtype, data=None, grad=None):
        self.shapes = shapes
        sizes = [int(np.prod(s, dtype=np.int64)) for s in shapes]
        self.offsets = tuple(np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]).tolist())
        total = self.offsets[-1]
        self.data = np.zeros(total, dtype) if data is None else data
        self.grad = np.zeros(total, dtype) if grad is None else grad
        self.params = self.views(self.data)
        self.grads = self.views(self.grad)

    def views(self, buffer):
        """Per-tensor views (shapes[i]) of any flat array of this size, e.g. an optimizer state."""
        if not isinstance(buffer, np.ndarray) or buffer.ndim != 1 or buffer.size != self.size:
            raise ValueError(f"views need a 1-D array of {self.size} elements")
        return [buffer[lo:hi].reshape(shape)
                for lo, hi, shape in zip(self.offsets, self.offsets[1:], self.shapes)]

    @property
    def size(self):
        """Elements in the buffer (all tensors together)."""
        return self.offsets[-1]

    @property
    def dtype(self):
        return self.data.dtype

    def __len__(self):
        """Number of tensors."""
        return len(self.shapes)

    def zero_grad(self):
        """Set every gradient to zero (one pass over ``grad``)."""
        self.grad.fill(0)

    def __getstate__(self):
        return {"shapes": self.shapes, "data": self.data, "grad": self.grad}

    def __setstate__(self, state):
        data = np.ascontiguousarray(state["data"])
        grad = np.ascontiguousarray(state["grad"])
        if data.dtype != grad.dtype or data.ndim != 1 or data.shape != grad.shape:
            raise ValueError("FlatParams state has mismatched buffers")
        self._build(tuple(tuple(s) for s in state["shapes"]), data.dtype, data, grad)
        if self.size != data.size:
            raise ValueError("FlatParams state: buffer size does not match the shapes")

    def __repr__(self):
        return f"FlatParams({len(self)} tensors, {self.size} elements, {self.dtype})"
