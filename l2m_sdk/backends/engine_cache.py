"""Where TensorRT engines live in a bundle, what each was built from, and whether it may be used.

Layout (BUNDLE.md):  <bundle>/engines/<key>/<graph>.<precision>.plan  and  <graph>.<precision>.meta.json
with key = f"sm{major}{minor}-trt{version}" (GPU compute capability, full TensorRT version). A plan only
runs on the GPU architecture and TensorRT build it was made for, and it bakes in the weights, so its
meta.json records the sha256 of everything it was built from; an engine whose sources changed is stale
and is never used (the builder rebuilds it). Pure logic: no TensorRT, no GPU, stdlib only.

Set L2M_ENGINES_DIR to keep engines outside a read-only bundle (the packaged default one):
engines then live in $L2M_ENGINES_DIR/<bundle name>/<key>/.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

META_VERSION = 1
PRECISIONS = ("fp32", "fp16")
# Graphs an engine can be built for: bundle graphs by their manifest key, plus the fused image path
# (trajectory -> l2m::TrajRaster plugin -> image tower), whose source is the "image" graph.
ENGINE_GRAPHS = ("text", "motion_encoder", "motion_decoder", "image_path")
SOURCE_GRAPH = {
    "text": "text",
    "motion_encoder": "motion_encoder",
    "motion_decoder": "motion_decoder",
    "image_path": "image",
}
_VERSION_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")

Shape = tuple[int, ...]


def engine_key(compute_capability: tuple[int, int], trt_version: str) -> str:
    """Directory name for engines of one GPU architecture and TensorRT build, e.g. "sm90-trt11.4.0.106".

    compute_capability: (major, minor) as CUDA reports it (H100 -> (9, 0)); trt_version: tensorrt.__version__.
    """
    if len(compute_capability) != 2 or not all(isinstance(v, int) and v >= 0 for v in compute_capability):
        raise ValueError(
            f"compute_capability must be (major, minor) non-negative ints, got {compute_capability!r}"
        )
    if not isinstance(trt_version, str) or not _VERSION_RE.match(trt_version):
        raise ValueError(f"trt_version must look like '11.4.0.106' (digits and dots), got {trt_version!r}")
    major, minor = compute_capability
    return f"sm{major}{minor}-trt{trt_version}"


def engines_root(bundle_dir: str | Path, bundle_name: str | None = None) -> Path:
    """Directory holding the <key>/ folders of one bundle (L2M_ENGINES_DIR overrides, see module doc)."""
    override = os.environ.get("L2M_ENGINES_DIR")
    if override:
        return Path(override) / (bundle_name or Path(bundle_dir).resolve().name)
    return Path(bundle_dir) / "engines"


def plan_name(graph: str, precision: str) -> str:
    _check_graph_precision(graph, precision)
    return f"{graph}.{precision}.plan"


def meta_path(plan_path: str | Path) -> Path:
    """meta.json beside a plan: text.fp16.plan -> text.fp16.meta.json."""
    p = Path(plan_path)
    return p.with_name(p.name.removesuffix(".plan") + ".meta.json")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def source_sha256(manifest: dict, graph: str) -> str:
    """One digest over everything an engine for `graph` bakes in, read from the manifest (no file hashing).

    The ONNX file alone is not enough: the motion graphs keep their weights in model.safetensors and the
    text graph may take its tower weights from an installed package, so a retrained bundle can keep
    byte-identical ONNX files. The digest covers the graph file, every weight file in the manifest and
    the external initializer sources of that graph.
    """
    _check_graph_precision(graph, "fp32")
    graphs = manifest.get("graphs", {})
    files = manifest.get("files", {})
    src = SOURCE_GRAPH[graph]
    if src not in graphs:
        raise ValueError(
            f"manifest has no graph {src!r} (graphs: {sorted(graphs)}) needed for engine {graph!r}"
        )
    onnx_file = graphs[src]
    if onnx_file not in files or "sha256" not in files[onnx_file]:
        raise ValueError(f"manifest 'files' has no sha256 for {onnx_file!r}; re-export the bundle")
    parts = {
        "graph": graph,
        "onnx": files[onnx_file]["sha256"],
        "weights": {
            k: v.get("sha256") for k, v in sorted(files.items()) if k.endswith((".safetensors", ".bin"))
        },
        "external": (manifest.get("external_initializers", {}).get(onnx_file) or {}).get("sha256"),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


@dataclass
class EngineMeta:
    """Contents of <graph>.<precision>.meta.json. Profiles: {input: [min, opt, max]} shapes."""

    graph: str
    precision: str
    trt_version: str
    compute_capability: tuple[int, int]
    onnx_file: str
    onnx_sha256: str  # the bundle's ONNX file, as in manifest["files"]
    source_sha256: str  # source_sha256(manifest, graph): ONNX + weights
    profiles: dict[str, list[list[int]]] = field(default_factory=dict)
    plan_sha256: str = ""
    plan_bytes: int = 0
    builder: dict = field(default_factory=dict)  # free-form: max_batch, plugin info, build time, ...
    meta_version: int = META_VERSION

    @classmethod
    def from_dict(cls, d: dict) -> EngineMeta:
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        if "compute_capability" in kw:
            kw["compute_capability"] = tuple(int(v) for v in kw["compute_capability"])
        return cls(**kw)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["compute_capability"] = list(self.compute_capability)
        return d

    def save(self, path: str | Path) -> None:
        """Write atomically so a reader never sees half a file."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1, sort_keys=True))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | Path) -> EngineMeta:
        return cls.from_dict(json.loads(Path(path).read_text()))


def stale_reason(
    meta: EngineMeta,
    *,
    source_sha256: str,
    trt_version: str,
    compute_capability: tuple[int, int],
    precision: str | None = None,
) -> str | None:
    """Why an engine must not be used (a sentence), or None when it matches the sources and runtime."""
    if meta.meta_version != META_VERSION:
        return f"meta.json version {meta.meta_version} != {META_VERSION}"
    if meta.trt_version != trt_version:
        return f"built with TensorRT {meta.trt_version}, running {trt_version}"
    if tuple(meta.compute_capability) != tuple(compute_capability):
        cc = ".".join(map(str, meta.compute_capability))
        return (
            f"built for compute capability {cc}, this GPU is {compute_capability[0]}.{compute_capability[1]}"
        )
    if precision is not None and meta.precision != precision:
        return f"precision {meta.precision}, wanted {precision}"
    if meta.source_sha256 != source_sha256:
        return f"stale: {meta.onnx_file} or the weights changed since the engine was built"
    return None


def is_stale(
    meta: EngineMeta,
    *,
    source_sha256: str,
    trt_version: str,
    compute_capability: tuple[int, int],
    precision: str | None = None,
) -> bool:
    return (
        stale_reason(
            meta,
            source_sha256=source_sha256,
            trt_version=trt_version,
            compute_capability=compute_capability,
            precision=precision,
        )
        is not None
    )


@dataclass
class EngineLookup:
    """Result of find_engine: `plan` is set only when the engine may be used; `reason` always says why."""

    graph: str
    plan: Path | None
    meta: EngineMeta | None
    reason: str

    @property
    def ok(self) -> bool:
        return self.plan is not None


def find_engine(
    bundle_dir: str | Path,
    manifest: dict,
    graph: str,
    *,
    compute_capability: tuple[int, int],
    trt_version: str,
    precision: str | None = None,
    verify_plan: bool = False,
) -> EngineLookup:
    """Look for a usable engine of `graph` for this GPU and TensorRT version.

    precision: "fp32" or "fp16", or None to take fp16 when present, else fp32.
    verify_plan: also hash the plan file against meta.json (reads the whole plan).
    """
    wanted = PRECISIONS[::-1] if precision is None else (precision,)
    for p in wanted:
        _check_graph_precision(graph, p)
    key = engine_key(compute_capability, trt_version)
    folder = engines_root(bundle_dir, manifest.get("name")) / key
    try:
        src = source_sha256(manifest, graph)
    except ValueError as e:
        return EngineLookup(graph, None, None, str(e))
    reasons = []
    for p in wanted:
        plan = folder / plan_name(graph, p)
        mp = meta_path(plan)
        if not plan.is_file() or not mp.is_file():
            reasons.append(f"no {p} engine in {folder}")
            continue
        try:
            meta = EngineMeta.load(mp)
        except (OSError, ValueError, TypeError) as e:
            reasons.append(f"{mp.name} unreadable ({e})")
            continue
        why = stale_reason(
            meta,
            source_sha256=src,
            trt_version=trt_version,
            compute_capability=compute_capability,
            precision=p,
        )
        if why is None and meta.plan_bytes and plan.stat().st_size != meta.plan_bytes:
            size = plan.stat().st_size
            why = f"{plan.name} is {size} bytes, meta.json says {meta.plan_bytes} (partial write?)"
        if why is None and verify_plan and meta.plan_sha256 and sha256_file(plan) != meta.plan_sha256:
            why = f"{plan.name} sha256 differs from meta.json"
        if why is None:
            return EngineLookup(graph, plan, meta, f"{graph}: {p} engine {key}")
        reasons.append(f"{p} engine {why}")
    return EngineLookup(graph, None, None, f"{graph}: " + "; ".join(reasons))


def shape_out_of_profile(profiles: dict[str, list[list[int]]], shapes: dict[str, Shape]) -> str | None:
    """Which input shape falls outside an engine's [min, max] profile (a sentence), or None when all fit."""
    for name, shape in shapes.items():
        if name not in profiles:
            return f"engine has no input {name!r} (inputs: {sorted(profiles)})"
        lo, _, hi = profiles[name]
        if len(shape) != len(lo) or any(not (a <= s <= b) for s, a, b in zip(shape, lo, hi)):
            return f"{name} shape {tuple(shape)} outside the engine profile {tuple(lo)}..{tuple(hi)}"
    return None


def _check_graph_precision(graph: str, precision: str) -> None:
    if graph not in ENGINE_GRAPHS:
        raise ValueError(f"unknown engine graph {graph!r}; choose one of {list(ENGINE_GRAPHS)}")
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {list(PRECISIONS)}")
