"""fp16 conversion of an ONNX graph for strongly typed TensorRT 11 engines (and ONNX Runtime).

TensorRT 11 takes precision from the graph itself, so an fp16 engine starts from an fp16 ONNX graph.
Rule, decided per node in topological order:
  * MatMul / Gemm / Conv / Einsum run in fp16 (the FLOPs and the weight bytes);
  * a cheap fp16-safe op (Add, Mul, Gelu, Reshape, Transpose, Concat, ...) runs in fp16 when one of
    its float inputs already comes from an fp16 node, so the fp16 region follows the activations;
  * everything else stays fp32: Softmax, LayerNormalization and every op of a decomposed norm
    (ReduceMean, Pow, Sqrt, Div: a variance of activations ~300 is 9e4, past fp16's 65504), the final
    L2 normalisation (ReduceL2 -> Clip -> Div), time features (Sin/Cos of arguments up to ~600 rad
    would lose ~0.3 rad in fp16), feature preprocessing before the first matmul, and the node that
    writes each graph output. Graph inputs and outputs keep their fp32 types.
Casts are inserted where a tensor crosses between the regions (one per tensor and direction); float
initializers and Constant nodes read only by fp16 nodes are stored in fp16 (clamped to +-65504), the
others stay fp32 and fp16 readers get an fp16 copy.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

log = logging.getLogger("l2m.export")

FP16_MAX = 65504.0
HEAVY_OPS = frozenset({"MatMul", "Gemm", "Conv", "ConvTranspose", "Einsum"})
# Ops whose every float input is of the one type T, so a Cast on each float input is all they need.
FOLLOW_OPS = frozenset(
    {
        "Add",
        "Sub",
        "Mul",
        "Relu",
        "Gelu",
        "Erf",
        "Tanh",
        "Sigmoid",
        "Neg",
        "Abs",
        "Max",
        "Min",
        "Where",
        "Clip",
        "Transpose",
        "Reshape",
        "Squeeze",
        "Unsqueeze",
        "Concat",
        "Slice",
        "Gather",
        "GatherElements",
        "Split",
        "Expand",
        "Flatten",
        "Identity",
        "Tile",
        "ReduceMax",
        "ReduceMin",
        "LeakyRelu",
        "HardSigmoid",
    }
)
KEEP_FP32_OPS = frozenset(
    {
        "Softmax",
        "LogSoftmax",
        "LayerNormalization",
        "GroupNormalization",
        "InstanceNormalization",
        "BatchNormalization",
        "ReduceMean",
        "ReduceSum",
        "ReduceSumSquare",
        "ReduceL2",
        "ReduceL1",
        "ReduceProd",
        "Pow",
        "Sqrt",
        "Reciprocal",
        "Div",
        "Exp",
        "Log",
        "Sin",
        "Cos",
        "Range",
        "CumSum",
        "Resize",
    }
)


def convert_to_fp16(model: onnx.ModelProto, keep_fp32_nodes: tuple[str, ...] = ()) -> onnx.ModelProto:
    """Return an fp16 copy of `model` (see module doc). Weights must be loaded (no external data).

    keep_fp32_nodes: extra node names to keep in fp32.
    """
    for t in model.graph.initializer:
        if t.data_location == TensorProto.EXTERNAL:
            raise ValueError(
                f"initializer {t.name!r} is external data; load the weights first "
                "(export.trt_build.materialize_onnx)"
            )
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    types = _tensor_types(m)
    inits = {t.name: t for t in g.initializer}
    const_nodes = {n.output[0]: n for n in g.node if n.op_type == "Constant"}
    constant = set(inits) | set(const_nodes)
    outputs = {o.name for o in g.output}
    keep = set(keep_fp32_nodes)

    def is_float(name: str) -> bool:
        return bool(name) and types.get(name) == TensorProto.FLOAT

    # 1. precision of every node
    fp16_tensors: set[str] = set()
    half: list[bool] = []
    for n in g.node:
        floats_in = [x for x in n.input if is_float(x)]
        unknown = any(x and x not in types for x in n.input)
        div_by_const = n.op_type == "Div" and len(n.input) > 1 and n.input[1] in constant
        h = False
        if n.op_type == "Constant" or n.name in keep or unknown:
            h = False
        elif n.op_type in HEAVY_OPS:
            h = True
        elif n.op_type in FOLLOW_OPS or div_by_const:
            # division by a constant (GELU's x / sqrt(2), attention scales) is as safe as a Mul
            h = any(x in fp16_tensors for x in floats_in)
        elif n.op_type in KEEP_FP32_OPS:
            h = False
        if h and any(o in outputs for o in n.output):
            h = False  # the node that writes a graph output keeps it fp32
        if h and any(n2.type == helper.AttributeProto.GRAPH for n2 in n.attribute):
            h = False
        half.append(h)
        if h:
            fp16_tensors.update(o for o in n.output if is_float(o))

    # 2. who reads each float constant, and in which precision
    readers: dict[str, set[bool]] = {}
    for n, h in zip(g.node, half):
        for x in n.input:
            if x in constant and is_float(x):
                readers.setdefault(x, set()).add(h)
    for o in g.output:
        if o.name in constant:
            readers.setdefault(o.name, set()).add(False)

    new_inits: list[TensorProto] = []
    as_fp16: dict[str, str] = {}  # fp32 constant -> name of its fp16 version
    for name, rs in readers.items():
        if True not in rs:
            continue
        if name in inits:
            arr = numpy_helper.to_array(inits[name])
            if rs == {True}:
                inits[name].CopyFrom(numpy_helper.from_array(_to_fp16(arr), name))
                as_fp16[name] = name
            else:
                new_inits.append(numpy_helper.from_array(_to_fp16(arr), name + "__fp16"))
                as_fp16[name] = name + "__fp16"
        else:
            node = const_nodes[name]
            arr = numpy_helper.to_array(node.attribute[0].t) if node.attribute[0].name == "value" else None
            if arr is None:
                continue  # value_float(s) forms: left to a Cast below
            if rs == {True}:
                node.attribute[0].t.CopyFrom(numpy_helper.from_array(_to_fp16(arr), name))
                as_fp16[name] = name
            else:
                new_inits.append(numpy_helper.from_array(_to_fp16(arr), name + "__fp16"))
                as_fp16[name] = name + "__fp16"
    fp16_tensors |= {v for v in as_fp16.values()}

    # 3. rewire with casts at region boundaries
    casts: dict[tuple[str, bool], str] = {}
    new_nodes: list[onnx.NodeProto] = []

    def cast(name: str, to_half: bool) -> str:
        k = (name, to_half)
        if k not in casts:
            out = f"{name}__to_{'fp16' if to_half else 'fp32'}"
            to = TensorProto.FLOAT16 if to_half else TensorProto.FLOAT
            new_nodes.append(
                helper.make_node("Cast", [name], [out], to=to, name=f"fp16cast_{len(casts)}_{out}")
            )
            casts[k] = out
        return casts[k]

    for n, h in zip(g.node, half):
        for i, x in enumerate(n.input):
            if not is_float(x):
                continue
            src_half = x in fp16_tensors or as_fp16.get(x) == x
            if h and x in as_fp16:
                n.input[i] = as_fp16[x]
            elif h and not src_half:
                n.input[i] = cast(x, True)
            elif not h and src_half:
                n.input[i] = cast(x, False)
        new_nodes.append(n)
    del g.node[:]
    g.node.extend(new_nodes)
    g.initializer.extend(new_inits)

    # 4. intermediate types changed: rewrite value_info so checkers and TensorRT see the real types
    for vi in g.value_info:
        if vi.name in fp16_tensors and vi.type.tensor_type.elem_type == TensorProto.FLOAT:
            vi.type.tensor_type.elem_type = TensorProto.FLOAT16
    n_half = sum(half)
    log.info(
        "fp16: %d/%d nodes in fp16, %d casts, %d fp16 constants", n_half, len(half), len(casts), len(as_fp16)
    )
    return m


def node_precisions(model: onnx.ModelProto) -> dict[str, str]:
    """{node name: "fp16" | "fp32" | "-"} by the element type of each node's first float input/output;
    for tests and reports."""
    types = _tensor_types(model)
    out = {}
    for n in model.graph.node:
        ts = [types.get(x) for x in list(n.input) + list(n.output) if x]
        if TensorProto.FLOAT16 in ts and n.op_type != "Cast":
            out[n.name] = "fp16"
        elif TensorProto.FLOAT in ts:
            out[n.name] = "fp32"
        else:
            out[n.name] = "-"
    return out


def _to_fp16(arr: np.ndarray) -> np.ndarray:
    """Clamp to fp16's range instead of overflowing to inf (masks use -1e4 .. -3.4e38 fills)."""
    return np.clip(arr, -FP16_MAX, FP16_MAX).astype(np.float16)


def _tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor: graph IO, initializers, Constant nodes, plus ONNX shape inference."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=False)
    except Exception as e:  # custom ops (l2m::TrajRaster) and exotic graphs: fall back to what is declared
        log.warning("fp16: shape inference failed (%s); using declared types only", e)
        inferred = model
    g = inferred.graph
    types: dict[str, int] = {}
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
            types[vi.name] = vi.type.tensor_type.elem_type
    for t in g.initializer:
        types[t.name] = t.data_type
    for n in g.node:
        if n.op_type == "Constant" and n.attribute:
            a = n.attribute[0]
            if a.name == "value":
                types[n.output[0]] = a.t.data_type
            elif a.name in ("value_float", "value_floats"):
                types[n.output[0]] = TensorProto.FLOAT
            elif a.name in ("value_int", "value_ints"):
                types[n.output[0]] = TensorProto.INT64
    return types
