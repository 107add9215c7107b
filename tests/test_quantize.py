"""export/quantize.py: activation smoothing keeps the fp32 function and makes int8 quantization better
on activations with outlier channels (the case it exists for)."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from export.quantize import activation_ranges, calibration_prompts, smooth  # noqa: E402

K, H, OUT = 32, 64, 16
OUTLIERS = (3, 17)  # input channels 40x larger than the rest, as after a transformer's LayerNorm


def _graph(path, rng):
    """y = relu(x @ W1) @ W3 + x @ W2: W1 and W2 share their input (one smoothing group), W3 another."""
    w1 = rng.normal(0, 0.2, (K, H)).astype(np.float32)
    w2 = rng.normal(0, 0.2, (K, OUT)).astype(np.float32)
    w3 = rng.normal(0, 0.2, (H, OUT)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("MatMul", ["r", "w3"], ["a"]),
        helper.make_node("MatMul", ["x", "w2"], ["b"]),
        helper.make_node("Add", ["a", "b"], ["y"]),
    ]
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "S", K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "S", OUT])],
        [numpy_helper.from_array(w, n) for w, n in ((w1, "w1"), (w2, "w2"), (w3, "w3"))],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(path))


def _feeds(rng, n):
    out = []
    for _ in range(n):
        x = rng.normal(0, 1, (1, int(rng.integers(4, 20)), K)).astype(np.float32)
        x[..., list(OUTLIERS)] *= 40.0
        out.append({"x": x})
    return out


def _run(path, feeds):
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return [s.run(None, f)[0] for f in feeds]


def test_smoothing_is_exact_in_fp32_and_flattens_activations(tmp_path):
    rng = np.random.default_rng()
    src, dst = tmp_path / "g.onnx", tmp_path / "s.onnx"
    _graph(src, rng)
    calib = _feeds(rng, 16)
    diff = smooth(src, dst, calib, alpha=1.0)
    fresh = _feeds(rng, 8)
    want, got = _run(src, fresh), _run(dst, fresh)
    worst = max(float(np.abs(a - b).max() / np.abs(a).max()) for a, b in zip(want, got))
    assert diff < 1e-5 and worst < 1e-5, (diff, worst)  # relative to the largest |output|
    # alpha = 1 divides each channel by its calibration range: every smoothed channel then peaks at 1
    ranges = activation_ranges(dst, ["x::smoothed", "r::smoothed"], calib)
    for name, r in ranges.items():
        np.testing.assert_allclose(r, 1.0, rtol=1e-5, err_msg=name)
    # one Mul per group, in front of both MatMuls that share x
    m = onnx.load(str(dst))
    muls = [n for n in m.graph.node if n.op_type == "Mul"]
    assert sorted(n.input[0] for n in muls) == ["r", "x"]
    assert sorted(n.input[0] for n in m.graph.node if n.op_type == "MatMul") == [
        "r::smoothed",
        "x::smoothed",
        "x::smoothed",
    ]


def test_smoothing_reduces_int8_error_on_outlier_channels(tmp_path, monkeypatch):
    from onnxruntime.quantization import quantize_dynamic

    rng = np.random.default_rng()
    src, sm = tmp_path / "g.onnx", tmp_path / "s.onnx"
    _graph(src, rng)
    smooth(src, sm, _feeds(rng, 16))  # default alpha
    monkeypatch.chdir(tmp_path)  # the quantizer writes temporary files to the working directory
    errs = {}
    fresh = _feeds(rng, 8)
    want = _run(src, fresh)
    for name, path in (("plain", src), ("smoothed", sm)):
        q = tmp_path / f"q_{name}.onnx"
        quantize_dynamic(path, q, per_channel=True, reduce_range=True)
        errs[name] = np.mean([np.abs(a - b).mean() / np.abs(a).mean() for a, b in zip(want, _run(q, fresh))])
    # measured over 20 draws: smoothed / plain error 0.48-0.70
    assert errs["smoothed"] < 0.85 * errs["plain"], errs


def test_bad_alpha_and_graph_without_weights(tmp_path):
    rng = np.random.default_rng()
    src = tmp_path / "g.onnx"
    _graph(src, rng)
    with pytest.raises(ValueError, match="alpha"):
        smooth(src, tmp_path / "s.onnx", _feeds(rng, 2), alpha=1.5)
    g = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, K])],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(tmp_path / "r.onnx"))
    with pytest.raises(ValueError, match="no MatMul"):
        smooth(tmp_path / "r.onnx", tmp_path / "s2.onnx", [{"x": np.ones((1, K), np.float32)}])


def test_calibration_prompts_are_distinct_and_disjoint_from_the_gate():
    from benchmarks.bench_setup import prompts

    c = calibration_prompts()
    assert len(c) == len(set(c)) == 48
    assert not set(c) & set(prompts(64))
