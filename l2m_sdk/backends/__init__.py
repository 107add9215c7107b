"""Backend selection: TensorRT engines, ONNX Runtime on CUDA, or ONNX Runtime on the CPU.

`choose_backend("auto", "auto", bundle_dir, manifest)` tries, in order:
  1. trt       a CUDA GPU, an importable `tensorrt`, and usable (not stale) engines for the text, motion
               encoder and motion decoder graphs under <bundle>/engines/sm<cc>-trt<version>/;
  2. ort-cuda  onnxruntime-gpu exposing 'CUDAExecutionProvider' and a CUDA GPU;
  3. ort-cpu   always available.
The returned BackendChoice.reason says what was chosen and why each earlier option was skipped
(`l2m info` prints it). Every detector is a module-level function that imports its dependency only
when called, so importing this module costs nothing and tests can monkeypatch the detectors.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from l2m_sdk.backends import engine_cache

log = logging.getLogger("l2m_sdk")

BACKENDS = ("auto", "ort", "trt")
DEVICES = ("auto", "cpu", "cuda")
CORE_GRAPHS = ("text", "motion_encoder", "motion_decoder")
CUDA_EP, CPU_EP = "CUDAExecutionProvider", "CPUExecutionProvider"
PIP_TRT = "pip install tensorrt-cu13"
PIP_CUDA = "pip install cuda-python"
PIP_ORT_GPU = "pip uninstall -y onnxruntime && pip install onnxruntime-gpu"
BUILD_HINT = (
    "build them on this machine with: l2m export --engines --bundle {bundle}  "
    "(or: python -m export.trt_build --bundle {bundle} --precision fp16)"
)


@dataclass(frozen=True)
class GpuInfo:
    """count: visible CUDA devices (0 when none or undetectable); compute_capability of device 0."""

    count: int
    compute_capability: tuple[int, int] | None = None
    name: str = ""
    how: str = ""  # how it was detected, or why no GPU was found


@dataclass(frozen=True)
class BackendChoice:
    """name: "trt" or "ort"; providers: ONNX Runtime providers in priority order (for "trt", the
    providers of the ONNX Runtime fallback used by graphs without an engine, e.g. the image tower);
    engines: {graph: plan path} when name == "trt"; reason: a human-readable account of the decision."""

    name: str
    providers: list[str]
    reason: str
    engines: dict[str, Path] = field(default_factory=dict)
    device: str = "cpu"


# ----------------------------------------------------------------------------------------- detectors
@lru_cache(maxsize=1)
def detect_gpu() -> GpuInfo:
    """CUDA devices via cuda-python (cudaGetDeviceCount); nvidia-smi when cuda-python is missing."""
    try:
        try:
            from cuda.bindings import runtime as cudart
        except ImportError:  # cuda-python < 12.6 layout
            from cuda import cudart  # type: ignore[no-redef]
    except ImportError:
        return _gpu_from_nvidia_smi()
    err, n = cudart.cudaGetDeviceCount()
    if int(err) != 0 or not n:
        name = getattr(err, "name", str(err))
        return GpuInfo(0, how=f"cudaGetDeviceCount: {name}" if int(err) else "cudaGetDeviceCount: 0 devices")
    attr = cudart.cudaDeviceAttr
    e1, major = cudart.cudaDeviceGetAttribute(attr.cudaDevAttrComputeCapabilityMajor, 0)
    e2, minor = cudart.cudaDeviceGetAttribute(attr.cudaDevAttrComputeCapabilityMinor, 0)
    cc = (int(major), int(minor)) if int(e1) == 0 and int(e2) == 0 else None
    return GpuInfo(int(n), cc, how="cuda-python")


def _gpu_from_nvidia_smi() -> GpuInfo:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return GpuInfo(0, how=f"cuda-python not installed ({PIP_CUDA}) and nvidia-smi not found")
    try:
        out = subprocess.run(
            [exe, "--query-gpu=name,compute_cap", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError) as e:
        return GpuInfo(0, how=f"nvidia-smi failed: {e}")
    rows = [r.rsplit(",", 1) for r in out.strip().splitlines() if "," in r]
    if not rows:
        return GpuInfo(0, how="nvidia-smi lists no GPU")
    name, cap = rows[0][0].strip(), rows[0][1].strip()
    try:
        major, minor = (int(v) for v in cap.split("."))
        cc = (major, minor)
    except ValueError:
        cc = None
    return GpuInfo(len(rows), cc, name, how="nvidia-smi (install cuda-python to run on the GPU)")


@lru_cache(maxsize=1)
def tensorrt_version() -> tuple[str | None, str]:
    """(tensorrt.__version__, "") when TensorRT imports, else (None, why not)."""
    try:
        import tensorrt
    except ImportError as e:
        return None, f"tensorrt not importable ({PIP_TRT}): {e}"
    except Exception as e:  # a wheel without its native libraries raises OSError and friends
        return None, f"tensorrt failed to load ({type(e).__name__}: {e}); reinstall with {PIP_TRT}"
    return str(tensorrt.__version__), ""


def cuda_python_available() -> bool:
    try:
        from cuda.bindings import runtime  # noqa: F401
    except ImportError:
        return False
    return True


def ort_providers() -> list[str]:
    import onnxruntime

    return list(onnxruntime.get_available_providers())


# ------------------------------------------------------------------------------------------ choice
def choose_backend(
    requested: str, device: str, bundle_dir: str | Path, manifest: dict, *, precision: str | None = None
) -> BackendChoice:
    """Pick the backend for a bundle. requested: "auto" | "ort" | "trt"; device: "auto" | "cpu" | "cuda".

    precision: engine precision to require ("fp32" / "fp16"); None takes fp16 engines when present.
    Raises ValueError for unknown names or impossible combinations (trt on cpu), RuntimeError when the
    requested backend or device cannot run here (the message says what to install or build).
    """
    if requested not in BACKENDS:
        raise ValueError(f"unknown backend {requested!r}; choose one of {list(BACKENDS)}")
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}; choose one of {list(DEVICES)}")
    if precision is not None and precision not in engine_cache.PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {list(engine_cache.PRECISIONS)}")
    if requested == "trt" and device == "cpu":
        raise ValueError(
            "backend='trt' runs on the GPU; use device='cuda' (or 'auto'), or backend='ort' for the CPU"
        )
    bundle_dir = Path(bundle_dir)
    cpu = BackendChoice("ort", [CPU_EP], "", device="cpu")
    if device == "cpu":
        return _with_reason(cpu, "ort-cpu: device='cpu' requested")

    notes: list[str] = []
    gpu = detect_gpu()
    if gpu.count == 0:
        if device == "cuda" or requested == "trt":
            raise RuntimeError(
                f"device='cuda' / backend={requested!r} needs a CUDA GPU, none found ({gpu.how})"
            )
        return _with_reason(
            cpu, f"trt: skipped, no CUDA GPU ({gpu.how}); ort-cuda: skipped, no CUDA GPU; ort-cpu: chosen"
        )

    if requested in ("auto", "trt"):
        engines, why = _trt_engines(bundle_dir, manifest, gpu, precision)
        if engines is not None:
            return BackendChoice("trt", _ort_gpu_or_cpu(), f"trt: chosen ({why})", engines, device="cuda")
        if requested == "trt":
            raise RuntimeError(f"backend='trt' cannot run: {why}")
        notes.append(f"trt: skipped, {why}")

    providers = ort_providers()
    if CUDA_EP in providers:
        notes.append(f"ort-cuda: chosen ({CUDA_EP} on {gpu.name or 'GPU 0'})")
        return BackendChoice("ort", [CUDA_EP, CPU_EP], "; ".join(notes), device="cuda")
    hint = f"onnxruntime has no {CUDA_EP} (providers: {providers}; {PIP_ORT_GPU})"
    if device == "cuda":
        raise RuntimeError("device='cuda' cannot run: " + "; ".join([*notes, hint]))
    notes += [f"ort-cuda: skipped, {hint}", "ort-cpu: chosen"]
    return _with_reason(cpu, "; ".join(notes))


def _trt_engines(bundle_dir: Path, manifest: dict, gpu: GpuInfo, precision: str | None):
    """({graph: plan} for every core graph, summary) or (None, why not)."""
    if not cuda_python_available():
        return None, f"cuda-python not importable ({PIP_CUDA})"
    version, why = tensorrt_version()
    if version is None:
        return None, why
    if gpu.compute_capability is None:
        return None, f"could not read the GPU compute capability ({gpu.how})"
    hint = BUILD_HINT.format(bundle=bundle_dir)
    found: dict[str, Path] = {}
    for g in CORE_GRAPHS:
        r = engine_cache.find_engine(
            bundle_dir,
            manifest,
            g,
            compute_capability=gpu.compute_capability,
            trt_version=version,
            precision=precision,
        )
        if not r.ok:
            return None, f"no usable engine: {r.reason}; {hint}"
        found[g] = r.plan
    if "image" in manifest.get("graphs", {}):  # optional: the fused image path
        r = engine_cache.find_engine(
            bundle_dir,
            manifest,
            "image_path",
            compute_capability=gpu.compute_capability,
            trt_version=version,
            precision=precision,
        )
        if r.ok:
            found["image_path"] = r.plan
    key = engine_cache.engine_key(gpu.compute_capability, version)
    precisions = sorted({p.name.split(".")[-2] for p in found.values()})
    return found, f"engines {key} ({'/'.join(precisions)}) for {', '.join(found)}"


def _ort_gpu_or_cpu() -> list[str]:
    try:
        providers = ort_providers()
    except ImportError:
        return [CPU_EP]
    return [CUDA_EP, CPU_EP] if CUDA_EP in providers else [CPU_EP]


def _with_reason(choice: BackendChoice, reason: str) -> BackendChoice:
    return BackendChoice(choice.name, list(choice.providers), reason, dict(choice.engines), choice.device)


def describe(choice: BackendChoice) -> str:
    """One line for `l2m info`."""
    return f"backend={choice.name} device={choice.device} providers={choice.providers} -- {choice.reason}"


__all__ = [
    "BACKENDS",
    "DEVICES",
    "BackendChoice",
    "GpuInfo",
    "choose_backend",
    "describe",
    "detect_gpu",
    "tensorrt_version",
    "ort_providers",
]
