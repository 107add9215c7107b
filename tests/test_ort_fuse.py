"""export/ort_fuse.py: the GELU and attention fusions behind the bundles' *.ort.onnx graphs.

The fused graphs' numbers are checked against PyTorch by tests/test_onnx_parity.py (the SDK runs the
fused graphs); here: what gets fused, that near-misses are left alone, that the export refuses a fused
graph that computes something else, and that the SDK runs the fused graphs while TensorRT keeps the
portable ones.
"""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from export import ort_fuse


def _ops(path) -> Counter:
    return Counter(n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node)


def _gelu_graph(half: float, order: str) -> onnx.ModelProto:
    """y = gelu(x) spelled as the torch exporter does, with the 0.5 applied in either order."""
    c = {
        "sqrt2": np.array(np.sqrt(2.0), np.float32),
        "one": np.array(1.0, np.float32),
        "half": np.array(half, np.float32),
    }
    nodes = [
        helper.make_node("Div", ["x", "sqrt2"], ["d"]),
        helper.make_node("Erf", ["d"], ["e"]),
        helper.make_node("Add", ["e", "one"], ["a"]),
    ]
    if order == "half-first":
        nodes += [helper.make_node("Mul", ["half", "a"], ["m"]), helper.make_node("Mul", ["x", "m"], ["y"])]
    else:
        nodes += [helper.make_node("Mul", ["a", "x"], ["m"]), helper.make_node("Mul", ["m", "half"], ["y"])]
    g = helper.make_graph(
        nodes,
        "gelu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8])],
        [numpy_helper.from_array(v, k) for k, v in c.items()],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, {"x": x})[0]


@pytest.mark.parametrize("order", ["half-first", "x-first"])
def test_gelu_pattern_fused_and_exact(order, rng):
    m = _gelu_graph(0.5, order)
    x = rng.standard_normal((5, 8)).astype(np.float32) * 3
    want = _run(m, x)
    counts = ort_fuse.fuse(m)
    assert counts == {"gelu": 1, "attention": 0}
    assert [(n.op_type, n.domain) for n in m.graph.node] == [("Gelu", "com.microsoft")]
    assert not m.graph.initializer, "the pattern's constants should be dropped with it"
    np.testing.assert_allclose(_run(m, x), want, atol=1e-6)


def test_near_miss_is_left_alone(rng):
    """0.49 instead of 0.5 is not GELU: the graph must come out unchanged."""
    m = _gelu_graph(0.49, "half-first")
    before = m.SerializeToString()
    assert ort_fuse.fuse(m) == {"gelu": 0, "attention": 0}
    assert m.SerializeToString() == before


def test_bundle_graphs_fused(tiny_minilm, tiny_clip, default_model):
    """The exporter writes both graph sets; the ORT graphs carry the fused ops and far fewer nodes
    (CLIP's text tower: torch nn.MultiheadAttention, sequence-first, matched by its own pattern). Every
    attention softmax is fused; the one softmax that is not attention (the text graph's attention pooling
    over tokens, in a model whose text_pool is "attention") stays as it is."""
    for root in (tiny_minilm.bundle, tiny_clip.bundle, default_model.bundle.path):
        man = json.loads((root / "manifest.json").read_text())
        assert set(man["ort_graphs"]) == {"text", "motion_encoder", "motion_decoder"}
        pooled = man["model"].get("text_pool", "mean") == "attention"
        for role, rel in man["ort_graphs"].items():
            fused, plain = _ops(root / rel), _ops(root / man["graphs"][role])
            pool_softmax = int(pooled and role == "text")
            assert fused["MultiHeadAttention"] == plain["Softmax"] - pool_softmax > 0, (role, fused)
            assert fused["Gelu"] == plain["Erf"] > 0, (role, fused)
            assert fused["Softmax"] == pool_softmax and fused["Erf"] == 0, (role, fused)
            assert sum(fused.values()) < 0.8 * sum(plain.values()), role
            assert not any(
                n.domain
                for n in onnx.load(str(root / man["graphs"][role]), load_external_data=False).graph.node
            ), "the portable graph must stay standard ONNX (TensorRT reads it)"


def test_sdk_runs_the_fused_graphs(default_model):
    for role, s in default_model._sessions.items():
        assert s.path.name.endswith(".ort.onnx"), (role, s.path)


def test_bundle_without_fused_graphs_still_loads(tiny_minilm, tmp_path):
    """Bundles written before the fused graphs existed (no ort_graphs) run their portable graphs."""
    import shutil

    import l2m_sdk

    b = tmp_path / "old"
    shutil.copytree(tiny_minilm.bundle, b)
    mpath = b / "manifest.json"
    man = json.loads(mpath.read_text())
    for rel in man.pop("ort_graphs").values():
        (b / rel).unlink()
        man["files"].pop(rel)
        man["external_initializers"].pop(rel, None)
    mpath.write_text(json.dumps(man))
    with (
        l2m_sdk.load(tiny_minilm.bundle, backend="ort", device="cpu") as new,
        l2m_sdk.load(b, backend="ort", device="cpu") as old,
    ):
        assert all(not s.path.name.endswith(".ort.onnx") for s in old._sessions.values())
        texts = ["a ball rolling left", "a fan spinning clockwise quickly"]
        np.testing.assert_allclose(old.generate(texts), new.generate(texts), atol=1e-5)


def test_fuse_file_refuses_a_wrong_fusion(default_model, tmp_path, monkeypatch):
    """The export-time check: a fused graph that computes something else is an error, not a bundle.
    (The trained decoder: a 2-step tiny model's attention is nearly uniform at any scale.)"""
    src = tmp_path / "dec.onnx"
    m = onnx.load(str(default_model.bundle.file("motion_decoder")))  # links resolve beside the bundle
    onnx.save(m, str(src))
    real = ort_fuse._fuse_attention

    def off_by_scale(G):
        n = real(G)
        for node in G.g.node:
            for a in node.attribute:
                if node.op_type == "MultiHeadAttention" and a.name == "scale":
                    a.f *= 1.5
        return n

    monkeypatch.setattr(ort_fuse, "_fuse_attention", off_by_scale)
    with pytest.raises(RuntimeError, match="fused graph differs"):
        ort_fuse.fuse_file(src, tmp_path / "dec.ort.onnx")


def _clip_in_proj(path, rng: np.random.Generator, logit_std: float = 3.0) -> int:
    """Give a CLIP text graph's attention in-projections fresh random weights whose attention logits have
    a standard deviation of about `logit_std` (layer-normed inputs of width w: weight std sqrt(s / w)).
    A random-init tower's logits are small and the attention near uniform; far larger ones saturate the
    softmax into one-hot. Either extreme would hide a wrong scale or mask. Returns the count replaced."""
    m = onnx.load(str(path))
    inits = {t.name: t for t in m.graph.initializer}
    hit = 0
    for n in m.graph.node:
        t = inits.get(n.input[1]) if n.op_type == "MatMul" and len(n.input) > 1 else None
        if t is not None and len(t.dims) == 2 and t.dims[1] == 3 * t.dims[0]:
            w = rng.normal(0.0, np.sqrt(logit_std / t.dims[0]), tuple(t.dims)).astype(np.float32)
            t.CopyFrom(numpy_helper.from_array(w, t.name))
            hit += 1
    onnx.save(m, str(path))
    return hit


def test_clip_attention_fusion_exact_and_checked(tiny_clip, tmp_path, monkeypatch):
    """CLIP text attention (causal mask, scale split over q and k) fused into MultiHeadAttention gives
    the unfused graph's outputs on attention that is neither uniform nor one-hot, with padded rows; a
    fusion with the wrong scale or without the causal mask is refused by the export check."""
    man = json.loads((tiny_clip.bundle / "manifest.json").read_text())
    src = tmp_path / "text.onnx"
    onnx.save(onnx.load(str(tiny_clip.bundle / man["graphs"]["text"])), str(src))
    assert _clip_in_proj(src, np.random.default_rng()) > 0
    counts = ort_fuse.fuse_file(src, tmp_path / "text.ort.onnx")  # raises if outputs differ > 1e-4
    assert counts["attention"] == _ops(src)["Softmax"] > 0
    a = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"])
    b = ort.InferenceSession(str(tmp_path / "text.ort.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng()
    ids = rng.integers(1, 400, (3, 9)).astype(np.int64)
    mask = np.ones_like(ids)
    mask[1, 6:] = 0
    feeds = {"input_ids": ids, "attention_mask": mask}
    want, got = a.run(None, feeds)[0], b.run(None, feeds)[0]
    assert np.abs(want - got).max() < 1e-4
    # the fused graph types its new tensors, so onnxruntime's dynamic quantizer (which runs ONNX shape
    # inference, blind past contrib ops) accepts it: the benchmark's int8 CLIP bundles are built so
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(tmp_path / "text.ort.onnx", tmp_path / "text.int8.onnx", weight_type=QuantType.QInt8)
    q = ort.InferenceSession(str(tmp_path / "text.int8.onnx"), providers=["CPUExecutionProvider"])
    assert _ops(tmp_path / "text.int8.onnx")["MultiHeadAttention"] == counts["attention"]
    got_q = q.run(None, feeds)[0]
    cos = (got_q * want).sum(-1) / np.linalg.norm(got_q, axis=-1) / np.linalg.norm(want, axis=-1)
    assert cos.min() > 0.9, cos
    real = ort_fuse._fuse_seq_first_attention

    def broken(kind):
        def f(G):
            n = real(G)
            for node in G.g.node:
                if node.op_type != "MultiHeadAttention":
                    continue
                if kind == "scale":
                    next(x for x in node.attribute if x.name == "scale").f *= 2.0
                else:
                    node.input[5] = ""
            return n

        return f

    for kind in ("scale", "mask"):
        monkeypatch.setattr(ort_fuse, "_fuse_seq_first_attention", broken(kind))
        with pytest.raises(RuntimeError, match="fused graph differs"):
            ort_fuse.fuse_file(src, tmp_path / f"bad-{kind}.ort.onnx")
