"""TensorRT quickly-deployable AOT plugin ``l2m::TrajRaster`` and the ONNX node that maps to it.

The plugin runs l2m_kernels/traj_raster.cu (entry ``l2m_traj_raster_f32_nchw``) inside an engine:

    traj (B, T, N, 2) float32, normalised coordinates (y down)  ->  image (B, 3, H, W) float32 in [0, 1]

Attributes: height, width (pixels), line_width, point_radius (pixels, float), color_mode (0 time,
1 point, 2 both; l2m_sdk.render.COLOR_MODES), trails (0/1), background (packed 0xRRGGBB). The AOT
implementation returns NVRTC-compiled PTX, so the engine runs in a plain TensorRT runtime without
Python. Attributes are not serialized with AOT plugins; they reach the kernel as extra int scalars
(floats as bit patterns), which are baked into the engine.

Use::

    from l2m_kernels import trt_plugin
    trt_plugin.register()                    # once per process, before parsing / building
    node = trt_plugin.make_onnx_node("traj", "image", height=224, width=224)   # for the export side

``import tensorrt`` happens only inside `register`; everything else here is plain Python and is
unit-tested without TensorRT.
"""

import numpy as np

from l2m_sdk._cuda_raster import (
    DEFAULT_PTX_ARCH,
    ENTRY_F32_NCHW,
    kernel_scalars,
    launch_config,
    nvrtc_compile,
)

PLUGIN_NAMESPACE = "l2m"
PLUGIN_NAME = "TrajRaster"
PLUGIN_ID = f"{PLUGIN_NAMESPACE}::{PLUGIN_NAME}"
ONNX_DOMAIN = "l2m"
KERNEL_NAME = ENTRY_F32_NCHW
# Attribute order = the register function's attribute order = the kernel's scalar order after B, T, N.
ATTRIBUTES = ("height", "width", "line_width", "point_radius", "color_mode", "trails", "background")
MAX_SIZE = 8192

_registered = False
_ptx_cache: dict[str, str] = {}


def check_attributes(height, width, line_width, point_radius, color_mode, trails, background) -> None:
    """Raise ValueError for attribute values the kernel cannot honour (TensorRT reports it at build)."""
    for name, v in (("height", height), ("width", width)):
        if not (isinstance(v, (int, np.integer)) and 1 <= v <= MAX_SIZE):
            raise ValueError(f"TrajRaster {name} must be an int in [1, {MAX_SIZE}]; got {v!r}")
    if not (np.isfinite(line_width) and line_width > 0):
        raise ValueError(f"TrajRaster line_width must be > 0 pixels; got {line_width!r}")
    if not (np.isfinite(point_radius) and point_radius >= 0):
        raise ValueError(f"TrajRaster point_radius must be >= 0 pixels; got {point_radius!r}")
    if color_mode not in (0, 1, 2):
        raise ValueError(f"TrajRaster color_mode must be 0 (time), 1 (point) or 2 (both); got {color_mode!r}")
    if trails not in (0, 1):
        raise ValueError(f"TrajRaster trails must be 0 or 1; got {trails!r}")
    if not (isinstance(background, (int, np.integer)) and 0 <= background <= 0xFFFFFF):
        raise ValueError(f"TrajRaster background must be a packed 0xRRGGBB int; got {background!r}")


def output_shape(traj_shape, height: int, width: int) -> tuple:
    """(B, 3, H, W) from the input shape (B, T, N, 2); entries may be TensorRT shape expressions."""
    if len(traj_shape) != 4:
        raise ValueError(f"TrajRaster input must have shape (B, T, N, 2); got rank {len(traj_shape)}")
    return (traj_shape[0], 3, int(height), int(width))


def aot_launch(traj_shape, height, width, line_width, point_radius, color_mode, trails, background) -> dict:
    """Everything the AOT implementation returns except the PTX, from (possibly symbolic) input dims."""
    batch, frames, points = traj_shape[0], traj_shape[1], traj_shape[2]
    grid, block, shared_mem = launch_config(height, width, batch)
    scalars = kernel_scalars(
        batch, frames, points, height, width, line_width, point_radius, color_mode, trails, background
    )
    return {"kernel": KERNEL_NAME, "grid": grid, "block": block, "shared_mem": shared_mem, "scalars": scalars}


def plugin_ptx(arch: str = DEFAULT_PTX_ARCH) -> str:
    """NVRTC PTX of the rasterizer, compiled once per process and arch."""
    if arch not in _ptx_cache:
        _ptx_cache[arch] = nvrtc_compile(arch).decode()
    return _ptx_cache[arch]


def make_onnx_node(
    traj: str,
    image: str,
    *,
    height: int = 224,
    width: int = 224,
    line_width: float = 1.792,
    point_radius: float = 3.024,
    color_mode: int = 2,
    trails: int = 1,
    background: int = 0x000000,
    name: str | None = None,
):
    """ONNX NodeProto ``TrajRaster`` (domain and plugin_namespace "l2m") that TensorRT parses to the plugin.

    traj names a (B, T, N, 2) float32 value, image the (B, 3, H, W) float32 output. The defaults match
    l2m_sdk.render at 224 px. Add ``onnx.helper.make_opsetid("l2m", 1)`` to the model's opset imports.
    """
    try:
        from onnx import helper
    except ImportError as e:
        raise RuntimeError('making the TrajRaster ONNX node needs onnx; pip install "l2m[export]"') from e
    check_attributes(height, width, line_width, point_radius, color_mode, trails, background)
    return helper.make_node(
        PLUGIN_NAME,
        [traj],
        [image],
        name=name or f"{PLUGIN_NAME}_{image}",
        domain=ONNX_DOMAIN,
        plugin_namespace=PLUGIN_NAMESPACE,
        height=int(height),
        width=int(width),
        line_width=float(line_width),
        point_radius=float(point_radius),
        color_mode=int(color_mode),
        trails=int(trails),
        background=int(background),
    )


def register() -> None:
    """Register l2m::TrajRaster (descriptor, AOT implementation, autotune) with TensorRT; idempotent."""
    global _registered
    if _registered:
        return
    try:
        import tensorrt as trt
        import tensorrt.plugin as trtp
    except ImportError as e:
        raise RuntimeError("the TrajRaster plugin needs TensorRT 11 (pip install tensorrt)") from e
    # The decorators read these annotations at decoration time (no `from __future__ import annotations`
    # in this module for that reason), so they refer to the real tensorrt.plugin classes.
    from typing import Tuple, Union  # noqa: UP035 - TensorRT validates typing.Tuple/Union forms

    @trtp.register(PLUGIN_ID)
    def _describe(
        traj: trtp.TensorDesc,
        height: int,
        width: int,
        line_width: float,
        point_radius: float,
        color_mode: int,
        trails: int,
        background: int,
    ) -> trtp.TensorDesc:
        check_attributes(height, width, line_width, point_radius, color_mode, trails, background)
        return trtp.from_shape_expr(output_shape(traj.shape_expr, height, width), dtype=trt.float32)

    @trtp.autotune(PLUGIN_ID)
    def _autotune(traj: trtp.TensorDesc, outputs: Tuple[trtp.TensorDesc]) -> list[trtp.AutoTuneCombination]:  # noqa: UP006
        return [trtp.AutoTuneCombination("FP32, FP32", "LINEAR")]

    @trtp.aot_impl(PLUGIN_ID)
    def _aot(
        traj: trtp.TensorDesc,
        height: int,
        width: int,
        line_width: float,
        point_radius: float,
        color_mode: int,
        trails: int,
        background: int,
        outputs: Tuple[trtp.TensorDesc],  # noqa: UP006
        tactic: int,
    ) -> Tuple[Union[str, bytes], Union[str, bytes], trtp.KernelLaunchParams, trtp.SymIntExprs]:  # noqa: UP006, UP007
        cfg = aot_launch(
            traj.shape_expr, height, width, line_width, point_radius, color_mode, trails, background
        )
        launch = trtp.KernelLaunchParams()
        launch.grid_x, launch.grid_y, launch.grid_z = cfg["grid"]
        launch.block_x, launch.block_y, launch.block_z = cfg["block"]
        launch.shared_mem = cfg["shared_mem"]
        extra = trtp.SymIntExprs(len(cfg["scalars"]))
        for i, v in enumerate(cfg["scalars"]):
            extra[i] = trtp.SymInt32(v)
        return cfg["kernel"], plugin_ptx(), launch, extra

    _registered = True
