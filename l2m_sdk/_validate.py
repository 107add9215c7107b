"""Input checks at the public boundary: typed errors that say what was expected and how to fix it."""

from __future__ import annotations

import numbers

import numpy as np

MAX_POINTS = 4096
MAX_FRAMES = 1024
# Normalised coordinates: the frame is [-1, 1]; motion may leave it, but beyond 10 frame half-widths is a
# units mistake (pixel coordinates, typically tens to thousands), rejected rather than silently encoded.
MAX_ABS_COORD = 10.0


def _as_float_array(x, name: str) -> np.ndarray:
    if x is None:
        raise TypeError(f"{name} must be an array of numbers, got None")
    if isinstance(x, (str, bytes)):
        raise TypeError(f"{name} must be an array of numbers, got {type(x).__name__}")
    try:
        a = np.asarray(x)
    except (ValueError, TypeError) as e:  # ragged nested lists
        raise ValueError(f"{name} could not be read as a numeric array ({e})") from e
    if a.dtype == object or not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
        raise TypeError(f"{name} must hold numbers, got dtype {a.dtype}")
    if np.iscomplexobj(a):
        raise TypeError(f"{name} must be real, got complex dtype {a.dtype}")
    return a


def _finite(a: np.ndarray, name: str, limit: float | None = None) -> None:
    if not np.isfinite(a).all():
        bad = int((~np.isfinite(a)).sum())
        raise ValueError(f"{name} contains {bad} NaN or infinite values; pass finite coordinates")
    # max/min, not abs().max(): abs(-128) is -128 in int8, which let int8 pixel coordinates through
    peak = max(float(a.max()), -float(a.min())) if a.size else 0.0
    if limit is not None and peak > limit:
        raise ValueError(
            f"{name} has coordinates up to {peak:.3g}; expected normalised image "
            f"coordinates in about [-1, 1] (x right, y down): divide pixels by size/2 and subtract 1"
        )


def trajectories(x, name: str = "trajectories") -> tuple[np.ndarray, bool]:
    """(T, N, 2) or (B, T, N, 2) -> contiguous float32 (B, T, N, 2), was_single."""
    a = _as_float_array(x, name)
    if a.ndim == 3:
        a, single = a[None], True
    elif a.ndim == 4:
        single = False
    else:
        raise ValueError(f"{name} must have shape (T, N, 2) or (B, T, N, 2), got {a.shape}")
    B, T, N, C = a.shape
    if C != 2:
        raise ValueError(f"{name} last axis must be 2 (x, y), got shape {a.shape}")
    if B == 0:
        raise ValueError(f"{name} is an empty batch (B = 0)")
    if N < 1:
        raise ValueError(f"{name} has N = 0 points; need at least 1 (shape {a.shape})")
    if N > MAX_POINTS:
        raise ValueError(f"{name} has N = {N} points; at most {MAX_POINTS} are supported")
    if T < 2:
        raise ValueError(f"{name} has T = {T} frames; need at least 2 to describe motion (shape {a.shape})")
    if T > MAX_FRAMES:
        raise ValueError(f"{name} has T = {T} frames; at most {MAX_FRAMES} are supported")
    _finite(a, name, MAX_ABS_COORD)
    return np.ascontiguousarray(a, dtype=np.float32), single


def points(x, batch: int, name: str = "initial_points") -> np.ndarray:
    """(N, 2) or (B, N, 2) -> contiguous float32 (B, N, 2) broadcast to `batch`."""
    a = _as_float_array(x, name)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3 or a.shape[-1] != 2:
        raise ValueError(f"{name} must have shape (N, 2) or (B, N, 2), got {a.shape}")
    if a.shape[1] < 1:
        raise ValueError(f"{name} has N = 0 points; need at least 1")
    if a.shape[1] > MAX_POINTS:
        raise ValueError(f"{name} has N = {a.shape[1]} points; at most {MAX_POINTS} are supported")
    if a.shape[0] not in (1, batch):
        raise ValueError(
            f"{name} has batch {a.shape[0]} but there are {batch} prompts; pass (N, 2) or ({batch}, N, 2)"
        )
    _finite(a, name, MAX_ABS_COORD)
    return np.ascontiguousarray(np.broadcast_to(a, (batch, *a.shape[1:])), dtype=np.float32)


def embeddings(x, dim: int, name: str = "embedding") -> tuple[np.ndarray, bool]:
    """(D,) or (B, D) -> float32 (B, D) unit rows, was_single."""
    a = _as_float_array(x, name)
    single = a.ndim == 1
    if single:
        a = a[None]
    if a.ndim != 2 or a.shape[1] != dim:
        raise ValueError(f"{name} must have shape ({dim},) or (B, {dim}), got {np.shape(x)}")
    if a.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (B = 0)")
    _finite(a, name)
    # Normalise in float64 after dividing by each row's largest |component|: any finite non-zero row
    # (1e-30 or 1e300 alike) becomes a unit vector without overflow or underflow in the norm. In blocks
    # of rows: whole-gallery float64 temporaries (300 MB for 100k x 384) cost seconds of fresh-page
    # faults on a VM, a block's stay in cache.
    out = np.empty(a.shape, np.float32)
    for i in range(0, a.shape[0], 2048):
        b = a[i : i + 2048].astype(np.float64)
        peak = np.maximum(b.max(axis=1), -b.min(axis=1))[:, None]
        if (peak == 0).any():
            raise ValueError(f"{name} has a zero vector; embeddings must be non-zero")
        b /= peak
        b /= np.sqrt(np.einsum("bd,bd->b", b, b))[:, None]
        out[i : i + 2048] = b
    return out, single


def integer(x, name: str, lo: int, hi: int) -> int:
    if isinstance(x, bool) or not isinstance(x, numbers.Integral):
        raise TypeError(f"{name} must be an int in [{lo}, {hi}], got {type(x).__name__} {x!r}")
    if not lo <= int(x) <= hi:
        raise ValueError(f"{name} must be in [{lo}, {hi}], got {x}")
    return int(x)


def real(x, name: str, lo: float, hi: float) -> float:
    if isinstance(x, bool) or not isinstance(x, numbers.Real):
        raise TypeError(f"{name} must be a number in [{lo}, {hi}], got {type(x).__name__} {x!r}")
    v = float(x)
    if not (lo <= v <= hi):  # also rejects NaN
        raise ValueError(f"{name} must be in [{lo}, {hi}], got {x}")
    return v
