"""TensorRT backend: pure logic here (profiles, engine cache, backend choice, fp16 conversion parity on
ONNX Runtime CPU); engine build/run tests only where TensorRT and a GPU exist."""

from __future__ import annotations

import hashlib
import json
import sys
import threading
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import l2m_sdk.backends as backends
from export import trt_build
from export.fp16 import convert_to_fp16, node_precisions
from l2m_sdk.backends import engine_cache as ec

SEED = int.from_bytes(np.random.SeedSequence().entropy.to_bytes(16, "little")[:4], "little")
CC, TRTV = (9, 0), "11.4.0.106"
DIM, MAX_TOKENS = 32, 16


def _manifest(files: dict[str, str] | None = None, **model) -> dict:
    files = files or {
        "text.onnx": "a" * 64,
        "motion_encoder.onnx": "b" * 64,
        "motion_decoder.onnx": "c" * 64,
        "model.safetensors": "d" * 64,
    }
    return {
        "format": "l2m-bundle",
        "format_version": 1,
        "name": "tiny",
        "model": {"dim": DIM, "num_frames": 30, "num_points": 64, **model},
        "tokenizer": {"kind": "wordpiece", "max_length": MAX_TOKENS, "vocab_size": 100},
        "graphs": {
            "text": "text.onnx",
            "motion_encoder": "motion_encoder.onnx",
            "motion_decoder": "motion_decoder.onnx",
        },
        "files": {k: {"sha256": v, "bytes": 1} for k, v in files.items()},
    }


# ------------------------------------------------------------------------------------------ profiles
@pytest.mark.parametrize("max_batch", [1, 7, 64])
def test_profiles_cover_the_contract_ranges(max_batch):
    m = _manifest()
    for g in ("text", "motion_encoder", "motion_decoder", "image_path", "image"):
        prof = trt_build.profiles_for(g, m, max_batch)
        assert set(prof) == set(trt_build.GRAPH_INPUTS[g])
        for name, (lo, opt, hi) in prof.items():
            assert len(lo) == len(opt) == len(hi), name
            assert all(a <= b <= c for a, b, c in zip(lo, opt, hi)), (g, name, lo, opt, hi)
    t = trt_build.profiles_for("text", m, max_batch)["input_ids"]
    assert t[0] == (1, 1) and t[2] == (max_batch, MAX_TOKENS)
    tr = trt_build.profiles_for("motion_encoder", m, max_batch)["trajectory"]
    assert tr[0] == (1, 2, 1, 2) and tr[2] == (max_batch, 120, 256, 2) and tr[1] == (1, 30, 64, 2)
    d = trt_build.profiles_for("motion_decoder", m, max_batch)
    assert d["embedding"][2] == (max_batch, DIM) and d["times"] == ((2,), (30,), (120,))
    assert d["initial_points"][2] == (max_batch, 256, 2)


def test_profiles_grow_with_a_long_model_and_reject_bad_arguments():
    m = _manifest(num_frames=200, num_points=512)
    tr = trt_build.profiles_for("motion_encoder", m, 4)["trajectory"]
    assert tr[1] == (1, 200, 256, 2) and tr[2] == (4, 200, 256, 2)
    with pytest.raises(ValueError, match="choose one of"):
        trt_build.profiles_for("vision", m)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="max_batch"):
            trt_build.profiles_for("text", m, bad)
    m2 = _manifest()
    del m2["tokenizer"]["max_length"]
    with pytest.raises(ValueError, match="max_length"):
        trt_build.profiles_for("text", m2)


# ---------------------------------------------------------------------------------------- engine cache
def test_engine_key_and_validation():
    assert ec.engine_key((9, 0), "11.4.0.106") == "sm90-trt11.4.0.106"
    assert ec.engine_key((12, 1), "11.4") == "sm121-trt11.4"
    for bad in [((9,), "11.4"), ((9, -1), "11.4"), ((9, 0), "11.4/../x"), ((9, 0), ""), ((9, 0), None)]:
        with pytest.raises(ValueError):
            ec.engine_key(*bad)
    assert ec.meta_path("a/text.fp16.plan") == Path("a/text.fp16.meta.json")
    with pytest.raises(ValueError, match="choose one of"):
        ec.plan_name("text", "int8")


def test_source_digest_follows_onnx_and_weights():
    m = _manifest()
    base = ec.source_sha256(m, "motion_decoder")
    assert base == ec.source_sha256(json.loads(json.dumps(m)), "motion_decoder")
    assert base != ec.source_sha256(m, "motion_encoder")
    retrained = json.loads(json.dumps(m))
    retrained["files"]["model.safetensors"]["sha256"] = "e" * 64  # same ONNX bytes, new weights
    assert ec.source_sha256(retrained, "motion_decoder") != base
    changed = json.loads(json.dumps(m))
    changed["files"]["motion_decoder.onnx"]["sha256"] = "f" * 64
    assert ec.source_sha256(changed, "motion_decoder") != base
    with pytest.raises(ValueError, match="no graph 'image'"):
        ec.source_sha256(m, "image_path")


def _write_engine(
    bundle: Path, manifest: dict, graph: str, precision: str, cc=CC, trtv=TRTV, payload=b"plan"
):
    folder = ec.engines_root(bundle, manifest["name"]) / ec.engine_key(cc, trtv)
    folder.mkdir(parents=True, exist_ok=True)
    plan = folder / ec.plan_name(graph, precision)
    plan.write_bytes(payload)
    onnx_file = manifest["graphs"][ec.SOURCE_GRAPH[graph]]
    meta = ec.EngineMeta(
        graph=graph,
        precision=precision,
        trt_version=trtv,
        compute_capability=cc,
        onnx_file=onnx_file,
        onnx_sha256=manifest["files"][onnx_file]["sha256"],
        source_sha256=ec.source_sha256(manifest, graph),
        profiles={},
        plan_sha256=hashlib.sha256(payload).hexdigest(),
        plan_bytes=len(payload),
    )
    meta.save(ec.meta_path(plan))
    return plan


def test_find_engine_uses_only_current_engines(tmp_path, monkeypatch):
    monkeypatch.delenv("L2M_ENGINES_DIR", raising=False)
    m = _manifest()
    kw = dict(compute_capability=CC, trt_version=TRTV)
    r = ec.find_engine(tmp_path, m, "text", **kw)
    assert not r.ok and "no fp16 engine" in r.reason and "no fp32 engine" in r.reason
    p32 = _write_engine(tmp_path, m, "text", "fp32")
    r = ec.find_engine(tmp_path, m, "text", **kw)
    assert r.ok and r.plan == p32 and r.meta.precision == "fp32"
    p16 = _write_engine(tmp_path, m, "text", "fp16")
    assert ec.find_engine(tmp_path, m, "text", **kw).plan == p16  # fp16 preferred when present
    assert ec.find_engine(tmp_path, m, "text", precision="fp32", **kw).plan == p32
    meta = ec.EngineMeta.load(ec.meta_path(p16))
    assert meta.compute_capability == CC and ec.EngineMeta.from_dict(meta.to_dict() | {"junk": 1}) == meta
    # another TensorRT, another GPU: a different folder, so nothing is found
    assert not ec.find_engine(tmp_path, m, "text", compute_capability=(8, 9), trt_version=TRTV).ok
    assert not ec.find_engine(tmp_path, m, "text", compute_capability=CC, trt_version="11.5.0").ok
    # retrained weights: stale, never used, and the reason says so
    m2 = json.loads(json.dumps(m))
    m2["files"]["model.safetensors"]["sha256"] = "9" * 64
    r = ec.find_engine(tmp_path, m2, "text", **kw)
    assert not r.ok and "stale" in r.reason
    # a truncated plan (interrupted copy) and a corrupted one
    p16.write_bytes(b"pl")
    r = ec.find_engine(tmp_path, m, "text", precision="fp16", **kw)
    assert not r.ok and "partial" in r.reason
    p16.write_bytes(b"PLAN")
    assert ec.find_engine(tmp_path, m, "text", precision="fp16", **kw).ok
    assert not ec.find_engine(tmp_path, m, "text", precision="fp16", verify_plan=True, **kw).ok
    ec.meta_path(p32).write_text("{not json")
    assert "unreadable" in ec.find_engine(tmp_path, m, "text", precision="fp32", **kw).reason


def test_stale_reasons_and_env_override(tmp_path, monkeypatch):
    m = _manifest()
    meta = ec.EngineMeta(
        graph="text",
        precision="fp16",
        trt_version=TRTV,
        compute_capability=CC,
        onnx_file="text.onnx",
        onnx_sha256="a" * 64,
        source_sha256=ec.source_sha256(m, "text"),
    )
    cur = dict(source_sha256=ec.source_sha256(m, "text"), trt_version=TRTV, compute_capability=CC)
    assert ec.stale_reason(meta, **cur) is None and not ec.is_stale(meta, **cur)
    assert "TensorRT" in ec.stale_reason(meta, **(cur | {"trt_version": "11.5.0"}))
    assert "compute capability 9.0" in ec.stale_reason(meta, **(cur | {"compute_capability": (8, 6)}))
    assert "precision" in ec.stale_reason(meta, precision="fp32", **cur)
    assert ec.is_stale(meta, **(cur | {"source_sha256": "0" * 64}))
    monkeypatch.setenv("L2M_ENGINES_DIR", str(tmp_path / "elsewhere"))
    plan = _write_engine(tmp_path / "bundle", m, "motion_encoder", "fp32")
    assert (tmp_path / "elsewhere" / "tiny") in plan.parents
    assert ec.find_engine(
        tmp_path / "bundle", m, "motion_encoder", compute_capability=CC, trt_version=TRTV
    ).ok


def test_shape_out_of_profile():
    prof = {"trajectory": [[1, 2, 1, 2], [1, 30, 64, 2], [64, 120, 256, 2]]}
    assert ec.shape_out_of_profile(prof, {"trajectory": (3, 30, 64, 2)}) is None
    assert "outside" in ec.shape_out_of_profile(prof, {"trajectory": (65, 30, 64, 2)})
    assert "outside" in ec.shape_out_of_profile(prof, {"trajectory": (1, 30, 64)})
    assert "no input" in ec.shape_out_of_profile(prof, {"times": (3,)})


# ------------------------------------------------------------------------------------ backend choice
@pytest.fixture
def detectors(monkeypatch):
    """Set what the machine 'has'; the real detectors are never called."""
    state = {
        "gpu": backends.GpuInfo(0, how="cudaGetDeviceCount: cudaErrorNoDevice"),
        "trt": (None, "tensorrt not importable (pip install tensorrt-cu13): No module named 'tensorrt'"),
        "providers": ["CPUExecutionProvider"],
        "cuda_python": True,
    }
    monkeypatch.setattr(backends, "detect_gpu", lambda: state["gpu"])
    monkeypatch.setattr(backends, "tensorrt_version", lambda: state["trt"])
    monkeypatch.setattr(backends, "ort_providers", lambda: list(state["providers"]))
    monkeypatch.setattr(backends, "cuda_python_available", lambda: state["cuda_python"])
    monkeypatch.delenv("L2M_ENGINES_DIR", raising=False)
    return state


def _gpu():
    return backends.GpuInfo(1, CC, "NVIDIA H100", "cuda-python")


def test_choice_without_gpu(detectors, tmp_path):
    c = backends.choose_backend("auto", "auto", tmp_path, _manifest())
    assert (c.name, c.providers, c.device) == ("ort", ["CPUExecutionProvider"], "cpu")
    assert "trt: skipped, no CUDA GPU (cudaGetDeviceCount: cudaErrorNoDevice)" in c.reason
    assert c.reason.endswith("ort-cpu: chosen")
    assert (
        backends.choose_backend("ort", "cpu", tmp_path, _manifest()).reason
        == "ort-cpu: device='cpu' requested"
    )
    with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
        backends.choose_backend("auto", "cuda", tmp_path, _manifest())
    with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
        backends.choose_backend("trt", "auto", tmp_path, _manifest())


def test_choice_names_are_checked(detectors, tmp_path):
    with pytest.raises(ValueError, match=r"\['auto', 'ort', 'trt'\]"):
        backends.choose_backend("tensorrt", "auto", tmp_path, _manifest())
    with pytest.raises(ValueError, match=r"\['auto', 'cpu', 'cuda'\]"):
        backends.choose_backend("auto", "gpu", tmp_path, _manifest())
    with pytest.raises(ValueError, match="device='cuda'"):
        backends.choose_backend("trt", "cpu", tmp_path, _manifest())
    with pytest.raises(ValueError, match="precision"):
        backends.choose_backend("auto", "auto", tmp_path, _manifest(), precision="int8")


def test_choice_with_gpu_falls_back_in_order(detectors, tmp_path):
    m = _manifest()
    detectors["gpu"] = _gpu()
    c = backends.choose_backend("auto", "auto", tmp_path, m)
    assert c.name == "ort" and c.providers == ["CPUExecutionProvider"]
    assert "trt: skipped, tensorrt not importable (pip install tensorrt-cu13)" in c.reason
    assert (
        "ort-cuda: skipped, onnxruntime has no CUDAExecutionProvider" in c.reason
        and "onnxruntime-gpu" in c.reason
    )
    with pytest.raises(RuntimeError, match="onnxruntime-gpu"):
        backends.choose_backend("ort", "cuda", tmp_path, m)
    detectors["providers"] = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    c = backends.choose_backend("auto", "cuda", tmp_path, m)
    assert (c.name, c.providers, c.device) == (
        "ort",
        ["CUDAExecutionProvider", "CPUExecutionProvider"],
        "cuda",
    )
    assert "ort-cuda: chosen" in c.reason
    # TensorRT importable but no engines: skipped with the build command; explicit trt is an error
    detectors["trt"] = (TRTV, "")
    c = backends.choose_backend("auto", "auto", tmp_path, m)
    assert c.name == "ort" and "no usable engine" in c.reason and "export.trt_build" in c.reason
    with pytest.raises(RuntimeError, match=r"l2m export --engines"):
        backends.choose_backend("trt", "cuda", tmp_path, m)
    detectors["cuda_python"] = False
    assert "cuda-python not importable" in backends.choose_backend("auto", "auto", tmp_path, m).reason


def test_choice_picks_current_engines_only(detectors, tmp_path):
    m = _manifest()
    detectors["gpu"], detectors["trt"] = _gpu(), (TRTV, "")
    plans = {g: _write_engine(tmp_path, m, g, "fp16") for g in backends.CORE_GRAPHS[:2]}
    c = backends.choose_backend("auto", "auto", tmp_path, m)
    assert c.name == "ort" and "motion_decoder: no fp16 engine" in c.reason  # one engine missing
    plans["motion_decoder"] = _write_engine(tmp_path, m, "motion_decoder", "fp16")
    c = backends.choose_backend("auto", "auto", tmp_path, m)
    assert c.name == "trt" and c.engines == plans and c.device == "cuda"
    assert c.reason.startswith("trt: chosen (engines sm90-trt11.4.0.106 (fp16)")
    assert "chosen" in backends.describe(c)
    with pytest.raises(RuntimeError, match="no usable engine"):
        backends.choose_backend("trt", "auto", tmp_path, m, precision="fp32")
    m2 = json.loads(json.dumps(m))
    m2["files"]["text.onnx"]["sha256"] = "0" * 64  # re-exported text graph: its engine is stale
    c = backends.choose_backend("auto", "auto", tmp_path, m2)
    assert c.name == "ort" and "text: fp16 engine stale" in c.reason


def test_backends_import_is_light():
    import subprocess

    code = (
        "import sys, l2m_sdk.backends, l2m_sdk.backends.engine_cache; "
        "print(sorted(m for m in ('torch', 'tensorrt', 'onnx', 'cuda') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out


# ------------------------------------------------------------------------------------- fp16 graphs
def _ssa_fix(m: onnx.ModelProto) -> onnx.ModelProto:
    """export_text names the nn.Embedding Gather's output 'embedding', the same as the graph output,
    which ONNX Runtime refuses ("Duplicate definition of name"); rename the inner one until the
    exporter is fixed."""
    outs = {o.name for o in m.graph.output}
    producers = [n for n in m.graph.node for o in n.output if o in outs]
    for n in producers[:-1]:
        for i, o in enumerate(n.output):
            if o in outs:
                new = o + "__inner"
                n.output[i] = new
                for r in m.graph.node:  # the real output is read by no node, so rewire every reader
                    for j, x in enumerate(r.input):
                        if x == o:
                            r.input[j] = new
    return m


def _export_sources() -> str:
    root = Path(__file__).resolve().parents[1] / "export"
    import torch

    h = hashlib.sha256(torch.__version__.encode())
    for f in ("model.py", "onnx_export.py", "text_towers.py"):
        h.update((root / f).read_bytes())
    return h.hexdigest()[:16]


@pytest.fixture(scope="module")
def tiny_graphs(request, tmp_path_factory) -> dict[str, onnx.ModelProto]:
    """Tiny text / motion-encoder / motion-decoder graphs from export/onnx_export.py. Exporting costs
    ~15 s per graph on this loaded machine, so the files are kept in pytest's cache when it is on (CI
    runs with -p no:cacheprovider: a temporary directory), keyed by the exporter sources; the weights
    are redrawn every run (fresh normal values with each tensor's own mean and spread), so each run
    checks a new network on new inputs."""
    pytest.importorskip("torch")
    key = f"l2m_tiny_onnx_{_export_sources()}"
    pcache = getattr(request.config, "cache", None)
    cache = Path(pcache.mkdir(key)) if pcache is not None else tmp_path_factory.mktemp(key)
    names = ("text", "motion_encoder", "motion_decoder")
    if not all((cache / f"{n}.onnx").is_file() for n in names):
        import torch

        from export.model import L2M, ModelConfig
        from export.onnx_export import export_decoder, export_encoder, export_text
        from export.text_towers import MiniLMTower

        cfg = ModelConfig(dim=DIM, width=32, enc_layers=1, dec_layers=1, heads=2, ff=64, point_hidden=16)
        model = L2M(cfg)
        tower = MiniLMTower(vocab=100, w=DIM, layers=1, heads=2, ff=64)
        export_encoder(model, cache / "motion_encoder.onnx")
        export_decoder(model, cache / "motion_decoder.onnx")
        export_text(tower, model.adapter, cache / "text.onnx", MAX_TOKENS)
        del torch
    rng = np.random.default_rng(SEED)
    graphs = {}
    for n in names:
        m = _ssa_fix(onnx.load(str(cache / f"{n}.onnx")))
        for t in m.graph.initializer:
            if t.data_type == TensorProto.FLOAT:
                a = numpy_helper.to_array(t)
                if a.size >= 16:
                    scale = max(float(a.std()), 0.05)
                    fresh = float(a.mean()) + scale * rng.standard_normal(a.shape)
                    t.CopyFrom(numpy_helper.from_array(fresh.astype(np.float32), t.name))
        graphs[n] = m
    return graphs


def _feeds(name: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
    m = _manifest()
    m["model"].update(num_frames=int(rng.integers(2, 40)), num_points=int(rng.integers(1, 70)))
    return trt_build.random_feeds(name, m, rng, batch=int(rng.integers(1, 5)))


# fp16 keeps 11 significant bits (eps 9.8e-4). Outputs here are unit embeddings (|x| <= 1) and points
# in about [-1.5, 1.5]; a few layers of fp16 rounding on random weights measured <= 3e-4, so 5e-3 abs
# (+1e-2 relative for the trajectories) leaves a wide margin yet catches a graph computed in fp16
# where it must not be (softmax, norm statistics, the final normalisation), which is off by > 1e-2.
FP16_ATOL, FP16_RTOL = 5e-3, 1e-2


@pytest.mark.parametrize("name", ["text", "motion_encoder", "motion_decoder"])
def test_fp16_conversion_parity_on_ort_cpu(tiny_graphs, name):
    rng = np.random.default_rng([SEED, len(name)])
    m32 = tiny_graphs[name]
    m16 = convert_to_fp16(m32)
    onnx.checker.check_model(m16)
    # IO keeps fp32, the heavy ops run in fp16, the sensitive ones in fp32
    for vi in list(m16.graph.input) + list(m16.graph.output):
        assert vi.type.tensor_type.elem_type in (TensorProto.FLOAT, TensorProto.INT64), vi.name
    prec = node_precisions(m16)
    ops = {}
    for n in m16.graph.node:
        ops.setdefault(n.op_type, set()).add(prec[n.name])
    assert ops["MatMul"] == {"fp16"}
    for op in ("Softmax", "LayerNormalization", "ReduceL2"):
        assert ops.get(op, {"fp32"}) == {"fp32"}, (op, ops.get(op))
    assert any(t.data_type == TensorProto.FLOAT16 for t in m16.graph.initializer)
    s32 = ort.InferenceSession(m32.SerializeToString(), providers=["CPUExecutionProvider"])
    s16 = ort.InferenceSession(m16.SerializeToString(), providers=["CPUExecutionProvider"])
    worst = 0.0
    for _ in range(3):
        f = _feeds(name, rng)
        a, b = s32.run(None, f)[0], s16.run(None, f)[0]
        assert b.dtype == np.float32 and b.shape == a.shape
        err = np.abs(a.astype(np.float64) - b)
        worst = max(worst, float(err.max()))
        ok = err <= FP16_ATOL + FP16_RTOL * np.abs(a)
        assert ok.all(), f"seed {SEED}: {name} fp16 max |diff| {err.max():.3g} mean {err.mean():.3g}"
    print(f"{name}: fp16 vs fp32 max |diff| {worst:.3g} (seed {SEED})")


def test_fp16_keeps_norm_statistics_in_fp32():
    """A decomposed LayerNorm on activations ~ 300: variance ~ 9e4 overflows fp16 (max 65504)."""
    rng = np.random.default_rng(SEED)
    w = rng.normal(0, 1, (16, 16)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
        helper.make_node("ReduceMean", ["h"], ["mu"], axes=[-1], name="mean"),
        helper.make_node("Sub", ["h", "mu"], ["d"], name="sub"),
        helper.make_node("Pow", ["d", "two"], ["d2"], name="pow"),
        helper.make_node("ReduceMean", ["d2"], ["var"], axes=[-1], name="var"),
        helper.make_node("Add", ["var", "eps"], ["ve"], name="addeps"),
        helper.make_node("Sqrt", ["ve"], ["sd"], name="sqrt"),
        helper.make_node("Div", ["d", "sd"], ["y0"], name="div"),
        helper.make_node("MatMul", ["y0", "w"], ["y1"], name="mm2"),
        helper.make_node("Softmax", ["y1"], ["y"], axis=-1, name="softmax"),
    ]
    g = helper.make_graph(
        nodes,
        "ln",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 16])],
        [
            numpy_helper.from_array(w, "w"),
            numpy_helper.from_array(np.float32(2), "two"),
            numpy_helper.from_array(np.float32(1e-5), "eps"),
        ],
    )
    m32 = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m16 = convert_to_fp16(m32)
    prec = node_precisions(m16)
    assert prec["mm"] == prec["mm2"] == "fp16"
    assert prec["pow"] == prec["var"] == prec["sqrt"] == prec["div"] == prec["softmax"] == "fp32"
    x = (rng.normal(0, 1, (5, 16)) * 80).astype(np.float32)  # h ~ 300: h**2 ~ 1e5 > 65504
    a = ort.InferenceSession(m32.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[
        0
    ]
    b = ort.InferenceSession(m16.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[
        0
    ]
    assert np.isfinite(b).all()
    assert np.abs(a - b).max() < 2e-2, f"seed {SEED}: max |diff| {np.abs(a - b).max()}"  # probabilities


def test_fp16_refuses_unloaded_external_weights(tmp_path):
    t = numpy_helper.from_array(np.ones((2, 2), np.float32), "w")
    t.data_location = TensorProto.EXTERNAL
    t.ClearField("raw_data")
    e = t.external_data.add()
    e.key, e.value = "location", "model.safetensors"
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])],
        [t],
    )
    with pytest.raises(ValueError, match="external data"):
        convert_to_fp16(helper.make_model(g))


# ------------------------------------------------------------------------- builder helpers (no TensorRT)
def test_materialize_reads_weights_at_offsets(tmp_path):
    """Motion graphs point their initializers into model.safetensors at byte offsets."""
    rng = np.random.default_rng(SEED)
    w = rng.normal(size=(3, 4)).astype(np.float32)
    blob = rng.bytes(40) + w.tobytes() + rng.bytes(8)
    (tmp_path / "model.safetensors").write_bytes(blob)
    t = onnx.TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[3, 4])
    t.data_location = TensorProto.EXTERNAL
    for k, v in (("location", "model.safetensors"), ("offset", "40"), ("length", str(w.nbytes))):
        e = t.external_data.add()
        e.key, e.value = k, v
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 4])],
        [t],
    )
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "g.onnx"))
    m = trt_build.materialize_onnx(tmp_path, {"graphs": {}}, "g.onnx")
    assert np.array_equal(numpy_helper.to_array(m.graph.initializer[0]), w)
    x = rng.normal(size=(2, 3)).astype(np.float32)
    y = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(y, x @ w, rtol=1e-5, atol=1e-6)
    t2 = m.graph.initializer[0]
    t2.data_location = TensorProto.EXTERNAL
    e = t2.external_data.add()
    e.key, e.value = "location", "external:model.safetensors"
    onnx.save(m, str(tmp_path / "h.onnx"))
    with pytest.raises(ValueError, match="external_initializers"):
        trt_build.materialize_onnx(tmp_path, {"graphs": {}}, "h.onnx")
    with pytest.raises(FileNotFoundError):
        trt_build.materialize_onnx(tmp_path, {"graphs": {}}, "missing.onnx")


def test_image_path_model_puts_the_raster_node_first():
    g = helper.make_graph(
        [helper.make_node("ReduceMean", ["image"], ["embedding"], axes=[2, 3], keepdims=0)],
        "t",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", 3])],
    )
    tower = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])

    trt_plugin = pytest.importorskip("l2m_kernels.trt_plugin")

    def node(inp, out):
        return trt_plugin.make_onnx_node(inp, out, height=8, width=8)

    m = trt_build.image_path_model(tower, node)
    assert [i.name for i in m.graph.input] == ["trajectory"]
    first = m.graph.node[0]
    assert first.op_type == "TrajRaster" and list(first.output) == ["image"] and first.domain == "l2m"
    assert {a.name: a for a in first.attribute}["plugin_namespace"].s == b"l2m"
    assert {o.domain for o in m.opset_import} == {"", "l2m"}
    assert tower.graph.input[0].name == "image"  # the tower itself is untouched


def test_random_feeds_fit_the_profiles():
    rng = np.random.default_rng(SEED)
    m = _manifest()
    for g in ("text", "motion_encoder", "motion_decoder"):
        f = trt_build.random_feeds(g, m, rng, batch=3)
        prof = trt_build.profiles_for(g, m, 64)
        assert (
            ec.shape_out_of_profile(
                {k: [list(s) for s in v] for k, v in prof.items()}, {k: v.shape for k, v in f.items()}
            )
            is None
        )


# --------------------------------------------------------------------- TensorRT + GPU (gated)
def _need_gpu():
    gpu = backends.detect_gpu()
    if gpu.count == 0:
        pytest.skip(f"needs a CUDA GPU ({gpu.how})")


@pytest.fixture(scope="module")
def tiny_bundle(tiny_graphs, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("bundle")
    files = {}
    for n, m in tiny_graphs.items():
        onnx.save(m, str(d / f"{n}.onnx"))
        files[f"{n}.onnx"] = ec.sha256_file(d / f"{n}.onnx")
    (d / "manifest.json").write_text(json.dumps(_manifest(files)))
    return d


@pytest.mark.tensorrt
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_engines_match_onnx_runtime(tiny_bundle, tiny_graphs, precision, monkeypatch):
    pytest.importorskip("tensorrt")
    _need_gpu()
    monkeypatch.delenv("L2M_ENGINES_DIR", raising=False)
    from l2m_sdk.backends.trt import TrtSession

    plans = trt_build.build_engines(tiny_bundle, precision=precision, max_batch=8, progress=False)
    assert len(plans) == 3
    stamp = [p.stat().st_mtime_ns for p in plans]
    assert [
        p.stat().st_mtime_ns
        for p in trt_build.build_engines(tiny_bundle, precision=precision, max_batch=8, progress=False)
    ] == stamp  # kept, not rebuilt
    rep = trt_build.check_engines(tiny_bundle, precision=precision)
    # fp32 engines (TF32 off) differ from ORT CPU only by summation order; fp16 as above.
    tol = 1e-4 if precision == "fp32" else 1e-2
    for g, r in rep.items():
        assert "error" not in r and r["max_abs"] < tol, (g, r, SEED)
    rng = np.random.default_rng(SEED)
    plan = next(p for p in plans if p.name.startswith("motion_decoder"))
    ref = ort.InferenceSession(
        tiny_graphs["motion_decoder"].SerializeToString(), providers=["CPUExecutionProvider"]
    )
    with TrtSession(plan, cuda_graphs=True) as s:
        assert s.input_names == ["embedding", "initial_points", "times"] and s.output_names == ["trajectory"]
        feeds = [_feeds("motion_decoder", rng) for _ in range(3)]
        results: dict[int, list] = {}

        def worker(k):
            results[k] = [s.run(feeds[k % 3])[0] for _ in range(3)]  # plain, captured, replayed

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for k, outs in results.items():
            want = ref.run(None, feeds[k % 3])[0]
            for o in outs:
                assert np.abs(o - want).max() < tol, (k, np.abs(o - want).max(), SEED)
        with pytest.raises(ValueError, match="outside the engine profile"):
            s.run({**feeds[0], "times": np.zeros(500, np.float32)})
        with pytest.raises(ValueError, match="missing"):
            s.run({"embedding": feeds[0]["embedding"]})
    with pytest.raises(RuntimeError, match="closed"):
        s.run(feeds[0])


@pytest.mark.cuda
def test_cuda_python_buffers_and_graph_replay():
    """The cuda-python calls TrtSession relies on, without TensorRT: malloc, async copies on a
    non-blocking stream, and a captured memcpy graph replayed."""
    _need_gpu()
    from cuda.bindings import runtime as rt

    from l2m_sdk.backends.trt import _check

    rng = np.random.default_rng(SEED)
    a = rng.normal(size=(1000,)).astype(np.float32)
    out = np.empty_like(a)
    stream = _check(rt, rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking), "stream")
    d0 = int(_check(rt, rt.cudaMalloc(a.nbytes), "malloc"))
    d1 = int(_check(rt, rt.cudaMalloc(a.nbytes), "malloc"))
    try:
        _check(
            rt,
            rt.cudaMemcpyAsync(d0, a.ctypes.data, a.nbytes, rt.cudaMemcpyKind.cudaMemcpyHostToDevice, stream),
            "h2d",
        )
        _check(
            rt,
            rt.cudaStreamBeginCapture(stream, rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal),
            "cap",
        )
        rt.cudaMemcpyAsync(d1, d0, a.nbytes, rt.cudaMemcpyKind.cudaMemcpyDeviceToDevice, stream)
        graph = _check(rt, rt.cudaStreamEndCapture(stream), "end")
        exe = _check(rt, rt.cudaGraphInstantiate(graph, 0), "instantiate")
        _check(rt, rt.cudaGraphLaunch(exe, stream), "launch")
        _check(
            rt,
            rt.cudaMemcpyAsync(
                out.ctypes.data, d1, a.nbytes, rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream
            ),
            "d2h",
        )
        _check(rt, rt.cudaStreamSynchronize(stream), "sync")
        np.testing.assert_array_equal(out, a)
        rt.cudaGraphExecDestroy(exe)
        rt.cudaGraphDestroy(graph)
    finally:
        rt.cudaFree(d0)
        rt.cudaFree(d1)
        rt.cudaStreamDestroy(stream)
