"""An exact ONNX -> PyTorch interpreter for the operators of common image classifiers, so white-box
attacks get gradients through an ONNX file. Each node runs as the matching ``torch.nn.functional``
call on the file's own weights; the result is checked against ONNX Runtime by the caller
(:mod:`medshield.targets.local`). An operator outside :data:`OPS` raises :class:`UnsupportedOnnx`
and the target runs without gradients (transfer and label-only attacks only).

Reading an ONNX file parses a protobuf; no code from the file runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

Tensor = torch.Tensor
OpFn = Callable[[list[Any], dict[str, Any]], list[Any]]


class UnsupportedOnnx(ValueError):
    """The graph uses an operator or attribute this interpreter does not implement."""


def _pads(x: Tensor, pads: list[int] | None, value: float = 0.0) -> tuple[Tensor, list[int]]:
    """ONNX pads ``[b1, b2, ..., e1, e2, ...]``: symmetric ones go to the op, others are applied here."""
    nd = x.ndim - 2
    pads = list(pads or [0] * (2 * nd))
    begin, end = pads[:nd], pads[nd:]
    if begin == end:
        return x, begin
    torch_pads = [p for d in reversed(range(nd)) for p in (begin[d], end[d])]
    return F.pad(x, torch_pads, value=value), [0] * nd


def _no_auto_pad(a: dict[str, Any]) -> None:
    if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET", b"VALID", "VALID"):
        raise UnsupportedOnnx(f"auto_pad={a['auto_pad']!r}")


def _conv(i: list[Any], a: dict[str, Any]) -> list[Any]:
    _no_auto_pad(a)
    x, w = i[0], i[1]
    b = i[2] if len(i) > 2 else None
    x, pad = _pads(x, a.get("pads"))
    fn = {3: F.conv1d, 4: F.conv2d, 5: F.conv3d}[w.ndim]
    return [fn(x, w, b, stride=a.get("strides", 1), padding=pad, dilation=a.get("dilations", 1), groups=a.get("group", 1))]


def _pool(kind: str) -> OpFn:
    def op(i: list[Any], a: dict[str, Any]) -> list[Any]:
        _no_auto_pad(a)
        x = i[0]
        nd = x.ndim - 2
        k = a["kernel_shape"]
        x, pad = _pads(x, a.get("pads"), value=-math.inf if kind == "max" else 0.0)
        strides, ceil = a.get("strides", [1] * nd), bool(a.get("ceil_mode", 0))
        if kind == "max":
            fn = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[nd]
            return [fn(x, k, strides, pad, a.get("dilations", 1), ceil_mode=ceil)]
        fn = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[nd]
        return [fn(x, k, strides, pad, ceil_mode=ceil, count_include_pad=bool(a.get("count_include_pad", 0)))]

    return op


def _gemm(i: list[Any], a: dict[str, Any]) -> list[Any]:
    x, w = i[0], i[1]
    x = x.t() if a.get("transA", 0) else x
    w = w.t() if a.get("transB", 0) else w
    y = a.get("alpha", 1.0) * (x @ w)
    if len(i) > 2 and i[2] is not None:
        y = y + a.get("beta", 1.0) * i[2]
    return [y]


def _reshape(i: list[Any], a: dict[str, Any]) -> list[Any]:
    x, shape = i[0], [int(s) for s in i[1].tolist()]
    if not a.get("allowzero", 0):
        shape = [x.shape[d] if s == 0 else s for d, s in enumerate(shape)]
    return [x.reshape(shape)]


def _axes(i: list[Any], a: dict[str, Any]) -> list[int] | None:
    if "axes" in a:
        return list(a["axes"])
    return [int(v) for v in i[1].tolist()] if len(i) > 1 and i[1] is not None else None


def _unsqueeze(i: list[Any], a: dict[str, Any]) -> list[Any]:
    x = i[0]
    axes = _axes(i, a) or []
    rank = x.ndim + len(axes)
    for ax in sorted(d % rank for d in axes):
        x = x.unsqueeze(ax)
    return [x]


def _squeeze(i: list[Any], a: dict[str, Any]) -> list[Any]:
    axes = _axes(i, a)
    x = i[0]
    if axes is None:
        return [x.squeeze()]
    for ax in sorted((d % x.ndim for d in axes), reverse=True):
        x = x.squeeze(ax)
    return [x]


def _gather(i: list[Any], a: dict[str, Any]) -> list[Any]:
    x, idx = i[0], i[1].long()
    axis = a.get("axis", 0) % x.ndim
    idx = torch.where(idx < 0, idx + x.shape[axis], idx)
    out = x.index_select(axis, idx.reshape(-1).to(x.device))
    return [out.reshape([*x.shape[:axis], *idx.shape, *x.shape[axis + 1:]])]


def _div(i: list[Any], a: dict[str, Any]) -> list[Any]:
    x, y = i
    if not x.is_floating_point() and not y.is_floating_point():
        return [torch.div(x, y, rounding_mode="trunc")]
    return [x / y]


def _softmax(log: bool) -> OpFn:
    def op(i: list[Any], a: dict[str, Any]) -> list[Any]:
        fn = F.log_softmax if log else F.softmax
        return [fn(i[0], dim=a.get("axis", -1))]

    return op


def _clip(i: list[Any], a: dict[str, Any]) -> list[Any]:
    lo = i[1] if len(i) > 1 and i[1] is not None else a.get("min")
    hi = i[2] if len(i) > 2 and i[2] is not None else a.get("max")
    return [torch.clamp(i[0], min=lo, max=hi)]


def _reduce(fn: Callable[..., Tensor]) -> OpFn:
    def op(i: list[Any], a: dict[str, Any]) -> list[Any]:
        axes = _axes(i, a)
        dims = tuple(axes) if axes else tuple(range(i[0].ndim))
        return [fn(i[0], dim=dims, keepdim=bool(a.get("keepdims", 1)))]

    return op


ONNX_DTYPES = {1: torch.float32, 6: torch.int32, 7: torch.int64, 9: torch.bool, 10: torch.float16, 11: torch.float64}


def _shape(i: list[Any], a: dict[str, Any]) -> list[Any]:
    dims = list(i[0].shape)[a.get("start", 0):a.get("end", None)]
    return [torch.tensor(dims, dtype=torch.int64)]


def _unary(fn: Callable[[Tensor], Tensor]) -> OpFn:
    return lambda i, a: [fn(i[0])]


def _binary(fn: Callable[[Tensor, Tensor], Tensor]) -> OpFn:
    return lambda i, a: [fn(i[0], i[1])]


OPS: dict[str, OpFn] = {
    "Conv": _conv, "MaxPool": _pool("max"), "AveragePool": _pool("avg"),
    "GlobalAveragePool": lambda i, a: [i[0].mean(dim=tuple(range(2, i[0].ndim)), keepdim=True)],
    "GlobalMaxPool": lambda i, a: [i[0].amax(dim=tuple(range(2, i[0].ndim)), keepdim=True)],
    "BatchNormalization": lambda i, a: [F.batch_norm(i[0], i[3], i[4], i[1], i[2], False, 0.0, a.get("epsilon", 1e-5))],
    "Gemm": _gemm, "MatMul": _binary(torch.matmul),
    "Add": _binary(torch.add), "Sub": _binary(torch.sub), "Mul": _binary(torch.mul), "Div": _div,
    "Pow": _binary(torch.pow),
    "Relu": _unary(F.relu), "Sigmoid": _unary(torch.sigmoid), "Tanh": _unary(torch.tanh), "Exp": _unary(torch.exp),
    "Log": _unary(torch.log), "Sqrt": _unary(torch.sqrt), "Erf": _unary(torch.erf), "Neg": _unary(torch.neg),
    "Abs": _unary(torch.abs), "Identity": _unary(lambda x: x),
    "LeakyRelu": lambda i, a: [F.leaky_relu(i[0], a.get("alpha", 0.01))],
    "Elu": lambda i, a: [F.elu(i[0], a.get("alpha", 1.0))],
    "HardSigmoid": lambda i, a: [torch.clamp(a.get("alpha", 0.2) * i[0] + a.get("beta", 0.5), 0, 1)],
    "InstanceNormalization": lambda i, a: [F.instance_norm(i[0], weight=i[1], bias=i[2], eps=a.get("epsilon", 1e-5))],
    "PRelu": lambda i, a: [torch.where(i[0] >= 0, i[0], i[1] * i[0])],
    "Softmax": _softmax(False), "LogSoftmax": _softmax(True), "Clip": _clip,
    "Dropout": lambda i, a: [i[0]],
    "Flatten": lambda i, a: [i[0].reshape(math.prod(i[0].shape[:a.get("axis", 1)]), -1)],
    "Reshape": _reshape, "Transpose": lambda i, a: [i[0].permute(*a["perm"]) if "perm" in a else i[0].permute(*reversed(range(i[0].ndim)))],
    "Unsqueeze": _unsqueeze, "Squeeze": _squeeze, "Gather": _gather, "Shape": _shape,
    "Concat": lambda i, a: [torch.cat([t for t in i if t is not None], dim=a["axis"])],
    "ReduceMean": _reduce(torch.mean), "ReduceSum": _reduce(torch.sum), "ReduceMax": _reduce(torch.amax),
    "Cast": lambda i, a: [i[0].to(ONNX_DTYPES[a["to"]])],
}


def _attributes(node: Any) -> dict[str, Any]:
    from onnx import helper, numpy_helper

    out = {}
    for attr in node.attribute:
        value = helper.get_attribute_value(attr)
        if attr.type == attr.TENSOR:
            value = torch.from_numpy(numpy_helper.to_array(value).copy())
        out[attr.name] = value
    return out


class OnnxModule(nn.Module):
    """Runs an ONNX graph with PyTorch ops (differentiable w.r.t. the input); weights are frozen parameters."""

    def __init__(self, proto: Any) -> None:
        super().__init__()
        from onnx import numpy_helper

        graph = proto.graph
        unknown = sorted({n.op_type for n in graph.node if n.domain not in ("", "ai.onnx") or (n.op_type not in OPS and n.op_type != "Constant")})
        if unknown:
            raise UnsupportedOnnx(f"operators without a PyTorch equivalent here: {', '.join(unknown)}")
        self._names: dict[str, str] = {}
        for k, init in enumerate(graph.initializer):
            key = f"w{k}"
            value = torch.from_numpy(numpy_helper.to_array(init).copy())
            if value.is_floating_point():  # weights as (frozen) parameters, so .parameters() gives the device
                self.register_parameter(key, nn.Parameter(value, requires_grad=False))
            else:
                self.register_buffer(key, value)
            self._names[init.name] = key
        inputs = [v.name for v in graph.input if v.name not in self._names]
        if len(inputs) != 1:
            raise UnsupportedOnnx(f"expected one image input, the graph has {len(inputs)}: {inputs}")
        self.input_name = inputs[0]
        self.output_name = graph.output[0].name
        self.nodes = [(n.op_type, list(n.input), list(n.output), _attributes(n)) for n in graph.node]
        for op, _, _, attrs in self.nodes:
            if op == "Constant" and "value" not in attrs:
                raise UnsupportedOnnx(f"Constant node with attributes {sorted(attrs)}")

    def forward(self, x: Tensor) -> Tensor:
        env: dict[str, Any] = {name: getattr(self, key) for name, key in self._names.items()}
        env[self.input_name] = x
        for op, ins, outs, attrs in self.nodes:
            if op == "Constant":
                results = [attrs["value"].to(x.device)]
            else:
                args = [env[n] if n else None for n in ins]
                args = [a.to(x.device) if isinstance(a, Tensor) and a.device != x.device and a.ndim else a for a in args]
                results = OPS[op](args, attrs)
            for name, value in zip(outs, results):
                if name:
                    env[name] = value
        return env[self.output_name]
