"""MeViS expressions -> point trajectories, as in the paper's data path, with tracks cached on disk.

On-disk layout (MeViS, https://github.com/henghuiding/MeViS)::

    <root>/<split>/JPEGImages/<video>/<frame>.jpg
    <root>/<split>/meta_expressions.json   {"videos": {video: {"frames": [frame, ...],
                                              "expressions": {exp_id: {"exp": text, "obj_id": [...],
                                                                       "anno_id": [...]}}}}}
    <root>/<split>/mask_dict.json          {anno_id: [COCO RLE or null, one per frame]}

Frame names carry no extension and are sorted, as in MeViS's own loader; ``mask_dict[anno_id][i]`` is
the mask on the i-th sorted frame. Splits without ``mask_dict.json`` (MeViS ``valid``) cannot be
tracked: they have no object masks.

Per expression: the union of the expression's objects' masks on the first frame where it is not
empty (the paper uses frame 0 and drops objects absent there; starting where the object appears keeps
them) -> ``grid x grid`` points inside that mask (``grid_points_in_mask``) -> the tracker follows them
over every frame from there to the end of the video -> the tracks are resampled evenly in time to
``num_frames`` (linear interpolation; the paper instead takes the first ``num_frames`` frames) ->
normalised per axis::

    x_n = (2 * x + 1) / W - 1,   y_n = (2 * y + 1) / H - 1    (y down)

with pixel centres at integer coordinates (OpenCV / CoTracker), so the image's outer edges map to
exactly -1 and +1, as in ``export.losses``. The paper's ``2 * x / W - 1`` differs by half a pixel.
Non-square videos are therefore squeezed: one normalised unit is W/2 px across and H/2 px down.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from export import rle
from export.tracking import Tracker, get_tracker

__all__ = [
    "MevisExpression",
    "MevisTracks",
    "grid_points_in_mask",
    "normalised_to_pixel",
    "pixel_to_normalised",
    "resample_tracks",
]

logger = logging.getLogger("l2m.export")

_CACHE_VERSION = 1


def pixel_to_normalised(px: np.ndarray, width: int, height: int) -> np.ndarray:
    """(..., 2) pixel (x, y), pixel centres at integers -> (..., 2) float32 in [-1, 1], y down."""
    px = np.asarray(px, np.float64)
    scale = np.array([width, height], np.float64)
    return ((2.0 * px + 1.0) / scale - 1.0).astype(np.float32)


def normalised_to_pixel(xy: np.ndarray, width: int, height: int) -> np.ndarray:
    """Inverse of ``pixel_to_normalised``: (..., 2) in [-1, 1] -> (..., 2) float32 pixels."""
    xy = np.asarray(xy, np.float64)
    scale = np.array([width, height], np.float64)
    return ((xy + 1.0) * scale / 2.0 - 0.5).astype(np.float32)


def _erode(mask: np.ndarray, px: int) -> np.ndarray:
    import cv2

    kernel = np.ones((2 * px + 1, 2 * px + 1), np.uint8)
    return cv2.erode(mask.astype(np.uint8), kernel, borderValue=0).astype(bool)


def grid_points_in_mask(mask: np.ndarray, grid: int, erode_px: int = 2) -> np.ndarray:
    """Place ``grid * grid`` query points on an object mask.

    mask: (H, W) bool, the object in the query frame. grid: points per side.
    erode_px: stay this many pixels inside the boundary, where a tracker's window sees background
        (skipped when the eroded mask would hold fewer than grid**2 pixels).
    Returns: (grid**2, 2) float32 pixel (x, y). The points are the cell centres of a grid x grid
    lattice over the (eroded) mask's bounding box that fall inside it, in row-major order; when fewer
    than grid**2 fall inside (thin or curved objects), the rest are mask pixels picked by farthest-
    point sampling, so they spread over the object. Deterministic for a given mask.
    """
    mask = np.asarray(mask, bool)
    if mask.ndim != 2:
        raise ValueError(f"mask must be (H, W), got shape {mask.shape}")
    if grid < 1:
        raise ValueError(f"grid must be >= 1 (points per side), got {grid}")
    n = grid * grid
    if not mask.any():
        raise ValueError("mask is empty: cannot place query points")
    inner = mask
    if erode_px > 0:
        eroded = _erode(mask, erode_px)
        if eroded.sum() >= n:
            inner = eroded
    ys, xs = np.nonzero(inner)
    x0, x1, y0, y1 = xs.min(), xs.max(), ys.min(), ys.max()
    cx = x0 - 0.5 + (np.arange(grid) + 0.5) * (x1 - x0 + 1) / grid
    cy = y0 - 0.5 + (np.arange(grid) + 0.5) * (y1 - y0 + 1) / grid
    gy, gx = np.meshgrid(cy, cx, indexing="ij")
    lattice = np.stack([gx.ravel(), gy.ravel()], axis=1)
    ix = np.clip(np.rint(lattice[:, 0]).astype(int), 0, mask.shape[1] - 1)
    iy = np.clip(np.rint(lattice[:, 1]).astype(int), 0, mask.shape[0] - 1)
    chosen = list(lattice[inner[iy, ix]])
    if len(chosen) < n:
        cand = np.stack([xs, ys], axis=1).astype(np.float64)
        if chosen:
            d = np.min(np.linalg.norm(cand[:, None, :] - np.asarray(chosen)[None], axis=2), axis=1)
        else:
            centre = cand.mean(axis=0)
            d = np.full(len(cand), np.inf)
            chosen.append(cand[np.argmin(np.linalg.norm(cand - centre, axis=1))])
            d = np.minimum(d, np.linalg.norm(cand - chosen[-1], axis=1))
        while len(chosen) < n:
            i = int(np.argmax(d))  # ties (all zero on tiny masks) repeat pixels, keeping N fixed
            chosen.append(cand[i])
            d = np.minimum(d, np.linalg.norm(cand - cand[i], axis=1))
    return np.asarray(chosen[:n], np.float32)


def resample_tracks(tracks: np.ndarray, visible: np.ndarray, num_frames: int) -> tuple[np.ndarray, ...]:
    """Resample tracks evenly in time.

    tracks (F, N, 2), visible (F, N) -> tracks (num_frames, N, 2) float32 by linear interpolation at
    times linspace(0, F - 1, num_frames), visible (num_frames, N) (visible at both neighbouring
    frames), times (num_frames,) float32 frame positions. Frame 0 is kept exactly.
    """
    if num_frames < 2:
        raise ValueError(f"num_frames must be >= 2, got {num_frames}")
    f_len = tracks.shape[0]
    times = np.linspace(0.0, f_len - 1, num_frames)
    lo = np.floor(times).astype(int)
    hi = np.minimum(lo + 1, f_len - 1)
    w = (times - lo)[:, None, None]
    out = (1.0 - w) * tracks[lo].astype(np.float64) + w * tracks[hi].astype(np.float64)
    vis = visible[lo] & np.where(w[..., 0] > 0, visible[hi], True)
    return out.astype(np.float32), vis, times.astype(np.float32)


@dataclass(frozen=True)
class MevisExpression:
    video: str
    exp_id: str
    caption: str
    anno_ids: tuple[str, ...]
    obj_ids: tuple
    frames: tuple[str, ...]


def _load_json(path: Path, what: str):
    if not path.is_file():
        raise FileNotFoundError(f"MeViS {what} not found: expected {path}")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"malformed JSON in {path}: {e}") from e


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:64]


class MevisTracks:
    """MeViS expressions as trajectory samples; map-style (``len``, ``[i]``) and iterable.

    root: MeViS root (holding ``<split>/``). split: "train" or "valid_u" (needs mask_dict.json).
    tracker: a name for ``get_tracker`` ("lk", "cotracker3") or a ``Tracker`` instance.
    grid: points per side (N = grid**2; the paper uses 6). num_frames: T (the paper uses 30).
    cache_dir: where tracks are kept (npz); default $L2M_CACHE/mevis_tracks or ~/.cache/l2m/mevis_tracks.
    erode_px: query points stay this far inside the mask (see ``grid_points_in_mask``).
    videos: optional subset of video names.

    A sample is a dict: video, exp_id, caption, traj (T, N, 2) float32 normalised (module docstring),
    visible (T, N) bool, traj_px (T, N, 2) float32 pixels, size (H, W), anno_id, obj_id, and
    frame_pos (T,) float32 positions in the video's sorted frame list.
    Expressions whose objects have no mask on any frame are left out (logged).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        *,
        tracker: str | Tracker = "lk",
        grid: int = 6,
        num_frames: int = 30,
        cache_dir: str | os.PathLike | None = None,
        erode_px: int = 2,
        videos=None,
    ):
        if int(grid) < 1:
            raise ValueError(f"grid must be >= 1 points per side, got {grid}")
        if int(num_frames) < 2:
            raise ValueError(f"num_frames must be >= 2, got {num_frames}")
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"MeViS root not found: expected a directory at {self.root}")
        self.split = split
        self.split_dir = self.root / split
        if not self.split_dir.is_dir():
            raise FileNotFoundError(f"MeViS split not found: expected a directory at {self.split_dir}")
        self.image_dir = self.split_dir / "JPEGImages"
        if not self.image_dir.is_dir():
            raise FileNotFoundError(f"MeViS frames not found: expected a directory at {self.image_dir}")
        self.tracker = get_tracker(tracker) if isinstance(tracker, str) else tracker
        self.grid = int(grid)
        self.num_frames = int(num_frames)
        self.erode_px = int(erode_px)
        if cache_dir is None:
            cache_dir = Path(os.environ.get("L2M_CACHE", Path.home() / ".cache" / "l2m")) / "mevis_tracks"
        self.cache_dir = Path(cache_dir)
        self._meta_path = self.split_dir / "meta_expressions.json"
        self._mask_path = self.split_dir / "mask_dict.json"
        meta = _load_json(self._meta_path, "expressions file")
        self._masks = _load_json(self._mask_path, "mask file")
        if not isinstance(self._masks, dict):
            raise ValueError(
                f"malformed {self._mask_path}: expected an object {{anno_id: [rle or null, ...]}}"
            )
        self.expressions = self._parse(meta, None if videos is None else set(videos))

    def _parse(self, meta, keep) -> list[MevisExpression]:
        path = self._meta_path
        if not isinstance(meta, dict) or not isinstance(meta.get("videos"), dict):
            raise ValueError(f"malformed {path}: expected {{'videos': {{video: {{...}}}}}}")
        out, dropped = [], 0
        for video in sorted(meta["videos"]):
            if keep is not None and video not in keep:
                continue
            entry = meta["videos"][video]
            if not isinstance(entry, dict) or not isinstance(entry.get("expressions"), dict):
                raise ValueError(f"malformed {path}: video {video!r} needs an 'expressions' object")
            video_dir = self.image_dir / video
            if not video_dir.is_dir():
                raise FileNotFoundError(f"MeViS frames of video {video!r} not found: expected {video_dir}")
            if "frames" in entry:
                if not isinstance(entry["frames"], list):
                    raise ValueError(f"malformed {path}: 'frames' of video {video!r} must be a list of names")
                frames = tuple(sorted(str(f) for f in entry["frames"]))
            else:
                frames = tuple(sorted(p.stem for p in video_dir.glob("*.jpg")))
            for exp_id, exp in entry["expressions"].items():
                if not isinstance(exp, dict) or not isinstance(exp.get("exp"), str) or "anno_id" not in exp:
                    raise ValueError(f"malformed {path}: {video}/{exp_id} needs 'exp' (text) and 'anno_id'")
                anno_ids = tuple(str(a) for a in exp["anno_id"])
                for a in anno_ids:
                    if a not in self._masks:
                        raise ValueError(
                            f"malformed {self._mask_path}: no entry for anno_id {a} ({video}/{exp_id})"
                        )
                    if not isinstance(self._masks[a], list) or len(self._masks[a]) != len(frames):
                        raise ValueError(
                            f"malformed {self._mask_path}: anno_id {a} must list one mask or null per frame "
                            f"({len(frames)} frames in {video!r})"
                        )
                if not anno_ids or all(m is None for a in anno_ids for m in self._masks[a]):
                    dropped += 1
                    continue
                caption = " ".join(exp["exp"].split())
                out.append(
                    MevisExpression(
                        video, str(exp_id), caption, anno_ids, tuple(exp.get("obj_id", ())), frames
                    )
                )
        if dropped:
            logger.info("MeViS %s: left out %d expressions whose objects have no mask", self.split, dropped)
        return out

    def __len__(self) -> int:
        return len(self.expressions)

    def __iter__(self):
        for i in range(len(self)):
            try:
                yield self[i]
            except _EmptyMask as e:
                logger.warning("skipping %s", e)

    def __getitem__(self, i: int) -> dict:
        e = self.expressions[i]
        tracks, visible, times, (h, w) = self._tracks(e)
        return {
            "video": e.video,
            "exp_id": e.exp_id,
            "caption": e.caption,
            "traj": pixel_to_normalised(tracks, w, h),
            "visible": visible,
            "traj_px": tracks,
            "size": (h, w),
            "anno_id": list(e.anno_ids),
            "obj_id": list(e.obj_ids),
            "frame_pos": times,
        }

    def precompute(self, progress: bool = True) -> int:
        """Track every expression into the cache (tqdm bar); returns the number of samples tracked."""
        from tqdm import tqdm

        done = 0
        for _ in tqdm(self, total=len(self), disable=not progress, desc=f"tracking MeViS {self.split}"):
            done += 1
        return done

    # -- internals ----------------------------------------------------------------------------------

    def _cache_key(self, e: MevisExpression) -> dict:
        return {
            "version": _CACHE_VERSION,
            "split": self.split,
            "video": e.video,
            "anno_ids": sorted(e.anno_ids),
            "frames": hashlib.sha1("\n".join(e.frames).encode()).hexdigest(),
            "grid": self.grid,
            "num_frames": self.num_frames,
            "erode_px": self.erode_px,
            "tracker": self.tracker.name,
            "tracker_config": self.tracker.config(),
        }

    def cache_path(self, e: MevisExpression) -> Path:
        """The npz that holds (or will hold) the tracks of expression ``e``."""
        key = self._cache_key(e)
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        annos = _safe("-".join(key["anno_ids"]))
        name = f"{annos}_{_safe(self.tracker.name)}_g{self.grid}_T{self.num_frames}_{digest}.npz"
        return self.cache_dir / _safe(self.split) / _safe(e.video) / name

    def _tracks(self, e: MevisExpression):
        path = self.cache_path(e)
        key = json.dumps(self._cache_key(e), sort_keys=True)
        if path.is_file():
            try:
                with np.load(path) as z:
                    if str(z["key"]) == key:
                        return z["tracks"], z["visible"], z["frame_pos"], tuple(int(v) for v in z["size"])
                logger.warning("track cache %s holds other settings; re-tracking", path)
            except (OSError, ValueError, KeyError) as err:
                logger.warning("unreadable track cache %s (%s); re-tracking", path, err)
        tracks, visible, times, size = self._track(e)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:  # write then rename, so concurrent loaders never read half a file
            np.savez(
                f, tracks=tracks, visible=visible, frame_pos=times, size=np.array(size), key=np.array(key)
            )
        os.replace(tmp, path)
        return tracks, visible, times, size

    def _mask(self, e: MevisExpression, i: int) -> np.ndarray | None:
        """Union of the expression's object masks on frame i, (H, W) bool; None when none is annotated."""
        union = None
        for a in e.anno_ids:
            entry = self._masks[a][i]
            if entry is None:
                continue
            try:
                m = rle.decode(entry)
            except ValueError as err:
                raise ValueError(
                    f"malformed mask in {self._mask_path}: anno_id {a}, frame {i}: {err}"
                ) from err
            union = m if union is None else union | m
        return union

    def _read_frame(self, video: str, frame: str) -> np.ndarray:
        import cv2

        path = self.image_dir / video / f"{frame}.jpg"
        if not path.is_file():
            raise FileNotFoundError(f"MeViS frame not found: expected {path}")
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if img is None:
            raise ValueError(f"cannot decode image {path}")
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)

    def _track(self, e: MevisExpression):
        import cv2

        start, mask = None, None
        for i in range(len(e.frames)):
            m = self._mask(e, i)
            if m is not None and m.any():
                start, mask = i, m
                break
        if start is None:
            raise _EmptyMask(f"{e.video}/{e.exp_id}: every mask of anno_id {list(e.anno_ids)} is empty")
        frames = [self._read_frame(e.video, f) for f in e.frames[start:]]
        h, w = frames[0].shape[:2]
        if mask.shape != (h, w):
            logger.warning("%s: mask %s resized to frame %s", e.video, mask.shape, (h, w))
            mask = cv2.resize(mask.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST).astype(bool)
        points = grid_points_in_mask(mask, self.grid, self.erode_px)
        tracks, visible = self.tracker.track(np.stack(frames), points)
        tracks = np.asarray(tracks, np.float32)
        visible = np.asarray(visible, bool)
        if tracks.shape != (len(frames), len(points), 2) or visible.shape != tracks.shape[:2]:
            raise RuntimeError(
                f"tracker {self.tracker.name!r} returned {tracks.shape} / {visible.shape}, "
                f"expected ({len(frames)}, {len(points)}, 2) / ({len(frames)}, {len(points)})"
            )
        tracks, visible, times = resample_tracks(tracks, visible, self.num_frames)
        return tracks, visible, times + np.float32(start), (h, w)


class _EmptyMask(ValueError):
    """An expression whose masks decode to nothing on every frame (skipped when iterating)."""
