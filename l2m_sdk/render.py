"""Draw point trajectories as pictures: PNG stills, GIF animations, batches of images for models.

Shapes and conventions (the same in every build: numpy reference, CPU library, CUDA kernel):

- ``traj``: float array (T, N, 2) or (B, T, N, 2): T >= 1 frames of N >= 1 points, normalised image
  coordinates, x in [-1, 1] left to right, **y in [-1, 1] top to bottom**. Points outside the frame
  are fine; whatever falls outside is clipped.
- Output: (H, W, 3) uint8 RGB for one trajectory, (B, H, W, 3) for a batch; ``dtype=np.float32`` gives
  [0, 1] floats instead.
- Pixel centres: pixel (i, j) (column i, row j) is sampled at pixel-space point (i, j), and a
  normalised coordinate v lands at ``(v + 1) / 2 * size - 0.5``; so v = -1 is the left (top) edge of
  the image and v = +1 the right (bottom) edge.
- Drawing: each point's path is an anti-aliased polyline (a capsule per segment, ``line_width`` pixels
  wide, 1-px filtered edge); the positions at the last frame are dots of radius ``point_radius``
  pixels. Segments are composited in time order (later frames on top), then the dots.
- Colours (``colors``): "both" (default) gives each point its own hue, dim at frame 0 and bright at the
  last frame; "time" colours everything with a dark-to-bright ramp of time; "point" uses one flat hue
  per point; an (N, 3) array (floats in [0, 1] or uint8) sets each point's base colour, faded in time
  like "both".

The math lives in l2m_kernels/traj_raster.cuh. ``render`` runs it through the compiled CPU library
(l2m_sdk/_raster_cpu.so, built by setup.py) or, with ``device="cuda"``, the CUDA kernel;
``render_reference`` is the plain numpy version the tests compare them against.
"""

import ctypes
import logging
import sys
import threading
import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["render", "render_reference", "render_frames", "save_png", "save_gif", "COLOR_MODES"]

logger = logging.getLogger("l2m_sdk")

COLOR_MODES = {"time": 0, "point": 1, "both": 2}
MAX_SIZE = 8192
_ABI_VERSION = 1

# Mirrors of the header's constants, as float32 so that numpy rounds exactly like the compiled builds.
_F = np.float32
_COORD_LIMIT = _F(16384.0)
_FADE_MIN = _F(0.2)
_GOLDEN = _F(0.61803398875)
_HUE_OFFSET = _F(0.1)
_SATURATION = _F(0.8)
_RAMP = np.array(
    [
        [0.02, 0.02, 0.10],
        [0.30, 0.07, 0.45],
        [0.72, 0.18, 0.42],
        [0.97, 0.50, 0.18],
        [0.99, 0.93, 0.55],
    ],
    dtype=np.float32,
)


@dataclass(frozen=True)
class _Job:
    """Validated arguments; traj is C-contiguous float32 (B, T, N, 2)."""

    traj: np.ndarray
    batched: bool
    height: int
    width: int
    line_width: float
    point_radius: float
    color_mode: int
    colors: np.ndarray | None  # (N, 3) float32 in [0, 1]
    background: int  # packed 0xRRGGBB
    trails: bool
    as_float: bool


_SHAPE_HINT = "expected trajectories of shape (T, N, 2) or (B, T, N, 2) with T >= 1 frames and N >= 1 points"


def _check_traj(traj) -> tuple[np.ndarray, bool]:
    if np.iscomplexobj(traj):  # numpy would drop the imaginary part with only a warning
        raise ValueError(f"{_SHAPE_HINT} of real numbers; got a complex array")
    try:
        with np.errstate(over="ignore"):  # float64 beyond float32's range becomes inf: reported below
            arr = np.asarray(traj, dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{_SHAPE_HINT}; got an object numpy cannot turn into float32 ({e})") from e
    if arr.ndim not in (3, 4) or arr.shape[-1] != 2 or 0 in arr.shape:
        raise ValueError(f"{_SHAPE_HINT}; got shape {arr.shape}")
    if not np.isfinite(arr).all():
        bad = np.argwhere(~np.isfinite(arr))[0]
        raise ValueError(
            f"{_SHAPE_HINT} of finite values (normalised coordinates, about [-1, 1]); got NaN, inf or a "
            f"value beyond float32's range at index {tuple(int(i) for i in bad)}"
        )
    batched = arr.ndim == 4
    return np.ascontiguousarray(arr if batched else arr[None]), batched


def _check_size(size) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        hw = (size, size)
    else:
        try:
            hw = tuple(size)
        except TypeError:
            hw = ()
    if len(hw) != 2 or not all(isinstance(v, (int, np.integer)) and 1 <= v <= MAX_SIZE for v in hw):
        raise ValueError(f"size must be an int or an (H, W) pair of ints in [1, {MAX_SIZE}]; got {size!r}")
    return int(hw[0]), int(hw[1])


def _check_colors(colors, n_points: int) -> tuple[int, np.ndarray | None]:
    if isinstance(colors, str):
        if colors not in COLOR_MODES:
            raise ValueError(
                f"colors must be one of {sorted(COLOR_MODES)} or an (N, 3) array; got {colors!r}"
            )
        return COLOR_MODES[colors], None
    arr = np.asarray(colors)
    if arr.shape != (n_points, 3):
        raise ValueError(f"colors as an array must have shape (N, 3) = ({n_points}, 3); got {arr.shape}")
    if arr.dtype == np.uint8:
        arr = arr.astype(np.float32) / _F(255)
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not (np.isfinite(arr).all() and arr.min() >= 0 and arr.max() <= 1):
        raise ValueError("colors as floats must lie in [0, 1] (or pass uint8 in [0, 255])")
    return COLOR_MODES["both"], arr


def _check_background(background) -> int:
    names = {"black": (0, 0, 0), "white": (255, 255, 255)}
    rgb = names.get(background, background) if isinstance(background, str) else background
    try:
        vals = [float(v) for v in rgb]
    except (TypeError, ValueError):
        vals = []
    if len(vals) != 3 or not all(0 <= v <= 255 for v in vals):
        raise ValueError(f"background must be 'black', 'white' or (r, g, b) in [0, 255]; got {background!r}")
    r, g, b = (int(round(v)) for v in vals)
    return (r << 16) | (g << 8) | b


def _check_positive(name: str, value: float, allow_zero: bool = False) -> float:
    v = float(value)
    if not np.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        raise ValueError(
            f"{name} must be a finite number {'>=' if allow_zero else '>'} 0 (pixels); got {value!r}"
        )
    return v


def _prepare(traj, size, trails, line_width, point_radius, colors, background, dtype) -> _Job:
    arr, batched = _check_traj(traj)
    height, width = _check_size(size)
    short = min(height, width)
    lw = max(1.0, 0.008 * short) if line_width is None else _check_positive("line_width", line_width)
    pr = (
        max(1.5, 0.0135 * short)
        if point_radius is None
        else _check_positive("point_radius", point_radius, True)
    )
    mode, cols = _check_colors(colors, arr.shape[2])
    if np.dtype(dtype) not in (np.dtype(np.uint8), np.dtype(np.float32)):
        raise ValueError(f"dtype must be numpy.uint8 or numpy.float32; got {dtype!r}")
    return _Job(
        traj=arr,
        batched=batched,
        height=height,
        width=width,
        line_width=float(_F(lw)),
        point_radius=float(_F(pr)),
        color_mode=mode,
        colors=cols,
        background=_check_background(background),
        trails=bool(trails),
        as_float=np.dtype(dtype) == np.dtype(np.float32),
    )


# ----------------------------------------------------------------------------------------------------
# numpy reference: l2m_kernels/traj_raster.cuh transcribed, float32 throughout.


def _to_pixel(v: np.ndarray, size: int) -> np.ndarray:
    return np.clip((v + _F(1)) * _F(0.5) * _F(size) - _F(0.5), -_COORD_LIMIT, _COORD_LIMIT)


def _time_ramp(u: np.ndarray) -> np.ndarray:
    s = np.clip(u, _F(0), _F(1)) * _F(4)
    i = np.minimum(s.astype(np.int32), 3)
    f = (s - i.astype(np.float32))[..., None]
    a, b = _RAMP[i], _RAMP[i + 1]
    return a + (b - a) * f


def _point_hue(n: int) -> np.ndarray:
    x = _F(n) * _GOLDEN + _HUE_OFFSET
    h6 = (x - np.floor(x)) * _F(6)
    k = np.array([5, 3, 1], dtype=np.float32)
    m = k + h6
    m = np.where(m >= _F(6), m - _F(6), m)
    w = np.clip(np.minimum(m, _F(4) - m), _F(0), _F(1))
    return _F(1) - _SATURATION * w


def _prim_color(mode: int, u: np.ndarray, n: int, colors: np.ndarray | None) -> np.ndarray:
    if mode == COLOR_MODES["time"]:
        return _time_ramp(u)
    base = colors[n] if colors is not None else _point_hue(n)
    if mode == COLOR_MODES["point"]:
        return np.broadcast_to(base, u.shape + (3,))
    k = _FADE_MIN + (_F(1) - _FADE_MIN) * np.clip(u, _F(0), _F(1))
    return base * k[..., None]


def _numpy_image(traj: np.ndarray, job: _Job, img: np.ndarray) -> None:
    """Rasterise one (T, N, 2) trajectory into img (H, W, 3) float32, already filled with the background."""
    T, N = traj.shape[:2]
    H, W = job.height, job.width
    px = _to_pixel(traj[..., 0], W)
    py = _to_pixel(traj[..., 1], H)
    prims = []  # (ax, ay, bx, by, radius, t, n) in the header's primitive order
    if job.trails:
        r = _F(0.5) * _F(job.line_width)
        prims += [
            (px[t, n], py[t, n], px[t + 1, n], py[t + 1, n], r, t, n) for t in range(T - 1) for n in range(N)
        ]
    prims += [(px[-1, n], py[-1, n], px[-1, n], py[-1, n], _F(job.point_radius), T - 1, n) for n in range(N)]
    for ax, ay, bx, by, r, t, n in prims:
        e = r + _F(0.5)
        x0, x1 = min(ax, bx) - e, max(ax, bx) + e
        y0, y1 = min(ay, by) - e, max(ay, by) + e
        if x1 < 0 or y1 < 0 or x0 > W - 1 or y0 > H - 1:
            continue
        i0, i1 = int(np.ceil(max(x0, 0))), int(np.floor(min(x1, W - 1)))
        j0, j1 = int(np.ceil(max(y0, 0))), int(np.floor(min(y1, H - 1)))
        if i0 > i1 or j0 > j1:
            continue
        qx = np.arange(i0, i1 + 1, dtype=np.float32)[None, :] - ax
        qy = np.arange(j0, j1 + 1, dtype=np.float32)[:, None] - ay
        dx, dy = bx - ax, by - ay
        len2 = dx * dx + dy * dy
        if len2 > _F(1e-12):
            s = np.clip((qx * dx + qy * dy) / len2, _F(0), _F(1))
        else:
            s = np.zeros(np.broadcast_shapes(qx.shape, qy.shape), dtype=np.float32)
        ex, ey = qx - s * dx, qy - s * dy
        alpha = np.clip((r + _F(0.5)) - np.sqrt(ex * ex + ey * ey), _F(0), _F(1))
        if not (alpha > 0).any():
            continue
        u = (_F(t) + s) / _F(T - 1) if T > 1 else np.ones_like(s)
        c = _prim_color(job.color_mode, u, n, job.colors)
        tile = img[j0 : j1 + 1, i0 : i1 + 1]
        tile += alpha[..., None] * (c - tile)


def _unpack_background(rgb: int) -> np.ndarray:
    return np.array([(rgb >> 16) & 255, (rgb >> 8) & 255, rgb & 255], dtype=np.float32) / _F(255)


def _to_u8(img: np.ndarray) -> np.ndarray:
    return (np.clip(img, _F(0), _F(1)) * _F(255) + _F(0.5)).astype(np.uint8)


def _run_numpy(job: _Job) -> np.ndarray:
    B = job.traj.shape[0]
    out = np.empty((B, job.height, job.width, 3), dtype=np.float32)
    out[...] = _unpack_background(job.background)
    for b in range(B):
        _numpy_image(job.traj[b], job, out[b])
    return out if job.as_float else _to_u8(out)


# ----------------------------------------------------------------------------------------------------
# Compiled CPU build, loaded with ctypes on first use.

_lib = None
_lib_tried = False
_lib_lock = threading.Lock()


def _library_path() -> Path | None:
    here = Path(__file__).resolve().parent
    for cand in [here / "_raster_cpu.so", here / "_raster_cpu.dll", *sorted(here.glob("_raster_cpu*.so"))]:
        if cand.is_file():
            return cand
    return None


def _load_cpu_library():
    """The ctypes handle of the CPU rasterizer, or None (after one warning) when it is missing."""
    global _lib, _lib_tried
    if _lib_tried:
        return _lib
    with _lib_lock:
        if _lib_tried:
            return _lib
        path = _library_path()
        reason = "it was not built"
        if path is not None:
            try:
                lib = ctypes.CDLL(str(path))
                version = lib.l2m_raster_cpu_abi_version()
                if version != _ABI_VERSION:
                    raise OSError(f"ABI version {version}, expected {_ABI_VERSION} (stale build)")
                fn = lib.l2m_raster_cpu
                fn.restype = ctypes.c_int
                fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p] + [ctypes.c_int] * 5
                fn.argtypes += [ctypes.c_float, ctypes.c_float] + [ctypes.c_int] * 3
                fn.argtypes += [ctypes.c_void_p, ctypes.c_void_p]
                _lib = lib
            except (OSError, AttributeError) as e:
                reason = f"loading {path} failed: {e}"
        if _lib is None:
            logger.warning(
                "CPU rasterizer library unavailable (%s); rendering with the numpy reference, which is "
                "much slower. Rebuild with `pip install -e .` or `python setup.py build_ext --inplace`.",
                reason,
            )
        _lib_tried = True
        return _lib


def _run_cpu(job: _Job, lib) -> np.ndarray:
    B, T, N, _ = job.traj.shape
    shape = (B, job.height, job.width, 3)
    out_f = np.empty(shape, dtype=np.float32) if job.as_float else None
    out_u = None if job.as_float else np.empty(shape, dtype=np.uint8)
    rc = lib.l2m_raster_cpu(
        job.traj.ctypes.data,
        None if job.colors is None else job.colors.ctypes.data,
        B,
        T,
        N,
        job.height,
        job.width,
        job.line_width,
        job.point_radius,
        job.color_mode,
        int(job.trails),
        job.background,
        None if out_f is None else out_f.ctypes.data,
        None if out_u is None else out_u.ctypes.data,
    )
    if rc != 0:
        raise RuntimeError(
            f"CPU rasterizer failed with code {rc} for traj {job.traj.shape}, size {shape[1:3]}"
        )
    return out_f if job.as_float else out_u


# ----------------------------------------------------------------------------------------------------
# Public API


def render(
    traj,  # (T, N, 2) or (B, T, N, 2), normalised, y down
    size=224,  # int or (H, W)
    *,
    trails: bool = True,
    line_width: float | None = None,  # pixels; default max(1, 0.008 * min(H, W))
    point_radius: float | None = None,  # pixels; default max(1.5, 0.0135 * min(H, W))
    colors="both",  # "both" | "time" | "point" | (N, 3) array
    background="black",  # "black" | "white" | (r, g, b) in [0, 255]
    device: str = "cpu",  # "cpu" | "cuda"
    dtype=np.uint8,  # np.uint8 -> [0, 255]; np.float32 -> [0, 1]
) -> np.ndarray:
    """Draw trajectories: (T, N, 2) -> (H, W, 3), (B, T, N, 2) -> (B, H, W, 3). See the module docstring."""
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda'; got {device!r}")
    job = _prepare(traj, size, trails, line_width, point_radius, colors, background, dtype)
    if device == "cuda":
        from . import _cuda_raster

        out = _cuda_raster.render_job(job)
    else:
        lib = _load_cpu_library()
        out = _run_cpu(job, lib) if lib is not None else _run_numpy(job)
    return out if job.batched else out[0]


def render_reference(
    traj,  # (T, N, 2) or (B, T, N, 2)
    size=224,
    *,
    trails: bool = True,
    line_width: float | None = None,
    point_radius: float | None = None,
    colors="both",
    background="black",
    dtype=np.uint8,
) -> np.ndarray:
    """The numpy reference of `render` (same arguments, same output, slow): what the tests trust."""
    job = _prepare(traj, size, trails, line_width, point_radius, colors, background, dtype)
    out = _run_numpy(job)
    return out if job.batched else out[0]


def render_frames(traj, size=224, *, step: int = 1, **render_kwargs) -> np.ndarray:
    """Frames of an animation: frame k shows the motion from frame 0 up to frame k.

    (T, N, 2) -> (F, H, W, 3); (B, T, N, 2) -> (B, F, H, W, 3), for k = 0, step, 2 * step, ... and always
    the last frame. The colour ramp of each frame spans the motion shown so far (old = dim, now = bright).
    """
    arr, batched = _check_traj(traj)
    if not isinstance(step, (int, np.integer)) or step < 1:
        raise ValueError(f"step must be an int >= 1; got {step!r}")
    T = arr.shape[1]
    ks = list(range(0, T, int(step)))
    if ks[-1] != T - 1:
        ks.append(T - 1)
    frames = np.stack([render(arr[:, : k + 1], size, **render_kwargs) for k in ks], axis=1)
    return frames if batched else frames[0]


def _as_image(traj_or_img, render_kwargs) -> np.ndarray:
    arr = np.asarray(traj_or_img)
    if arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[-1] == 3:
        if render_kwargs:
            raise ValueError(
                f"got an image (H, W, 3) uint8, so render options {sorted(render_kwargs)} do not apply"
            )
        return arr
    if arr.ndim != 3:
        raise ValueError(
            f"expected one trajectory (T, N, 2) or one image (H, W, 3) uint8; got shape {arr.shape}"
        )
    return render(arr, **render_kwargs)


def save_png(path, traj_or_img, **render_kwargs) -> Path:
    """Write a PNG of one trajectory (T, N, 2) drawn by `render(**render_kwargs)`, or an (H, W, 3) image."""
    from PIL import Image

    path = Path(path)
    Image.fromarray(_as_image(traj_or_img, render_kwargs)).save(path, format="PNG", optimize=True)
    return path


_GIF_MAX_MS = 655_350  # GIF frame delays are 16-bit counts of 10 ms


def save_gif(path, traj, fps: float = 15, size=224, hold_last_s: float = 1.0, **render_kwargs) -> Path:
    """Write an animated GIF of one trajectory (T, N, 2), or of frames (F, H, W, 3) uint8 as they are.

    Frame k shows the motion up to frame k (`render_frames`); the last frame stays `hold_last_s` seconds.
    """
    from PIL import Image

    fps = float(fps)
    if not np.isfinite(fps) or fps < 1000.0 / _GIF_MAX_MS:
        raise ValueError(
            f"fps must be a number >= {1000.0 / _GIF_MAX_MS:.5f} (a GIF frame lasts at most "
            f"{_GIF_MAX_MS / 1000:.2f} s); got {fps!r}"
        )
    hold_last_s = float(hold_last_s)
    if not 0 <= hold_last_s <= _GIF_MAX_MS / 1000:  # also False for NaN
        raise ValueError(
            f"hold_last_s must be within [0, {_GIF_MAX_MS / 1000:.2f}] seconds; got {hold_last_s!r}"
        )
    arr = np.asarray(traj)
    if arr.dtype == np.uint8 and arr.ndim == 4 and arr.shape[-1] == 3:
        frames = arr
    elif arr.ndim == 3:
        frames = render_frames(arr, size, **render_kwargs)
    else:
        raise ValueError(
            f"expected one trajectory (T, N, 2) or frames (F, H, W, 3) uint8; got shape {arr.shape}"
        )
    ms = max(20, int(round(1000.0 / fps)))  # GIF delays are in 10 ms units; browsers clamp tiny ones
    durations = [ms] * len(frames)
    durations[-1] = max(ms, int(round(1000.0 * hold_last_s)))
    images = [Image.fromarray(f) for f in frames]
    path = Path(path)
    try:
        images[0].save(
            path, format="GIF", save_all=True, append_images=images[1:], duration=durations, loop=0
        )
    except OverflowError as e:  # Pillow merges identical frames and adds their delays past 16 bits
        path.unlink(missing_ok=True)
        raise ValueError(
            f"identical consecutive frames at fps={fps:g} add up to more than {_GIF_MAX_MS / 1000:.2f} s, "
            "the longest a GIF frame can last (Pillow merges them); raise fps or drop repeated frames"
        ) from e
    return path


class _CallableModule(types.ModuleType):
    """`l2m_sdk.render` names both this module and its main function; calling the module renders.

    Importing the submodule binds the package attribute ``l2m_sdk.render`` to the module, which would
    shadow the function of the same name; being callable keeps ``l2m_sdk.render(traj)`` working either way
    while ``l2m_sdk.render.save_png`` and friends stay reachable.
    """

    def __call__(self, *args, **kwargs):
        return render(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
