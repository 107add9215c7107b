"""Start-up costs, each measured in a fresh interpreter: import times, cold start (import + load + first
call) and the peak resident memory of that process. Also the GPU backends' availability probe.

Peak memory is VmHWM from /proc/self/status, not getrusage's ru_maxrss: Linux carries ru_maxrss across
exec, so a child started by a large parent (this benchmark) would report the parent's peak.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_PEAK = """
def _peak_mb():
    import resource
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
"""
_COLD_L2M = (
    _PEAK
    + """
import json, sys, time
t0 = time.perf_counter()
import l2m_sdk
t1 = time.perf_counter()
import l2m_sdk.model, onnxruntime, tokenizers  # what Model() imports on first use
t2 = time.perf_counter()
bundle = l2m_sdk.model.load_bundle(sys.argv[1])  # reads the manifest, checks every file's sha256
t3 = time.perf_counter()
m = l2m_sdk.load(bundle, backend="ort", device="cpu", threads=int(sys.argv[2]), precision=sys.argv[4])
t4 = time.perf_counter()
m.generate(sys.argv[3])
t5 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "load_s": t4 - t1, "runtime_import_s": t2 - t1,
                  "verify_s": t3 - t2, "sessions_s": t4 - t3, "first_call_s": t5 - t4, "total_s": t5 - t0,
                  "peak_rss_mb": _peak_mb()}))
"""
)
_COLD_REF = (
    _PEAK
    + """
import json, sys, time
t0 = time.perf_counter()
import torch
from benchmarks.reference import ReferencePipeline
t1 = time.perf_counter()
ref = ReferencePipeline(threads=int(sys.argv[2]))
t2 = time.perf_counter()
ref.generate([sys.argv[3]])
t3 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "first_call_s": t3 - t2, "total_s": t3 - t0,
                  "peak_rss_mb": _peak_mb()}))
"""
)
_IMPORT = """
import sys, time
t0 = time.perf_counter()
exec(sys.argv[1])
print(time.perf_counter() - t0)
"""


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def _py(code: str, *args: str) -> str:
    r = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=900
    )
    if r.returncode != 0:
        raise RuntimeError(f"subprocess failed ({r.returncode}): {r.stderr.strip()[-800:]}")
    return r.stdout.strip().splitlines()[-1]


def cold_start(
    kind: str, bundle: Path | None, threads: int, repeats: int, prompt: str, precision: str = "fp32"
) -> dict:
    """kind "l2m" (bundle dir, ONNX Runtime CPU, l2m_sdk.load's precision) or "reference": import + load
    + first generate in a fresh interpreter; the run with the median total of `repeats`, plus that
    process's peak RSS (MB)."""
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = json.loads(
            _py(_COLD_REF if kind == "reference" else _COLD_L2M, str(bundle), str(threads), prompt, precision)
        )
        out["process_wall_s"] = time.perf_counter() - t0  # includes interpreter start-up
        runs.append(out)
    runs.sort(key=lambda r: r["total_s"])
    return runs[len(runs) // 2]


def import_times(repeats: int) -> dict:
    """Seconds to import, each in a fresh interpreter (minimum over repeats)."""
    stmts = {
        "import l2m_sdk": "import l2m_sdk",
        "l2m_sdk + runtime (onnxruntime, tokenizers)": "import l2m_sdk.model, onnxruntime, tokenizers",
        "reference (torch, open_clip, matplotlib)": "import torch, open_clip, matplotlib.pyplot",
    }
    out = {k: min(float(_py(_IMPORT, v)) for _ in range(repeats)) for k, v in stmts.items()}
    # `python -X importtime`: l2m_sdk's own cumulative time, a cross-check of the first figure.
    r = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import l2m_sdk"],
        capture_output=True,
        text=True,
        env=_env(),
    )
    rows = [ln.split("|") for ln in r.stderr.splitlines() if ln.rstrip().endswith("| l2m_sdk")]
    if rows:
        out["import l2m_sdk (-X importtime, cumulative)"] = int(rows[-1][1]) / 1e6
    return out


def not_available(bundle: Path) -> list[dict]:
    """GPU rows: the reason from l2m_sdk.backends.choose_backend, or the probe's own reason."""
    from l2m_sdk.backends import choose_backend

    manifest = json.loads((bundle / "manifest.json").read_text())
    rows = []
    for label, backend, device in (("ORT CUDA", "ort", "cuda"), ("TensorRT", "trt", "cuda")):
        try:
            choice = choose_backend(backend, device, bundle, manifest)
            rows.append({"backend": label, "available": True, "reason": choice.reason})
        except (RuntimeError, ValueError) as e:
            rows.append({"backend": label, "available": False, "reason": str(e)})
    import torch

    ok = torch.cuda.is_available()
    rows.append(
        {
            "backend": "torch CUDA reference",
            "available": ok,
            "reason": "CUDA device present (not measured by this harness yet)"
            if ok
            else "torch sees no CUDA device",
        }
    )
    return rows
