"""Build helpers for the CUDA rasterizer: nvcc command lines, NVRTC compile, register/shared-memory report.

CI and a person use the same entry point::

    python -m l2m_kernels.build --arch sm_80 sm_90 --out build/kernels

compiles l2m_kernels/traj_raster.cu with nvcc to PTX and (through ptxas) cubin for each architecture,
compiles it once more with NVRTC (cuda-python) when available, and prints each kernel's registers,
shared memory, stack and spills. Nothing here needs a GPU.
"""

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

KERNEL_DIR = Path(__file__).resolve().parent
SOURCE = KERNEL_DIR / "traj_raster.cu"
# Same flags as NVRTC (l2m_sdk._cuda_raster.NVRTC_OPTIONS): no FMA contraction, so every build rounds alike.
NVCC_FLAGS = ("-std=c++17", "-O3", "--fmad=false")

_PTXAS_ENTRY = re.compile(r"(?:Compiling entry function|Function properties for) '?([A-Za-z_]\w*)'?")
_PTXAS_USED = re.compile(r"Used (\d+) registers(?:, used (\d+) barriers)?(?:, (\d+) bytes smem)?")
_PTXAS_STACK = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")


def find_nvcc() -> str | None:
    return shutil.which("nvcc") or next((p for p in ("/usr/local/cuda/bin/nvcc",) if Path(p).exists()), None)


def _check_arch(arch: str) -> str:
    if not re.fullmatch(r"sm_\d{2,3}[af]?", arch):
        raise ValueError(f"arch must look like 'sm_80' or 'sm_90'; got {arch!r}")
    return arch


def nvcc_command(
    arch: str, kind: str, out: Path, nvcc: str = "nvcc", verbose_ptxas: bool = False
) -> list[str]:
    """nvcc argv: kind "ptx" -> compute_XY PTX, "cubin" -> sm_XY SASS (nvcc runs ptxas)."""
    arch = _check_arch(arch)
    if kind not in ("ptx", "cubin"):
        raise ValueError(f"kind must be 'ptx' or 'cubin'; got {kind!r}")
    cmd = [nvcc, *NVCC_FLAGS, f"-I{KERNEL_DIR}", f"-arch={arch}", f"-{kind}", str(SOURCE), "-o", str(out)]
    if verbose_ptxas and kind == "cubin":
        cmd[1:1] = ["-Xptxas", "-v"]
    return cmd


def ptxas_command(ptx: Path, arch: str, out: Path, ptxas: str = "ptxas") -> list[str]:
    """ptxas argv assembling a PTX file (e.g. NVRTC's) to a cubin, with the resource report on stderr."""
    return [ptxas, f"-arch={_check_arch(arch)}", "-v", str(ptx), "-o", str(out)]


def parse_ptxas_report(text: str) -> dict[str, dict[str, int]]:
    """{kernel: {registers, barriers, smem_bytes, stack_bytes, spill_stores, spill_loads}} from `ptxas -v`."""
    report: dict[str, dict[str, int]] = {}
    current = None
    for line in text.splitlines():
        m = _PTXAS_ENTRY.search(line)
        if m:
            current = report.setdefault(m.group(1), {})
            continue
        if current is None:
            continue
        m = _PTXAS_STACK.search(line)
        if m:
            current.update(stack_bytes=int(m[1]), spill_stores=int(m[2]), spill_loads=int(m[3]))
        m = _PTXAS_USED.search(line)
        if m:
            current.update(registers=int(m[1]), barriers=int(m[2] or 0), smem_bytes=int(m[3] or 0))
    return report


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout}{proc.stderr}")
    return proc


def compile_nvcc(arch: str, out_dir: Path, nvcc: str | None = None) -> dict:
    """PTX and cubin for one arch: {"ptx": path, "cubin": path, "resources": parse_ptxas_report(...)}."""
    nvcc = nvcc or find_nvcc()
    if nvcc is None:
        raise FileNotFoundError("nvcc not found on PATH (install the CUDA toolkit)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ptx = out_dir / f"traj_raster_{arch}.ptx"
    cubin = out_dir / f"traj_raster_{arch}.cubin"
    _run(nvcc_command(arch, "ptx", ptx, nvcc))
    proc = _run(nvcc_command(arch, "cubin", cubin, nvcc, verbose_ptxas=True))
    return {"ptx": ptx, "cubin": cubin, "resources": parse_ptxas_report(proc.stdout + proc.stderr)}


def nvrtc_ptx(arch: str = "compute_80") -> str:
    """PTX text from NVRTC (cuda-python); the same compile the SDK and the TensorRT plugin do."""
    from l2m_sdk._cuda_raster import nvrtc_compile

    return nvrtc_compile(arch).decode()


def ptx_version(ptx: str) -> tuple[int, int]:
    """The PTX ISA version (.version X.Y): a driver loads PTX only up to the ISA its CUDA version knows."""
    m = re.search(r"^\s*\.version\s+(\d+)\.(\d+)", ptx, re.M)
    if not m:
        raise ValueError("no .version directive in PTX")
    return int(m[1]), int(m[2])


def ptx_entry_params(ptx: str) -> dict[str, list[str]]:
    """{entry name: [param types in order]} from PTX, to check the kernel ABI against its callers."""
    entries = {}
    for m in re.finditer(r"\.entry\s+(\w+)\s*\((.*?)\)", ptx, re.S):
        entries[m[1]] = re.findall(r"\.param\s+\.(\w+)", m[2])
    return entries


def format_report(report: dict[str, dict[str, int]]) -> str:
    lines = []
    for name, r in sorted(report.items()):
        lines.append(
            f"  {name}: {r.get('registers', '?')} registers, {r.get('smem_bytes', '?')} B static smem, "
            f"{r.get('stack_bytes', '?')} B stack, "
            f"spills {r.get('spill_stores', '?')}/{r.get('spill_loads', '?')} B"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", nargs="+", default=["sm_80", "sm_90"])
    ap.add_argument("--out", type=Path, default=Path("build/kernels"))
    ap.add_argument("--no-nvrtc", action="store_true", help="skip the NVRTC compile")
    args = ap.parse_args(argv)
    for arch in args.arch:
        res = compile_nvcc(arch, args.out)
        print(f"nvcc {arch}: {res['ptx'].name} + {res['cubin'].name}")
        print(format_report(res["resources"]))
    if not args.no_nvrtc:
        ptx = nvrtc_ptx()
        path = args.out / "traj_raster_nvrtc_compute_80.ptx"
        path.write_text(ptx)
        v = ptx_version(ptx)
        print(f"nvrtc compute_80: PTX ISA {v[0]}.{v[1]}, entries {sorted(ptx_entry_params(ptx))}")
        ptxas = shutil.which("ptxas")
        if ptxas:
            proc = _run(ptxas_command(path, "sm_90", path.with_suffix(".sm_90.cubin"), ptxas))
            print("nvrtc PTX through ptxas sm_90:")
            print(format_report(parse_ptxas_report(proc.stdout + proc.stderr)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
