"""ONNX Runtime fusions for the exported graphs: exact GELU and multi-head attention.

The torch exporter writes GELU as five elementwise nodes and each attention as a dozen reshapes,
transposes, slices and matmuls. ONNX Runtime's own optimiser does not recognise either pattern in
these graphs, and on a 2-core CPU at batch 1 every node costs a thread-pool round trip, so the text
tower and the decoder spent more time between kernels than in them. This pass rewrites them into
ONNX Runtime's contrib ops (domain com.microsoft):

    x * 0.5 * (1 + erf(x / sqrt 2))                      -> Gelu(x)   (ORT then folds the bias: BiasGelu)
    softmax(q k^T * s + bias) v, with head split/merge    -> MultiHeadAttention(q, k, v, attention_bias)

The result runs only on ONNX Runtime (CPU and CUDA), so bundles keep the portable graph for TensorRT
and other consumers and add the fused one beside it (manifest `ort_graphs`). `fuse_file` checks the
fused graph against the original on random inputs before it is written.

Patterns matched (anything else is left as it is):
  * BERT (MiniLM): q/k/v are three (B, L, W) tensors, each Reshape(B, L, h, d) + Transpose(0, 2, 1, 3)
    (k: Transpose(0, 2, 3, 1)); an additive mask broadcast as (B, 1, 1, L).
  * l2m Block (motion encoder/decoder): one packed (B, L, 3W) tensor, Reshape(B, L, 3, h, d),
    Transpose(2, 0, 3, 1, 4), then Slice + Squeeze per q/k/v; k transposed (0, 1, 3, 2); no mask.
Both end in MatMul(softmax, v) -> Transpose(0, 2, 1, 3) -> Reshape(B, L, W).
  * CLIP (open_clip's text transformer, torch nn.MultiheadAttention): sequence-first (L, B, W), one
    in-projection whose output is split by Gather, sqrt(scale) applied to q and to k^T, a causal mask
    (1, 1, L, L); rewritten batch-first around MultiHeadAttention (`_fuse_seq_first_attention`), which
    also drops the four transposes per layer that only served the sequence-first layout.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

log = logging.getLogger("l2m.export")
MS = "com.microsoft"


class _Graph:
    """Producer/consumer maps and constant lookup over a GraphProto, rebuilt after each rewrite."""

    def __init__(self, g: onnx.GraphProto):
        self.g = g
        self.refresh()

    def refresh(self) -> None:
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for n in self.g.node:
            for o in n.output:
                self.producer[o] = n
            for i in n.input:
                if i:
                    self.consumers[i].append(n)
        self.inits = {t.name: t for t in self.g.initializer}
        self.outputs = {o.name for o in self.g.output}

    def const(self, name: str) -> np.ndarray | None:
        if name in self.inits:
            return numpy_helper.to_array(self.inits[name])
        n = self.producer.get(name)
        if n is not None and n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    return numpy_helper.to_array(a.t)
        return None

    def scalar(self, name: str) -> float | None:
        c = self.const(name)
        return float(c.reshape(-1)[0]) if c is not None and c.size == 1 else None

    def prod(self, name: str, op: str) -> onnx.NodeProto | None:
        n = self.producer.get(name)
        return n if n is not None and n.op_type == op else None

    def only_consumer(self, name: str, op: str) -> onnx.NodeProto | None:
        c = self.consumers.get(name, [])
        if len(c) == 1 and c[0].op_type == op and name not in self.outputs:
            return c[0]
        return None

    def perm(self, n: onnx.NodeProto | None) -> list[int] | None:
        if n is None or n.op_type != "Transpose":
            return None
        for a in n.attribute:
            if a.name == "perm":
                return list(a.ints)
        return None


def _other(n: onnx.NodeProto, name: str) -> str | None:
    """The input of a two-input node that is not `name`."""
    if len(n.input) != 2 or name not in n.input:
        return None
    return n.input[1] if n.input[0] == name else n.input[0]


# ------------------------------------------------------------------------------------------------ GELU
def _fuse_gelu(G: _Graph) -> int:
    done = 0
    for erf in [n for n in G.g.node if n.op_type == "Erf"]:
        div = G.producer.get(erf.input[0])
        if div is None or div.op_type not in ("Div", "Mul"):
            continue
        x, c = div.input[0], G.scalar(div.input[1])
        want = np.sqrt(2.0) if div.op_type == "Div" else 1.0 / np.sqrt(2.0)
        if c is None or abs(c - want) > 1e-4:
            continue
        add = G.only_consumer(erf.output[0], "Add")
        if add is None or G.scalar(_other(add, erf.output[0]) or "") != 1.0:
            continue
        m1 = G.only_consumer(add.output[0], "Mul")
        if m1 is None:
            continue
        o1 = _other(m1, add.output[0])
        m2 = G.only_consumer(m1.output[0], "Mul")
        if m2 is None:
            continue
        o2 = _other(m2, m1.output[0])
        # x * 0.5 applied in either order: (0.5 * a) * x or (x * a) * 0.5
        if not ((G.scalar(o1 or "") == 0.5 and o2 == x) or (o1 == x and G.scalar(o2 or "") == 0.5)):
            continue
        if len(G.consumers[div.output[0]]) != 1:
            continue
        gelu = helper.make_node("Gelu", [x], [m2.output[0]], name=f"fused_gelu_{done}", domain=MS)
        idx = list(G.g.node).index(m2)
        G.g.node.insert(idx, gelu)
        for dead in (m2, m1, add, erf, div):
            G.g.node.remove(dead)
        G.refresh()
        done += 1
    return done


# ------------------------------------------------------------------------------------------- attention
def _head_shape(G: _Graph, reshape: onnx.NodeProto, tail: int) -> list[int] | None:
    """The last `tail` entries of a Reshape's target shape when they are constants (the batch and
    length entries are dynamic): from a constant shape or a Concat of pieces."""
    shp = G.const(reshape.input[1])
    if shp is not None:
        return [int(v) for v in shp.reshape(-1)[-tail:]]
    cat = G.prod(reshape.input[1], "Concat")
    if cat is None:
        return None
    vals: list[int] = []
    for i in reversed(cat.input):
        c = G.const(i)
        if c is None:
            break
        vals = [int(v) for v in c.reshape(-1)] + vals
        if len(vals) >= tail:
            return vals[-tail:]
    return None


def _bert_qkv(G: _Graph, t_name: str, perm: list[int]) -> tuple[str, int, int] | None:
    """(B, L, W) source, heads, head size of Transpose(perm)(Reshape(src, (B, L, h, d)))."""
    t = G.prod(t_name, "Transpose")
    if G.perm(t) != perm:
        return None
    r = G.prod(t.input[0], "Reshape")
    if r is None:
        return None
    hd = _head_shape(G, r, 2)
    return (r.input[0], hd[0], hd[1]) if hd else None


def _packed_part(G: _Graph, name: str) -> tuple[str, int, int, int] | None:
    """(packed (B, L, 3W) source, index 0/1/2, heads, head size) of Squeeze(Slice(Transpose(2, 0, 3, 1, 4)
    (Reshape(src, (B, L, 3, h, d))), i:i+1, axis 0), axis 0)."""
    sq = G.prod(name, "Squeeze")
    if sq is None:
        return None
    axes = G.const(sq.input[1]) if len(sq.input) > 1 else None
    if axes is None or [int(a) for a in axes.reshape(-1)] != [0]:
        return None
    sl = G.prod(sq.input[0], "Slice")
    if sl is None or len(sl.input) < 4:
        return None
    start, end, ax = (G.const(i) for i in sl.input[1:4])
    if start is None or end is None or ax is None or int(ax.reshape(-1)[0]) != 0:
        return None
    i = int(start.reshape(-1)[0])
    if int(end.reshape(-1)[0]) != i + 1 or i not in (0, 1, 2):
        return None
    t = G.prod(sl.input[0], "Transpose")
    if G.perm(t) != [2, 0, 3, 1, 4]:
        return None
    r = G.prod(t.input[0], "Reshape")
    if r is None:
        return None
    hd = _head_shape(G, r, 3)
    if hd is None or hd[0] != 3:
        return None
    return r.input[0], i, hd[1], hd[2]


class _Builder:
    """Collects new nodes and initializers for one rewrite pass."""

    def __init__(self, G: _Graph):
        self.G = G
        self.count = 0

    def const(self, name: str, value: np.ndarray) -> str:
        if name not in self.G.inits:
            t = numpy_helper.from_array(value, name)
            self.G.g.initializer.append(t)
            self.G.inits[name] = t
        return name

    def node(
        self,
        op: str,
        inputs: list[str],
        outputs: list[str] | None = None,
        domain: str = "",
        dtype: int | None = None,
        **kw,
    ):
        """A new node; `dtype` (TensorProto type) records its output's element type as value_info, which
        tools that run ONNX shape inference need past contrib ops (onnxruntime's quantizer)."""
        self.count += 1
        outs = outputs or [f"fuse_{op.lower()}_{self.count}"]
        if dtype is not None and outs[0] not in self.G.outputs:
            self.G.g.value_info.append(helper.make_tensor_value_info(outs[0], dtype, None))
        return helper.make_node(op, inputs, outs, name=f"fuse_{op}_{self.count}", domain=domain, **kw), outs[
            0
        ]


def _split_qkv(b: _Builder, packed: str, W: int, new: list) -> list[str]:
    """q, k, v as three Slices of a (.., 3W) tensor along its last axis; the nodes go to `new`."""
    srcs = []
    for i in range(3):
        st = b.const(f"fuse_slice_{i * W}", np.array([i * W], np.int64))
        en = b.const(f"fuse_slice_{(i + 1) * W}", np.array([(i + 1) * W], np.int64))
        ax = b.const("fuse_axis_last", np.array([-1], np.int64))
        n, out = b.node("Slice", [packed, st, en, ax], dtype=onnx.TensorProto.FLOAT)
        new.append(n)
        srcs.append(out)
    return srcs


def _replace(G: _Graph, old: onnx.NodeProto, new: list) -> None:
    """Put `new` where `old` stands (the last of them takes over its output), drop `old`; the nodes it
    leaves unread go in _prune."""
    idx = list(G.g.node).index(old)
    for n in reversed(new):
        G.g.node.insert(idx, n)
    G.g.node.remove(old)
    G.refresh()


def _head_merge(G: _Graph, sm: onnx.NodeProto, perm: list[int]) -> tuple | None:
    """(MatMul(softmax, v), Reshape) when the Softmax `sm` is read only by MatMul(sm, v), then
    Transpose(perm) and a Reshape that merge the heads back (the tail both attention patterns share)."""
    pv = G.only_consumer(sm.output[0], "MatMul")
    if pv is None or pv.input[0] != sm.output[0]:
        return None
    tr = G.only_consumer(pv.output[0], "Transpose")
    if G.perm(tr) != perm:
        return None
    merge = G.only_consumer(tr.output[0], "Reshape")
    return (pv, merge) if merge is not None else None


def _bias_of(G: _Graph, name: str, width: int) -> tuple[str, np.ndarray] | None:
    """(matmul output, bias) when `name` = Add(MatMul(..), constant bias of `width`) in either order."""
    add = G.prod(name, "Add")
    if add is None:
        return None
    for mm, c in ((add.input[0], add.input[1]), (add.input[1], add.input[0])):
        bias = G.const(c)
        if G.prod(mm, "MatMul") is not None and bias is not None and bias.shape == (width,):
            return mm, bias.astype(np.float32)
    return None


def _absorb_bias(G: _Graph, b: _Builder, srcs: list[str], W: int) -> list[str]:
    """[query, key, value, bias]: MultiHeadAttention adds a packed (3W) q/k/v bias itself, which saves
    an Add per projection. srcs are three (B, L, W) tensors, each Add(MatMul, bias) or not."""
    found = [_bias_of(G, s, W) for s in srcs]
    if not all(found):
        return srcs + [""]
    packed = np.concatenate([f[1] for f in found])
    return [f[0] for f in found] + [b.const(f"fuse_qkv_bias_{b.count}", packed)]


def _fuse_attention(G: _Graph) -> int:
    done = 0
    b = _Builder(G)
    expanded_bias: dict[str, str] = {}
    for sm in [n for n in G.g.node if n.op_type == "Softmax"]:
        axis = next((a.i for a in sm.attribute if a.name == "axis"), -1)
        if axis not in (-1, 3):
            continue
        pre = G.producer.get(sm.input[0])
        bias = None
        if pre is not None and pre.op_type == "Add":
            a0, a1 = (G.producer.get(i) for i in pre.input)
            if a0 is not None and a0.op_type in ("Mul", "Div"):
                scaled, bias = a0, pre.input[1]
            elif a1 is not None and a1.op_type in ("Mul", "Div"):
                scaled, bias = a1, pre.input[0]
            else:
                continue
        else:
            scaled = pre
        if scaled is None or scaled.op_type not in ("Mul", "Div"):
            continue
        mm_in = next((i for i in scaled.input if G.prod(i, "MatMul")), None)
        c = G.scalar(_other(scaled, mm_in) or "") if mm_in else None
        if c is None or (scaled.op_type == "Div" and scaled.input[0] != mm_in):
            continue
        scale = c if scaled.op_type == "Mul" else 1.0 / c
        qk = G.prod(mm_in, "MatMul")
        tail = _head_merge(G, sm, [0, 2, 1, 3])
        if tail is None:
            continue
        pv, merge = tail
        new = []
        # BERT layout
        q = _bert_qkv(G, qk.input[0], [0, 2, 1, 3])
        k = _bert_qkv(G, qk.input[1], [0, 2, 3, 1])
        v = _bert_qkv(G, pv.input[1], [0, 2, 1, 3])
        if q and k and v:
            heads, hs = q[1], q[2]
            if (k[1], k[2]) != (heads, hs) or (v[1], v[2]) != (heads, hs):
                continue
            srcs = [q[0], k[0], v[0]]
        else:
            kt = G.prod(qk.input[1], "Transpose")
            parts = [
                _packed_part(G, qk.input[0]),
                _packed_part(G, kt.input[0]) if G.perm(kt) == [0, 1, 3, 2] else None,
                _packed_part(G, pv.input[1]),
            ]
            if not all(parts) or len({p[0] for p in parts}) != 1 or [p[1] for p in parts] != [0, 1, 2]:
                continue
            packed, heads, hs = parts[0][0], parts[0][2], parts[0][3]
            W = heads * hs
            found = _bias_of(G, packed, 3 * W)
            if found is not None:  # slice the MatMul output; MultiHeadAttention adds the packed bias
                packed, packed_bias = found[0], b.const(f"fuse_qkv_bias_{b.count}", found[1])
            srcs = _split_qkv(b, packed, W, new)
        if q and k and v:
            inputs = _absorb_bias(G, b, srcs, heads * hs) + ["", ""]
        else:
            inputs = srcs + [packed_bias if found is not None else "", "", ""]
        # query, key, value, bias, key_padding_mask, attention_bias
        if bias is not None:
            if bias not in expanded_bias:
                # attention_bias must be (B or 1, h or 1, S, L): expand a (.., 1, L) mask over S
                one = b.const("fuse_one", np.array([1], np.int64))
                n1, s_dim = b.node("Shape", [srcs[0]], start=1, end=2)
                n2, shp = b.node("Concat", [one, one, s_dim, one], axis=0)
                n3, eb = b.node("Expand", [bias, shp])
                new += [n1, n2, n3]
                expanded_bias[bias] = eb
            inputs[5] = expanded_bias[bias]
        else:
            inputs = inputs[:4]
        mha, _ = b.node(
            "MultiHeadAttention", inputs, [merge.output[0]], domain=MS, num_heads=heads, scale=float(scale)
        )
        new.append(mha)
        _replace(G, merge, new)
        done += 1
    return done


def _back_to_gather(G: _Graph, name: str) -> onnx.NodeProto | None:
    """Walk back through Reshape / Transpose nodes (data input) to a Gather, if that is where it leads."""
    for _ in range(12):
        n = G.producer.get(name)
        if n is None:
            return None
        if n.op_type == "Gather":
            return n
        if n.op_type not in ("Reshape", "Transpose"):
            return None
        name = n.input[0]
    return None


def _scaled_operand(G: _Graph, name: str) -> tuple[str, float]:
    """(x, c) when `name` = Mul(x, scalar c) (either order), else (name, 1.0)."""
    n = G.prod(name, "Mul")
    if n is not None:
        for x, c in ((n.input[0], n.input[1]), (n.input[1], n.input[0])):
            v = G.scalar(c)
            if v is not None and G.const(x) is None:
                return x, v
    return name, 1.0


def _fuse_seq_first_attention(G: _Graph) -> int:
    """torch nn.MultiheadAttention as exported from open_clip's text transformer.

    x (B, L, W) -> Transpose(1, 0, 2) -> MatMul(in_proj) + bias -> Reshape(L, B, 3, W) -> Unsqueeze(0)
    -> Transpose(3, 1, 2, 0, 4) -> Squeeze -> Gather 0/1/2 = q, k, v (L, B, W), each reshaped to
    (B, h, L, d) (k transposed), q and k^T each multiplied by sqrt(scale), Add(q k^T, mask (1, 1, L, L)),
    Softmax, MatMul v -> Transpose(2, 0, 1, 3) -> Reshape(L B, W) -> Gemm(out_proj) -> Reshape(L, B, W)
    -> Transpose(1, 0, 2). Rewritten batch-first: MatMul(x, in_proj) -> Slice q/k/v ->
    MultiHeadAttention(bias = in_proj bias, attention_bias = mask) -> Reshape(B L, W) -> the same Gemm ->
    Reshape like x.
    """
    done = 0
    b = _Builder(G)
    for sm in [n for n in G.g.node if n.op_type == "Softmax"]:
        add = G.prod(sm.input[0], "Add")
        if add is None:
            continue
        qk = mask = None
        for a, c in ((add.input[0], add.input[1]), (add.input[1], add.input[0])):
            if G.prod(a, "MatMul") is not None:
                qk, mask = G.prod(a, "MatMul"), c
                break
        if qk is None:
            continue
        qsrc, c1 = _scaled_operand(G, qk.input[0])
        ksrc, c2 = _scaled_operand(G, qk.input[1])
        tail = _head_merge(G, sm, [2, 0, 1, 3])
        if tail is None:
            continue
        pv, r1 = tail
        gemm = G.only_consumer(r1.output[0], "Gemm")
        r2 = G.only_consumer(gemm.output[0], "Reshape") if gemm is not None else None
        tr2 = G.only_consumer(r2.output[0], "Transpose") if r2 is not None else None
        if G.perm(tr2) != [1, 0, 2]:
            continue
        gathers = [_back_to_gather(G, n) for n in (qsrc, ksrc, pv.input[1])]
        if not all(gathers) or len({g.input[0] for g in gathers}) != 1:
            continue
        if [G.scalar(g.input[1]) for g in gathers] != [0.0, 1.0, 2.0]:
            continue
        sq = G.prod(gathers[0].input[0], "Squeeze")
        t5 = G.prod(sq.input[0], "Transpose") if sq is not None else None
        if G.perm(t5) != [3, 1, 2, 0, 4]:
            continue
        un = G.prod(t5.input[0], "Unsqueeze")
        rs = G.prod(un.input[0], "Reshape") if un is not None else None
        inproj = G.prod(rs.input[0], "Add") if rs is not None else None
        if inproj is None:
            continue
        mm = next((G.prod(i, "MatMul") for i in inproj.input if G.prod(i, "MatMul")), None)
        if mm is None:
            continue
        w_in = G.const(mm.input[1])
        if w_in is None or w_in.ndim != 2 or w_in.shape[1] != 3 * w_in.shape[0]:
            continue
        W = int(w_in.shape[0])
        found = _bias_of(G, inproj.output[0], 3 * W)
        t0 = G.prod(mm.input[0], "Transpose")
        if found is None or G.perm(t0) != [1, 0, 2]:
            continue
        x = t0.input[0]
        # head size from the reshape of q to (L, B h, d)
        q_reshape = G.only_consumer(gathers[0].output[0], "Reshape")
        d = _head_shape(G, q_reshape, 1) if q_reshape is not None else None
        if not d or W % d[0]:
            continue
        heads = W // d[0]
        m = G.const(mask)
        if m is not None and m.ndim != 4:
            continue
        new = []
        n, packed = b.node("MatMul", [x, mm.input[1]], dtype=onnx.TensorProto.FLOAT)
        new.append(n)
        srcs = _split_qkv(b, packed, W, new)
        bias = b.const(f"fuse_qkv_bias_{b.count}", found[1])
        n, att = b.node(
            "MultiHeadAttention",
            srcs + [bias, "", mask],
            domain=MS,
            dtype=onnx.TensorProto.FLOAT,
            num_heads=heads,
            scale=float(c1 * c2),
        )
        new.append(n)
        flat = b.const(f"fuse_flat_{W}", np.array([-1, W], np.int64))
        n, att2 = b.node("Reshape", [att, flat], dtype=onnx.TensorProto.FLOAT)
        new.append(n)
        n, proj = b.node("Gemm", [att2] + list(gemm.input[1:]), dtype=onnx.TensorProto.FLOAT)
        n.attribute.extend(gemm.attribute)
        new.append(n)
        n, shp = b.node("Shape", [x], dtype=onnx.TensorProto.INT64)
        new.append(n)
        n, _ = b.node("Reshape", [proj, shp], [tr2.output[0]])
        new.append(n)
        _replace(G, tr2, new)
        done += 1
    return done


# -------------------------------------------------------------------------------------------- clean-up
def _prune(G: _Graph) -> None:
    """Drop nodes whose outputs nobody reads, then unused initializers; order nodes topologically."""
    while True:
        G.refresh()
        dead = [n for n in G.g.node if not any(G.consumers.get(o) or o in G.outputs for o in n.output if o)]
        if not dead:
            break
        for n in dead:
            G.g.node.remove(n)
    used = {i for n in G.g.node for i in n.input}
    keep = [t for t in G.g.initializer if t.name in used]
    del G.g.initializer[:]
    G.g.initializer.extend(keep)
    made = {o for n in G.g.node for o in n.output}
    vi = [v for v in G.g.value_info if v.name in made]
    del G.g.value_info[:]
    G.g.value_info.extend(vi)
    known = {i.name for i in G.g.input} | {t.name for t in G.g.initializer} | {""}
    order, pending = [], list(G.g.node)
    while pending:
        rest = []
        for n in pending:
            if all(i in known for i in n.input):
                order.append(n)
                known.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            raise RuntimeError("fused graph has a cycle or a missing input")
        pending = rest
    del G.g.node[:]
    G.g.node.extend(order)


def fuse(model: onnx.ModelProto) -> dict[str, int]:
    """Rewrite `model` in place; returns {"gelu": n, "attention": n} fused."""
    G = _Graph(model.graph)
    counts = {"gelu": _fuse_gelu(G), "attention": _fuse_attention(G) + _fuse_seq_first_attention(G)}
    _prune(G)
    if sum(counts.values()) and not any(o.domain == MS for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS, 1))
    return counts


def _random_feeds(sess) -> dict[str, np.ndarray]:
    """Inputs for a parity check of our graphs: batch 2, 7 tokens / 9 frames / 5 points."""
    rng = np.random.default_rng(0)
    feeds = {}
    for i in sess.get_inputs():
        if i.name == "input_ids":
            feeds[i.name] = rng.integers(1000, 2000, (2, 7)).astype(np.int64)
        elif i.name == "attention_mask":
            m = np.ones((2, 7), np.int64)
            m[1, 5:] = 0  # one padded row exercises the mask
            feeds[i.name] = m
        elif i.name == "times":
            feeds[i.name] = np.linspace(0, 1, 9, dtype=np.float32)
        elif i.name == "embedding":
            e = rng.standard_normal((2, i.shape[1])).astype(np.float32)
            feeds[i.name] = e / np.linalg.norm(e, axis=1, keepdims=True)
        elif i.name == "initial_points":
            feeds[i.name] = rng.uniform(-0.5, 0.5, (2, 5, 2)).astype(np.float32)
        elif i.name == "trajectory":
            feeds[i.name] = rng.uniform(-0.5, 0.5, (2, 9, 5, 2)).astype(np.float32)
        else:
            raise ValueError(f"no test input for graph input {i.name!r}")
    return feeds


def fuse_file(src: str | Path, dst: str | Path, tol: float = 1e-4) -> dict[str, int]:
    """Fuse the self-contained graph `src` into `dst` and check that ONNX Runtime gives the same outputs
    for both (max |difference| <= tol on random inputs); raises RuntimeError otherwise."""
    import onnxruntime as ort

    src, dst = Path(src), Path(dst)
    m = onnx.load(str(src))
    counts = fuse(m)
    onnx.save(m, str(dst))
    so = ort.SessionOptions()
    so.log_severity_level = 3
    a = ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])
    b = ort.InferenceSession(str(dst), so, providers=["CPUExecutionProvider"])
    feeds = _random_feeds(a)
    for x, y, o in zip(a.run(None, feeds), b.run(None, feeds), a.get_outputs()):
        err = float(np.abs(x - y).max())
        if not err <= tol:
            raise RuntimeError(f"{dst.name}: fused graph differs from {src.name} on {o.name} by {err:.3g}")
    log.info(
        "%s: fused %s (%d -> %d nodes)",
        dst.name,
        counts,
        len(onnx.load(str(src)).graph.node),
        len(m.graph.node),
    )
    return counts
