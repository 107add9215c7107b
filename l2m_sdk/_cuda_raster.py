"""GPU side of the trajectory rasterizer: NVRTC compile of l2m_kernels/traj_raster.cu, a cuda-python launcher.

Used by ``l2m_sdk.render(..., device="cuda")`` and, for the compile step and the launch geometry, by the
TensorRT plugin (l2m_kernels/trt_plugin.py). cuda-python is imported only when a function here needs it.

Kernel ABI (see l2m_kernels/traj_raster.cu): grid (ceil(W / 16), ceil(H / 16), B), block (16, 16, 1), no
dynamic shared memory; arguments are input pointers, then 32-bit int scalars
(B, T, N, H, W, line_width bits, point_radius bits, color_mode, trails, background 0xRRGGBB), then the
output pointer. Floats travel as IEEE-754 bit patterns because TensorRT AOT plugins pass only integer
scalars.
"""

import ctypes
import struct
import threading
from pathlib import Path

import numpy as np

KERNEL_DIR = Path(__file__).resolve().parent.parent / "l2m_kernels"  # same relative place in a wheel
KERNEL_SOURCE = "traj_raster.cu"
KERNEL_HEADER = "traj_raster.cuh"

ENTRY_F32_NCHW = "l2m_traj_raster_f32_nchw"  # TensorRT: (traj, scalars..., out)
ENTRY_U8_NHWC = "l2m_traj_raster_u8_nhwc"  # SDK: (traj, colors, scalars..., out)
ENTRY_F32_NHWC = "l2m_traj_raster_f32_nhwc"  # SDK, float output
ENTRIES = (ENTRY_F32_NCHW, ENTRY_U8_NHWC, ENTRY_F32_NHWC)

TILE = 16
# --fmad=false: no contraction into FMA, so the GPU rounds exactly like the CPU build and numpy.
NVRTC_OPTIONS = ("--std=c++17", "--fmad=false")
DEFAULT_PTX_ARCH = "compute_80"  # PTX JIT-compiles forward to sm_80 and newer (A100, H100, ...)

_GPU_HINT = 'install the GPU extras: pip install "l2m[gpu]" (cuda-python and nvidia-cuda-nvrtc)'


def cdiv(a, b):
    """Ceiling division for ints (TensorRT symbolic expressions bring their own)."""
    return (a + b - 1) // b


def float_bits(x: float) -> int:
    """The int32 whose bits are the float32 x: how float attributes reach the kernel."""
    return struct.unpack("<i", struct.pack("<f", float(x)))[0]


def launch_config(height: int, width: int, batch):
    """((grid_x, grid_y, grid_z), (block_x, block_y, block_z), dynamic smem bytes); batch may be symbolic."""
    return (cdiv(int(width), TILE), cdiv(int(height), TILE), batch), (TILE, TILE, 1), 0


def kernel_scalars(
    batch, frames, points, height, width, line_width, point_radius, color_mode, trails, background
) -> list:
    """The kernel's int scalars in ABI order; batch/frames/points pass through (they may be symbolic)."""
    return [
        batch,
        frames,
        points,
        int(height),
        int(width),
        float_bits(line_width),
        float_bits(point_radius),
        int(color_mode),
        int(bool(trails)),
        int(background) & 0xFFFFFF,
    ]


def kernel_source() -> tuple[str, str]:
    """(kernel .cu text, header text) read from the l2m_kernels/ directory next to l2m_sdk."""
    try:
        return (KERNEL_DIR / KERNEL_SOURCE).read_text(), (KERNEL_DIR / KERNEL_HEADER).read_text()
    except FileNotFoundError as e:
        raise FileNotFoundError(
            f"CUDA rasterizer source missing: expected {KERNEL_DIR / KERNEL_SOURCE}"
        ) from e


def _nvrtc():
    try:
        from cuda.bindings import nvrtc
    except ImportError as e:
        raise RuntimeError(f"compiling the CUDA rasterizer needs cuda-python; {_GPU_HINT}") from e
    return nvrtc


def _driver():
    try:
        from cuda.bindings import driver
    except ImportError as e:
        raise RuntimeError(f"the CUDA rasterizer needs cuda-python; {_GPU_HINT}") from e
    return driver


def _ok(result, what: str):
    """Unpack a cuda-python (err, value...) tuple, raising on error."""
    err, *rest = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise RuntimeError(f"{what} failed: {err!r}")
    return rest[0] if len(rest) == 1 else rest


def nvrtc_compile(arch: str = DEFAULT_PTX_ARCH, extra_options=()) -> bytes:
    """Compile l2m_kernels/traj_raster.cu with NVRTC.

    arch "compute_XY" returns PTX text (bytes, NUL-free); "sm_XY" returns a cubin for that GPU. Needs
    no GPU. Raises RuntimeError with NVRTC's log on a compile error.
    """
    nvrtc = _nvrtc()
    src, header = kernel_source()
    prog = _ok(
        nvrtc.nvrtcCreateProgram(
            src.encode(), KERNEL_SOURCE.encode(), 1, [header.encode()], [KERNEL_HEADER.encode()]
        ),
        "nvrtcCreateProgram",
    )
    try:
        opts = [o.encode() for o in (*NVRTC_OPTIONS, f"--gpu-architecture={arch}", *extra_options)]
        (err,) = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)
        if int(err) != 0:
            size = _ok(nvrtc.nvrtcGetProgramLogSize(prog), "nvrtcGetProgramLogSize")
            log = b" " * size
            _ok(nvrtc.nvrtcGetProgramLog(prog, log), "nvrtcGetProgramLog")
            raise RuntimeError(
                f"NVRTC could not compile {KERNEL_SOURCE} for {arch}:\n{log.decode(errors='replace')}"
            )
        if arch.startswith("sm_"):
            size = _ok(nvrtc.nvrtcGetCUBINSize(prog), "nvrtcGetCUBINSize")
            image = b" " * size
            _ok(nvrtc.nvrtcGetCUBIN(prog, image), "nvrtcGetCUBIN")
            return image
        size = _ok(nvrtc.nvrtcGetPTXSize(prog), "nvrtcGetPTXSize")
        image = b" " * size
        _ok(nvrtc.nvrtcGetPTX(prog, image), "nvrtcGetPTX")
        return image.rstrip(b"\0")
    finally:
        nvrtc.nvrtcDestroyProgram(prog)


def nvrtc_version() -> tuple[int, int]:
    major, minor = _ok(_nvrtc().nvrtcVersion(), "nvrtcVersion")
    return int(major), int(minor)


class _Launcher:
    """One CUDA context (the device's primary context), module and stream; calls are serialised."""

    def __init__(self, device: int = 0):
        drv = _driver()
        self._drv = drv
        try:
            _ok(drv.cuInit(0), "cuInit")
        except Exception as e:  # cuda-python raises its own error when libcuda.so is absent
            raise RuntimeError(f"no usable NVIDIA driver / GPU for device='cuda': {e}") from e
        dev = _ok(drv.cuDeviceGet(device), "cuDeviceGet")
        attr = drv.CUdevice_attribute
        major = _ok(
            drv.cuDeviceGetAttribute(attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev), "cc major"
        )
        minor = _ok(
            drv.cuDeviceGetAttribute(attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, dev), "cc minor"
        )
        self.arch = f"sm_{major}{minor}"
        self._ctx = _ok(drv.cuDevicePrimaryCtxRetain(dev), "cuDevicePrimaryCtxRetain")
        _ok(drv.cuCtxSetCurrent(self._ctx), "cuCtxSetCurrent")
        # A cubin for this exact GPU avoids the driver's PTX JIT (and PTX-version mismatches); NVRTC
        # builds that predate the GPU only know PTX, which the driver then JIT-compiles.
        try:
            image = nvrtc_compile(self.arch)
        except RuntimeError:
            image = nvrtc_compile(DEFAULT_PTX_ARCH) + b"\0"
        self._module = _ok(drv.cuModuleLoadData(image), "cuModuleLoadData")
        self._fn = {name: _ok(drv.cuModuleGetFunction(self._module, name.encode()), name) for name in ENTRIES}
        self._stream = _ok(drv.cuStreamCreate(0), "cuStreamCreate")
        self._lock = threading.Lock()

    def render(
        self, traj: np.ndarray, colors, height, width, line_width, point_radius, mode, trails, bg, as_float
    ):
        """traj (B, T, N, 2) float32 -> (B, H, W, 3) uint8, or float32 when as_float."""
        drv = self._drv
        B, T, N, _ = traj.shape
        out = np.empty((B, height, width, 3), dtype=np.float32 if as_float else np.uint8)
        grid, block, smem = launch_config(height, width, B)
        scalars = kernel_scalars(B, T, N, height, width, line_width, point_radius, mode, trails, bg)
        with self._lock:
            _ok(drv.cuCtxSetCurrent(self._ctx), "cuCtxSetCurrent")  # current-ness is per thread
            bufs = []
            try:
                for arr in (traj, colors, out):
                    bufs.append(_ok(drv.cuMemAlloc(arr.nbytes), "cuMemAlloc") if arr is not None else None)
                for arr, buf in zip((traj, colors), bufs[:2]):
                    if buf is not None:
                        _ok(drv.cuMemcpyHtoDAsync(buf, arr.ctypes.data, arr.nbytes, self._stream), "HtoD")
                ptrs = [int(b) if b is not None else 0 for b in bufs]
                args = (ptrs[0], ptrs[1], *scalars, ptrs[2])
                types = (ctypes.c_void_p, ctypes.c_void_p, *[ctypes.c_int] * len(scalars), ctypes.c_void_p)
                fn = self._fn[ENTRY_F32_NHWC if as_float else ENTRY_U8_NHWC]
                _ok(
                    drv.cuLaunchKernel(fn, *grid, *block, smem, self._stream, (args, types), 0),
                    "cuLaunchKernel",
                )
                _ok(drv.cuMemcpyDtoHAsync(out.ctypes.data, bufs[2], out.nbytes, self._stream), "DtoH")
                _ok(drv.cuStreamSynchronize(self._stream), "cuStreamSynchronize")
            finally:
                for buf in bufs:
                    if buf is not None:
                        drv.cuMemFree(buf)
        return out


_launcher: _Launcher | None = None
_launcher_lock = threading.Lock()


def get_launcher() -> _Launcher:
    global _launcher
    with _launcher_lock:
        if _launcher is None:
            _launcher = _Launcher()
        return _launcher


def render_job(job) -> np.ndarray:
    """Run a validated l2m_sdk.render._Job on the GPU: (B, H, W, 3) uint8 or float32."""
    return get_launcher().render(
        job.traj,
        job.colors,
        job.height,
        job.width,
        job.line_width,
        job.point_radius,
        job.color_mode,
        job.trails,
        job.background,
        job.as_float,
    )
