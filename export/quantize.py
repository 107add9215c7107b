"""int8 text towers for ONNX Runtime CPU: activation smoothing and the int8 text graph of a bundle.

    python -m export.quantize BUNDLE_DIR     # add the int8 text graph to an exported bundle

Dynamic int8 quantization gives each activation matrix one scale per call. Transformer activations put
most of their range in a few channels (MiniLM's post-GELU FFN inputs, the LayerNorm outputs), so that
one scale leaves the other channels a handful of levels. Smoothing (SmoothQuant, Xiao et al. 2023,
arXiv 2211.10438) moves that range into the weights, which are quantized per output column and absorb
it well. For every group of MatMuls that share an input x (q/k/v share one), with constant weights W:

    x @ W = (x / s) @ (diag(s) W),    s_j = max|x_j|^alpha / max|W_j,:|^(1 - alpha)

max|x_j| is measured on calibration prompts; x / s is one elementwise node in front of the group (12 x
384 at a 12-token prompt: nothing beside the MatMul) and diag(s) goes into the weights, so the fp32
function is unchanged (`smooth` checks it).

Weights are 7-bit (|q| <= 63): onnxruntime's u8 x s8 kernel on AVX2 without VNNI adds pairs of 8-bit
products in 16 bits with saturation, and 8-bit weights saturate it. Measured on MiniLM's real weights
and the default model (64 gate prompts; held-out evaluation through l2m_sdk, fp32: property 0.819,
R@1 0.61): every MatMul int8 with 8-bit weights, cosine 0.9942; smoothed, 8-bit weights: cosine 0.9975
but property 0.771 and R@1 0.49 (saturation); smoothed, 7-bit weights: cosine 0.9978, property 0.806,
R@1 0.63. alpha 0.7 (cosine 0.9979 at 0.65, 0.9977 at 0.8).

Calibration prompts are written here and share no sentence with the accuracy gate's prompts
(benchmarks/bench_setup.py `prompts`), so the gate measures prompts the calibration never saw.
"""

from __future__ import annotations

import json
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

DEFAULT_ALPHA = 0.7


def calibration_prompts(n: int = 48, seed: int = 123) -> list[str]:
    """n distinct short motion prompts for activation ranges (8-14 tokens)."""
    subjects = ["a kite", "the lantern", "two birds", "a spinning top", "the crowd", "a sailboat",
                "an old tire", "the cursor", "a jellyfish", "the windmill"]  # fmt: skip
    verbs = ["slides", "wobbles", "circles", "sinks", "rises", "expands", "shrinks", "hops", "stays",
             "zigzags"]  # fmt: skip
    ways = ["toward the bottom", "clockwise", "back and forth", "very fast", "in place", "to the upper right",
            "counterclockwise and slowly", "then stops"]  # fmt: skip
    rng = np.random.default_rng(seed)
    out: list[str] = []
    while len(out) < n:
        s = f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(ways)}"
        if s not in out:
            out.append(s)
    return out


def _matmul_groups(m) -> dict[str, list]:
    """Activation tensor -> the MatMul nodes that multiply it by a constant 2-D weight (K, N)."""
    inits = {t.name: t for t in m.graph.initializer}
    groups: dict[str, list] = defaultdict(list)
    for n in m.graph.node:
        if n.op_type == "MatMul" and n.input[1] in inits and len(inits[n.input[1]].dims) == 2:
            groups[n.input[0]].append(n)
    return dict(groups)


def _place_after_producers(m, nodes: list, new: dict) -> None:
    """Set m's nodes to `nodes` with each new node (keyed by the tensor it reads) right after the node
    producing that tensor, or first when no node produces it (a graph input; keeps the graph sorted)."""
    produced = {o for n in nodes for o in n.output}
    ordered = [v for k, v in new.items() if k not in produced]
    for n in nodes:
        ordered.append(n)
        ordered.extend(new[o] for o in n.output if o in new)
    del m.graph.node[:]
    m.graph.node.extend(ordered)


def smoothing_vector(amax: np.ndarray, weights: list[np.ndarray], alpha: float) -> np.ndarray:
    """s (K,) float32 for an input whose channels peak at amax (K,), multiplied by weights (K, N_i)."""
    wmax = np.max([np.abs(w).max(axis=1) for w in weights], axis=0)
    return (np.maximum(amax, 1e-5) ** alpha / np.maximum(wmax, 1e-5) ** (1.0 - alpha)).astype(np.float32)


def activation_ranges(model_path: Path, tensors: list[str], feeds: list[dict]) -> dict[str, np.ndarray]:
    """Per-channel max |x| of each named tensor over the calibration feeds (ONNX Runtime, fp32)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    m = onnx.load(str(model_path))
    have = {o.name for o in m.graph.output}
    for t in tensors:
        if t not in have:
            m.graph.output.append(helper.make_tensor_value_info(t, TensorProto.FLOAT, None))
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    amax: dict[str, np.ndarray] = {}
    for f in feeds:
        for t, v in zip(tensors, sess.run(tensors, f)):
            a = np.abs(v.reshape(-1, v.shape[-1])).max(axis=0)
            amax[t] = a if t not in amax else np.maximum(amax[t], a)
    return amax


def smooth(src: Path, dst: Path, feeds: list[dict], alpha: float = DEFAULT_ALPHA) -> float:
    """Write to dst the fp32 graph src with every constant-weight MatMul group smoothed (module
    docstring). src holds its weights inline. Returns the largest |difference| between the two graphs'
    first outputs over the feeds, relative to the largest |output| (float32 rounding only; callers
    check it)."""
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    m = onnx.load(str(src))
    inits = {t.name: t for t in m.graph.initializer}
    groups = _matmul_groups(m)
    if not groups:
        raise ValueError(f"{src}: no MatMul with a constant 2-D weight to smooth")
    shared = [w for w in {n.input[1] for ns in groups.values() for n in ns}
              if sum(n.input[1] == w for ns in groups.values() for n in ns) > 1]  # fmt: skip
    if shared:  # a weight used by two groups cannot take two different scalings
        raise ValueError(f"{src}: weights {shared[:3]} feed several MatMuls; not supported")
    amax = activation_ranges(src, list(groups), feeds)
    placed: dict[str, object] = {}
    for x, nodes in groups.items():
        ws = [numpy_helper.to_array(inits[n.input[1]]) for n in nodes]  # (K, N) each
        s = smoothing_vector(amax[x], ws, alpha)
        inv = numpy_helper.from_array((1.0 / s).astype(np.float32), f"{x}::smooth_inv")
        m.graph.initializer.append(inv)
        xs = f"{x}::smoothed"
        placed[x] = helper.make_node("Mul", [x, inv.name], [xs], name=f"{x}::smooth")
        for n, w in zip(nodes, ws):
            scaled = (w * s[:, None]).astype(np.float32)
            inits[n.input[1]].CopyFrom(numpy_helper.from_array(scaled, n.input[1]))
            n.input[0] = xs
    _place_after_producers(m, list(m.graph.node), placed)
    onnx.save(m, str(dst))

    so = ort.SessionOptions()
    so.log_severity_level = 3
    a = ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])
    b = ort.InferenceSession(str(dst), so, providers=["CPUExecutionProvider"])
    worst = 0.0
    for f in feeds:
        want, got = a.run(None, f)[0], b.run(None, f)[0]
        worst = max(worst, float(np.abs(want - got).max() / max(float(np.abs(want).max()), 1e-30)))
    return worst


def inline_text_graph(bundle_dir: Path, dst: Path) -> Path:
    """text.onnx with every initializer inlined (the bundle's external links resolved), so the
    quantizer sees plain weights. Large graphs are saved with external data next to dst."""
    import onnx
    from onnx import numpy_helper
    from onnx.external_data_helper import uses_external_data

    from l2m_sdk.bundle import load_bundle

    b = load_bundle(bundle_dir, verify=False)
    text = b.ort_file("text")
    m = onnx.load(str(text), load_external_data=False)
    ext = b.external.get(text.name, {})
    st_raw = None
    for i, t in enumerate(m.graph.initializer):
        if not uses_external_data(t):
            continue
        info = {e.key: e.value for e in t.external_data}
        if t.name in ext:
            arr = np.asarray(ext[t.name])
        else:
            if st_raw is None or st_raw[0] != info["location"]:
                st_raw = (
                    info["location"],
                    np.memmap(bundle_dir / info["location"], dtype=np.uint8, mode="r"),
                )
            off, n = int(info.get("offset", 0)), int(info["length"])
            arr = np.frombuffer(st_raw[1], dtype="<f4", count=n // 4, offset=off).reshape(list(t.dims))
        m.graph.initializer[i].CopyFrom(numpy_helper.from_array(np.array(arr, np.float32), t.name))
    _fold_weight_transposes(m)
    big = sum(np.prod(t.dims) for t in m.graph.initializer) * 4 > 1.5e9
    onnx.save(m, str(dst), save_as_external_data=big, location=dst.name + ".data" if big else None)
    return dst


def _fold_weight_transposes(m) -> None:
    """Replace Transpose(initializer) by the transposed initializer. The bundle writer links Linear
    weights to their safetensors copy through a Transpose; the quantizer only quantizes MatMuls whose
    weight is an initializer, so without this it would skip nearly all of them."""
    from onnx import numpy_helper

    inits = {t.name: t for t in m.graph.initializer}
    keep, new = [], {}
    for n in m.graph.node:
        if n.op_type == "Transpose" and n.input[0] in inits:
            perm = next((list(a.ints) for a in n.attribute if a.name == "perm"), None)
            arr = numpy_helper.to_array(inits[n.input[0]])
            new[n.output[0]] = numpy_helper.from_array(np.ascontiguousarray(arr.transpose(perm)), n.output[0])
        else:
            keep.append(n)
    if not new:
        return
    used = {x for n in keep for x in n.input} | {o.name for o in m.graph.output}
    del m.graph.node[:]
    m.graph.node.extend(keep)
    old = [t for t in m.graph.initializer if t.name in used]
    del m.graph.initializer[:]
    m.graph.initializer.extend(old + list(new.values()))


# ------------------------------------------------------------------ int8 text graph shipped in bundles
QMAX = 63  # 7-bit weights: onnxruntime's AVX2 u8 x s8 kernel cannot saturate (l2m_sdk/int8.py)
INT8_GRAPH, INT8_SMOOTHING = "text.int8.onnx", "text.int8.safetensors"


def tokenized(bundle_dir: Path, texts: list[str]) -> list[dict]:
    """One text-graph feed (input_ids, attention_mask; B = 1) per text, with the bundle's tokenizer."""
    from l2m_sdk.tokenizer import TextTokenizer

    spec = json.loads((bundle_dir / "manifest.json").read_text())["tokenizer"]
    tok = TextTokenizer(bundle_dir / spec.get("file", "tokenizer.json"), spec)
    out = []
    for t in texts:
        b = tok.encode([t])
        out.append({"input_ids": b.input_ids, "attention_mask": b.attention_mask})
    return out


def write_int8_text(bundle_dir: Path, alpha: float = DEFAULT_ALPHA) -> dict | None:
    """Write text.int8.onnx + text.int8.safetensors into a bundle directory whose manifest is written
    and return the manifest's `int8` section, or None when no matrix product qualifies. Each MatMul of
    the ONNX Runtime text graph whose weight is a transposed package weight (MiniLM's, supplied at load
    time) becomes DynamicQuantizeMatMul on its smoothed input; l2m_sdk/int8.py derives the int8
    weights at load. Weights stored in the bundle (CLIP towers) stay fp32 here: `python -m
    benchmarks.latency` and quantized copies cover those."""
    import onnx
    from onnx import TensorProto, helper

    from l2m_sdk.bundle import load_bundle

    b = load_bundle(bundle_dir, verify=False)
    text = b.ort_file("text")
    ext = b.external.get(text.name, {})
    m = onnx.load(str(text), load_external_data=False)
    producer = {o: n for n in m.graph.node for o in n.output}
    groups: dict[str, list] = defaultdict(list)
    for n in m.graph.node:
        p = producer.get(n.input[1]) if n.op_type == "MatMul" else None
        if (
            p is not None
            and p.op_type == "Transpose"
            and p.input[0] in ext
            and ext[p.input[0]].ndim == 2
            and [list(a.ints) for a in p.attribute if a.name == "perm"] in ([[1, 0]], [])
        ):
            groups[n.input[0]].append((n, p.input[0]))
    if not groups:
        return None
    # the inlined fp32 graph (~90 MB for MiniLM) goes beside the bundle, dot-named like export.bundle's
    # own temporary directories, so a killed export leaves nothing that looks like a bundle
    with tempfile.TemporaryDirectory(prefix=f".{bundle_dir.name}.int8-", dir=bundle_dir.parent) as tmp:
        inline = inline_text_graph(bundle_dir, Path(tmp) / "text_fp32.onnx")
        amax = activation_ranges(inline, list(groups), tokenized(bundle_dir, calibration_prompts()))
    smooth, weights, drop = {}, {}, set()
    new_nodes: dict[str, object] = {}
    for i, (x, pairs) in enumerate(groups.items()):
        sname = f"smooth::{i}"  # package weights are (N, K) as torch's Linear stores them
        smooth[sname] = smoothing_vector(amax[x], [ext[w].T for _, w in pairs], alpha)
        xs = f"{x}::smoothed"
        new_nodes[x] = helper.make_node("Div", [x, sname], [xs], name=f"{x}::smooth")
        for n, w in pairs:
            names = {"smooth": sname, "int8": f"q8::{w}", "scale": f"q8s::{w}", "zero": f"q8z::{w}"}
            weights[w] = names
            drop.add(n.input[1])
            n.op_type, n.domain = "DynamicQuantizeMatMul", "com.microsoft"
            del n.input[:]
            n.input.extend([xs, names["int8"], names["scale"], names["zero"]])
    kept = [n for n in m.graph.node if not (n.op_type == "Transpose" and n.output[0] in drop)]
    _place_after_producers(m, kept, new_nodes)

    def placeholder(name: str, dtype: int, dims: list[int]) -> onnx.TensorProto:
        t = TensorProto(name=name, data_type=dtype, dims=dims)
        t.data_location = TensorProto.EXTERNAL
        nbytes = int(np.prod(dims)) * (1 if dtype == TensorProto.INT8 else 4)
        for k, v in (("location", "derived:int8"), ("offset", "0"), ("length", str(nbytes))):
            t.external_data.add(key=k, value=v)
        return t

    keep = [t for t in m.graph.initializer if t.name not in weights]
    for w, names in weights.items():
        N, K = ext[w].shape
        keep += [
            placeholder(names["int8"], TensorProto.INT8, [K, N]),
            placeholder(names["scale"], TensorProto.FLOAT, [N]),
            placeholder(names["zero"], TensorProto.INT8, [N]),
        ]
    keep += [placeholder(k, TensorProto.FLOAT, [int(v.shape[0])]) for k, v in smooth.items()]
    del m.graph.initializer[:]
    m.graph.initializer.extend(keep)
    if not any(o.domain == "com.microsoft" for o in m.opset_import):
        m.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    onnx.save(m, str(bundle_dir / INT8_GRAPH))
    from safetensors.numpy import save_file

    save_file(smooth, str(bundle_dir / INT8_SMOOTHING))
    return {
        "graphs": {"text": INT8_GRAPH},
        "smoothing": INT8_SMOOTHING,
        "qmax": QMAX,
        "alpha": alpha,
        "calibration_prompts": len(calibration_prompts()),
        "method": "dynamic int8 activations, int8 per-column weights derived at load from the fp32 "
        "graph's external weights, SmoothQuant smoothing (export/quantize.py, l2m_sdk/int8.py)",
        "weights": weights,
    }


def add_int8_text(bundle_dir: str | Path) -> dict | None:
    """Add the int8 text graph to an exported bundle in place (files first, the manifest last)."""
    from l2m_sdk.bundle import load_bundle, sha256_file

    bundle_dir = Path(bundle_dir)
    load_bundle(bundle_dir)  # verified before it is extended
    section = write_int8_text(bundle_dir)
    if section is None:
        return None
    mpath = bundle_dir / "manifest.json"
    manifest = json.loads(mpath.read_text())
    manifest["int8"] = section
    for f in (section["graphs"]["text"], section["smoothing"]):
        p = bundle_dir / f
        manifest["files"][f] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
    tmp = mpath.with_name(".manifest.json.tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    tmp.replace(mpath)
    return section


def main(argv: list[str] | None = None) -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", help="an exported bundle directory (export.bundle)")
    args = ap.parse_args(argv)
    section = add_int8_text(args.bundle)
    if section is None:
        raise SystemExit(
            f"{args.bundle}: no text-tower weight comes from a package (only MiniLM-style bundles get an "
            "int8 text graph); quantized copies of other bundles: benchmarks/bench_setup.py"
        )
    print(f"{args.bundle}: int8 text graph with {len(section['weights'])} quantized matrices; "
          "load it with l2m_sdk.load(..., precision='int8')")  # fmt: skip


if __name__ == "__main__":
    main()
