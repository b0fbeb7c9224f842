"""Run an ONNX graph in PyTorch, node by node: the few operators facekit's ONNX models use.

``OnnxModule(model)`` (an ``onnx.ModelProto`` or its serialised bytes) is a ``torch.nn.Module``
whose forward takes the graph's inputs in order and returns its outputs in order (tuple of
tensors); ``output_names`` names them. The graph's weights (initialisers and ``Constant`` nodes)
become buffers, so ``.to(device)`` moves the whole model. Operators (default ONNX domain)::

    Conv       2-D, any group / strides / dilations / explicit pads (auto_pad NOTSET)
    MaxPool    2-D, explicit pads, ceil_mode, dilations (one output)
    Resize     mode nearest, coordinate_transformation_mode asymmetric, nearest_mode floor,
               constant ``scales`` (any axis; output size floor(in * scale))
    Reshape    constant shape; 0 copies the input's dimension, -1 is inferred (allowzero 0)
    Transpose  Add  Relu  Sigmoid  Constant

Any other operator or attribute value raises ``UnsupportedOnnx`` naming the node, the operator and
what is not supported, when the module is built (never half-way through a forward pass). These
are the operators of OpenCV Zoo's YuNet (see ``facekit.face.yunet.fp32_graph``).

Why not a package: onnx2torch (1.5.15, the maintained converter) imports torchvision, and
installing it from PyPI would replace the installed torch; 100 lines here have no dependencies
beyond onnx and torch, and tests/test_yunet_torch.py checks them against onnxruntime.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

SUPPORTED = ("Add", "Constant", "Conv", "MaxPool", "Relu", "Reshape", "Resize", "Sigmoid", "Transpose")


class UnsupportedOnnx(ValueError):
    """The graph uses an operator (or an attribute value) this module does not implement."""


def _attrs(node) -> dict:
    from onnx import helper

    out = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        out[a.name] = v.decode() if isinstance(v, bytes) else v
    return out


def _refuse(node, what: str):
    raise UnsupportedOnnx(f"ONNX node {node.name or node.output[0]!r} ({node.op_type}): {what} is not supported "
                          f"by facekit.face.onnx_torch")


def _check(node, at: dict, allowed: dict):
    """Every attribute of ``node`` is known (``allowed``: name -> the accepted values, or None for any)."""
    for k, v in at.items():
        if k not in allowed:
            _refuse(node, f"attribute {k}={v!r}")
        if allowed[k] is not None and v not in allowed[k]:
            _refuse(node, f"{k}={v!r}")


def _const(node, const: dict, i: int) -> np.ndarray:
    name = node.input[i] if len(node.input) > i else ""
    if name not in const:
        _refuse(node, f"input {i} ({name!r}) that is not a constant")
    return const[name]


def _conv(node, at, const):
    _check(node, at, {"kernel_shape": None, "pads": None, "strides": None, "dilations": None, "group": None,
                      "auto_pad": ("NOTSET",)})
    if len(at.get("kernel_shape", [0, 0])) != 2:
        _refuse(node, f"a {len(at['kernel_shape'])}-D convolution")
    t, l, b, r = at.get("pads", [0, 0, 0, 0])
    strides, dil, group = at.get("strides", [1, 1]), at.get("dilations", [1, 1]), at.get("group", 1)
    if (t, l) == (b, r):
        return lambda x, w, bias=None: F.conv2d(x, w, bias, strides, (t, l), dil, group)
    return lambda x, w, bias=None: F.conv2d(F.pad(x, (l, r, t, b)), w, bias, strides, 0, dil, group)


def _maxpool(node, at, const):
    _check(node, at, {"kernel_shape": None, "pads": None, "strides": None, "dilations": None,
                      "ceil_mode": (0, 1), "storage_order": (0,), "auto_pad": ("NOTSET",)})
    if len(node.output) > 1 and node.output[1]:
        _refuse(node, "the Indices output")
    k = at["kernel_shape"]
    if len(k) != 2:
        _refuse(node, f"a {len(k)}-D pooling")
    t, l, b, r = at.get("pads", [0, 0, 0, 0])
    strides, dil, ceil = at.get("strides", [1, 1]), at.get("dilations", [1, 1]), bool(at.get("ceil_mode", 0))
    if (t, l) == (b, r) and t <= k[0] // 2 and l <= k[1] // 2:
        return lambda x: F.max_pool2d(x, k, strides, (t, l), dil, ceil)
    return lambda x: F.max_pool2d(F.pad(x, (l, r, t, b), value=float("-inf")), k, strides, 0, dil, ceil)


def _resize(node, at, const):
    _check(node, at, {"mode": ("nearest",), "coordinate_transformation_mode": ("asymmetric",),
                      "nearest_mode": ("floor",), "antialias": (0,), "exclude_outside": None,
                      "cubic_coeff_a": None, "extrapolation_value": None})  # the last three: cubic/crop only
    if len(node.input) > 3 and node.input[3]:
        _refuse(node, "the sizes input (constant scales only)")
    scales = [float(s) for s in _const(node, const, 2)]

    def resize(x, *_):
        for axis, s in enumerate(scales):  # out[i] = in[floor(i / s)], as ONNX asymmetric + floor
            if s != 1.0:
                n_in = x.shape[axis]
                n_out = int(np.floor(n_in * s))
                src = torch.floor(torch.arange(n_out, device=x.device, dtype=torch.float64) / s)
                x = x.index_select(axis, src.long().clamp_(max=n_in - 1))
        return x

    return resize


def _reshape(node, at, const):
    _check(node, at, {"allowzero": (0,)})
    shape = [int(s) for s in _const(node, const, 1)]
    return lambda x, *_: x.reshape([x.shape[i] if s == 0 else s for i, s in enumerate(shape)])


def _transpose(node, at, const):
    _check(node, at, {"perm": None})
    perm = at.get("perm")
    return lambda x: x.permute(*(perm if perm is not None else range(x.ndim - 1, -1, -1)))


def _simple(fn):
    def build(node, at, const):
        _check(node, at, {})
        return fn
    return build


def _builders():
    return {"Conv": _conv, "MaxPool": _maxpool, "Resize": _resize, "Reshape": _reshape, "Transpose": _transpose,
            "Add": _simple(torch.add), "Relu": _simple(torch.relu), "Sigmoid": _simple(torch.sigmoid)}


def _constant_value(node) -> np.ndarray:
    from onnx import numpy_helper

    at = {a.name: a for a in node.attribute}
    if set(at) == {"value"}:
        return numpy_helper.to_array(at["value"].t)
    _refuse(node, f"attribute(s) {sorted(at)} (only value)")


def _load(model):
    import onnx

    if isinstance(model, (bytes, bytearray)):
        return onnx.load_from_string(bytes(model))
    if isinstance(model, onnx.ModelProto):
        return model
    raise TypeError(f"expected an onnx.ModelProto or its bytes, got {type(model).__name__}")


class OnnxModule(torch.nn.Module):
    """``torch.nn.Module`` running the ONNX graph ``model`` (ModelProto or bytes) node by node.
    Raises UnsupportedOnnx for an operator or attribute this module does not implement."""

    def __init__(self, model):
        from onnx import numpy_helper

        super().__init__()
        g = _load(model).graph
        const = {i.name: numpy_helper.to_array(i) for i in g.initializer}
        builders = _builders()
        self._steps = []  # (fn, input names, output names)
        for node in g.node:
            if node.domain not in ("", "ai.onnx"):
                _refuse(node, f"domain {node.domain!r}")
            if node.op_type == "Constant":
                const[node.output[0]] = _constant_value(node)
                continue
            if node.op_type not in builders:
                _refuse(node, f"operator {node.op_type} (supported: {', '.join(SUPPORTED)})")
            fn = builders[node.op_type](node, _attrs(node), const)
            self._steps.append((fn, list(node.input), list(node.output)))
        self.input_names = [i.name for i in g.input if i.name not in const]
        self.output_names = [o.name for o in g.output]
        used = {n for _, ins, _ in self._steps for n in ins} | set(self.output_names)
        self._buffers_of = {}  # ONNX name -> buffer attribute (ONNX names may hold dots)
        for name, value in const.items():
            if name in used:
                attr = f"c{len(self._buffers_of)}"
                self.register_buffer(attr, torch.from_numpy(np.array(value)), persistent=True)
                self._buffers_of[name] = attr
        # when each intermediate value is last needed: freed after that step (GPU memory)
        self._last = {}
        for k, (_, ins, _) in enumerate(self._steps):
            for n in ins:
                self._last[n] = k

    def forward(self, *inputs):
        if len(inputs) != len(self.input_names):
            raise TypeError(f"the graph takes {len(self.input_names)} input(s) {self.input_names}, "
                            f"got {len(inputs)}")
        env = {name: getattr(self, attr) for name, attr in self._buffers_of.items()}
        env.update(zip(self.input_names, inputs))
        keep = set(self.output_names)
        for k, (fn, ins, outs) in enumerate(self._steps):
            res = fn(*[env[n] if n else None for n in ins])
            env[outs[0]] = res
            for n in ins:
                if n and self._last.get(n) == k and n not in keep and n not in self._buffers_of:
                    del env[n]
        return tuple(env[n] for n in self.output_names)
