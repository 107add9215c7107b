"""COCO run-length encoding of binary masks, without pycocotools.

A COCO RLE is ``{"size": [h, w], "counts": ...}``. The mask is flattened in column-major (Fortran)
order and ``counts`` holds the lengths of alternating runs of 0s and 1s, starting with a run of 0s
(which may be empty). ``counts`` is either a list of ints ("uncompressed", as written in COCO
annotation files for crowds) or a string ("compressed", as in MeViS ``mask_dict.json``), where each
count is stored as a delta to the count two places before it (from the fourth count on) and written
in a LEB128-like code of 5 data bits per character, ASCII 48..111. This mirrors ``rleToString`` /
``rleFrString`` in cocoapi's ``common/maskApi.c``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["counts_from_string", "counts_to_string", "decode", "encode"]


def counts_to_string(counts: Sequence[int]) -> str:
    """Compress run lengths into COCO's string form (maskApi.c ``rleToString``)."""
    out: list[str] = []
    counts = [int(c) for c in counts]
    for i, x in enumerate(counts):
        if i > 2:
            x -= counts[i - 2]
        more = True
        while more:
            c = x & 0x1F
            x >>= 5  # arithmetic shift: negative deltas end when only sign bits remain
            more = x != -1 if c & 0x10 else x != 0
            if more:
                c |= 0x20
            out.append(chr(c + 48))
    return "".join(out)


def counts_from_string(s: str | bytes) -> list[int]:
    """Decompress COCO's string form into run lengths (maskApi.c ``rleFrString``).

    Raises ValueError for characters outside ASCII 48..111, a truncated last value, or a negative run.
    """
    if isinstance(s, bytes):
        s = s.decode("ascii")
    counts: list[int] = []
    p, n = 0, len(s)
    while p < n:
        x, k, more = 0, 0, True
        while more:
            if p >= n:
                raise ValueError(f"truncated COCO RLE string: the value at character {p} has no end")
            c = ord(s[p]) - 48
            if not 0 <= c <= 63:
                raise ValueError(
                    f"invalid character {s[p]!r} at {p} in COCO RLE string (expected ASCII 48..111)"
                )
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)  # sign-extend
        if len(counts) > 2:
            x += counts[-2]
        if x < 0:
            raise ValueError(f"negative run length {x} at count {len(counts)} in COCO RLE string")
        counts.append(x)
    return counts


def _size(rle: Mapping) -> tuple[int, int]:
    size = rle.get("size")
    if not isinstance(size, (list, tuple)) or len(size) != 2:
        raise ValueError(f"COCO RLE needs 'size': [height, width], got {size!r}")
    h, w = (int(v) for v in size)
    if h < 0 or w < 0:
        raise ValueError(f"COCO RLE size must be non-negative, got {size!r}")
    return h, w


def decode(rle: Mapping) -> np.ndarray:
    """Decode a COCO RLE dict into a mask.

    rle: ``{"size": [h, w], "counts": str | bytes | list[int]}``.
    Returns: (h, w) bool array, row-major like an image (mask[y, x]).
    Raises ValueError if the dict is malformed or the runs do not add up to h * w.
    """
    if not isinstance(rle, Mapping) or "counts" not in rle:
        raise ValueError(f"expected a COCO RLE dict with 'size' and 'counts', got {type(rle).__name__}")
    h, w = _size(rle)
    raw = rle["counts"]
    if isinstance(raw, (str, bytes)):
        counts = counts_from_string(raw)
    elif isinstance(raw, (list, tuple, np.ndarray)):
        counts = [int(c) for c in raw]
        if any(c < 0 for c in counts):
            raise ValueError("COCO RLE counts must be non-negative")
    else:
        raise ValueError(f"COCO RLE 'counts' must be a string or a list of ints, got {type(raw).__name__}")
    if sum(counts) != h * w:
        raise ValueError(f"COCO RLE runs add up to {sum(counts)} pixels but size {h}x{w} has {h * w}")
    values = np.arange(len(counts)) % 2 == 1  # runs alternate 0, 1, 0, ...
    flat = np.repeat(values, counts)
    return flat.reshape((h, w), order="F")


def encode(mask: np.ndarray, compress: bool = True) -> dict:
    """Encode a mask as a COCO RLE dict.

    mask: (h, w) array, nonzero = inside.
    Returns ``{"size": [h, w], "counts": str}`` (compressed, as pycocotools writes to JSON once its
    bytes are decoded) or with a list of ints when ``compress=False``.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be a 2-D (height, width) array, got shape {mask.shape}")
    h, w = mask.shape
    flat = mask.astype(bool).ravel(order="F")
    if flat.size == 0:
        counts = [0]
    else:
        change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
        bounds = np.concatenate([[0], change, [flat.size]])
        counts = np.diff(bounds).tolist()
        if flat[0]:
            counts.insert(0, 0)  # runs start with zeros, possibly none
    return {"size": [int(h), int(w)], "counts": counts_to_string(counts) if compress else counts}
