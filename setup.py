"""Build script: package metadata lives in pyproject.toml; this file adds the CPU rasterizer.

l2m_kernels/raster_cpu.cpp (with the shared header l2m_kernels/traj_raster.cuh) becomes
l2m_sdk/_raster_cpu.so, a plain C shared library that l2m_sdk.render loads with ctypes (it is not a
Python extension module and has no PyInit). Building it is optional: without a C++ compiler the install
still succeeds, with a warning, and l2m_sdk.render falls back to its numpy reference.

Development: `python setup.py build_ext --inplace` or `pip install -e .` puts the library in l2m_sdk/.
"""

import platform
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

# Portable flags: wheels must run on other x86-64 machines, so no -march=native. -ffp-contract=off keeps
# the arithmetic identical to the numpy reference (no fused multiply-add where the source has none).
_FLAGS = ["-O3", "-std=c++17", "-fvisibility=hidden", "-ffp-contract=off"]
if platform.machine().lower() in ("x86_64", "amd64"):
    _FLAGS.append("-march=x86-64-v2")


class _BuildPlainLibrary(build_ext):
    """Builds the rasterizer as a plain shared library named _raster_cpu.so, and never fails the install."""

    def get_ext_filename(self, fullname):
        # No Python ABI tag: the library does not link against Python, ctypes loads it by this name.
        return fullname.replace(".", "/") + (".dll" if sys.platform == "win32" else ".so")

    def get_export_symbols(self, ext):
        return []  # no PyInit_* to export (only matters on Windows)

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as e:  # compiler missing or failing: keep the pure-Python install working
            self.warn(
                f"could not build the CPU rasterizer ({type(e).__name__}: {e}); "
                "l2m_sdk.render will use its slower numpy reference"
            )


_RASTER = Extension(
    "l2m_sdk._raster_cpu",
    sources=["l2m_kernels/raster_cpu.cpp"],
    include_dirs=["l2m_kernels"],
    depends=["l2m_kernels/traj_raster.cuh"],
    extra_compile_args=[] if sys.platform == "win32" else _FLAGS,
    language="c++",
    optional=True,
)

setup(ext_modules=[_RASTER], cmdclass={"build_ext": _BuildPlainLibrary})
