"""Point trackers: follow query points from frame 0 through a clip.

Every tracker has the same contract (``Tracker.track``)::

    frames,  # (T, H, W, 3) uint8 RGB, or a list of T such frames
    points,  # (N, 2) float pixel coordinates (x, y) in frame 0
    -> tracks (T, N, 2) float32 pixel coordinates, visible (T, N) bool

Pixel coordinates follow OpenCV and CoTracker: the centre of pixel column i is x = i, so a W-wide
image spans x in [-0.5, W - 0.5]. Row 0 is the top (y down). ``tracks[0]`` equals ``points``.

Trackers:
- ``lk``: OpenCV pyramidal Lucas-Kanade, frame to frame, with a forward-backward check. No weights,
  CPU only; good for short clips of textured objects.
- ``cotracker3``: CoTracker3 (offline model), when its code and weights are on this machine. It is
  never downloaded here: point it at a checkpoint or a torch.hub cache.
"""

from __future__ import annotations

import glob
import logging
import os
import sys
from pathlib import Path

import numpy as np

__all__ = ["CoTrackerTracker", "LucasKanadeTracker", "Tracker", "TRACKERS", "get_tracker"]

logger = logging.getLogger("l2m.export")

_COTRACKER_INSTALL = (
    "CoTracker3 is optional. Install its code with "
    "`pip install git+https://github.com/facebookresearch/co-tracker` and download the offline weights "
    "(https://huggingface.co/facebook/cotracker3/resolve/main/scaled_offline.pth) yourself, then pass "
    "checkpoint='/path/to/scaled_offline.pth' or set L2M_COTRACKER_CHECKPOINT. A torch.hub cache made "
    "by torch.hub.load('facebookresearch/co-tracker', 'cotracker3_offline') is also found. "
    "Or use the 'lk' tracker, which needs no weights."
)


def _check_frames(frames) -> np.ndarray:
    if isinstance(frames, (list, tuple)):
        if not frames:
            raise ValueError("frames is empty: expected T >= 1 frames of shape (H, W, 3) uint8 RGB")
        shapes = {np.shape(f) for f in frames}
        if len(shapes) != 1:
            raise ValueError(f"all frames must have the same (H, W, 3) shape, got {sorted(shapes)}")
        frames = np.stack(frames)
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 1:
        raise ValueError(f"frames must have shape (T, H, W, 3) RGB, got {frames.shape}")
    if frames.dtype != np.uint8:
        raise TypeError(f"frames must be uint8 (0..255), got {frames.dtype}; convert with .astype(np.uint8)")
    return frames


def _check_points(points) -> np.ndarray:
    points = np.asarray(points, dtype=np.float32)
    if points.ndim != 2 or points.shape[1] != 2 or points.shape[0] < 1:
        raise ValueError(f"points must have shape (N, 2) pixel (x, y) with N >= 1, got {points.shape}")
    if not np.isfinite(points).all():
        raise ValueError("points contain NaN or inf")
    return points


def _inside(p: np.ndarray, height: int, width: int) -> np.ndarray:
    """(..., 2) pixel coords -> (...) bool, True where the point lies on the image."""
    x, y = p[..., 0], p[..., 1]
    return (x >= -0.5) & (x <= width - 0.5) & (y >= -0.5) & (y <= height - 0.5)


class Tracker:
    """Interface: subclasses set ``name`` and implement ``track``; ``config`` feeds the track cache key."""

    name = "tracker"

    def config(self) -> dict:
        """Settings that change the output (JSON-serialisable); part of the cache key."""
        return {}

    def track(self, frames, points) -> tuple[np.ndarray, np.ndarray]:
        """frames (T, H, W, 3) uint8 RGB, points (N, 2) pixel (x, y) in frame 0
        -> tracks (T, N, 2) float32 pixels, visible (T, N) bool."""
        raise NotImplementedError


class LucasKanadeTracker(Tracker):
    """OpenCV pyramidal Lucas-Kanade, chained frame to frame.

    A point is visible at frame t when LK converged both ways between t-1 and t, the forward-backward
    error is below ``fb_threshold`` pixels and the point is on the image. A point that fails a step
    is carried by the median displacement of the points that passed (the object's bulk motion) so
    that N stays fixed; it may be picked up again in later steps.

    win_size: LK window side in pixels (odd). 21 suits objects a few tens of pixels wide.
    max_level: pyramid levels above the base; motion up to about win_size/2 * 2**max_level px/frame.
    """

    name = "lk"

    def __init__(
        self,
        win_size: int = 21,
        max_level: int = 3,
        fb_threshold: float = 1.0,
        max_iter: int = 30,
        eps: float = 0.01,
    ):
        if win_size < 3:
            raise ValueError(f"win_size must be >= 3 pixels, got {win_size}")
        if max_level < 0:
            raise ValueError(f"max_level must be >= 0, got {max_level}")
        if fb_threshold <= 0:
            raise ValueError(f"fb_threshold must be > 0 pixels, got {fb_threshold}")
        self.win_size = int(win_size)
        self.max_level = int(max_level)
        self.fb_threshold = float(fb_threshold)
        self.max_iter = int(max_iter)
        self.eps = float(eps)

    def config(self) -> dict:
        return {
            "win_size": self.win_size,
            "max_level": self.max_level,
            "fb_threshold": self.fb_threshold,
            "max_iter": self.max_iter,
            "eps": self.eps,
        }

    def track(self, frames, points) -> tuple[np.ndarray, np.ndarray]:
        import cv2

        frames = _check_frames(frames)
        points = _check_points(points)
        t_len, height, width = frames.shape[:3]
        params = dict(
            winSize=(self.win_size, self.win_size),
            maxLevel=self.max_level,
            criteria=(cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, self.max_iter, self.eps),
        )
        tracks = np.empty((t_len, len(points), 2), np.float32)
        visible = np.zeros((t_len, len(points)), bool)
        tracks[0] = points
        visible[0] = _inside(points, height, width)
        prev = cv2.cvtColor(frames[0], cv2.COLOR_RGB2GRAY)
        for t in range(1, t_len):
            cur = cv2.cvtColor(frames[t], cv2.COLOR_RGB2GRAY)
            p0 = np.ascontiguousarray(tracks[t - 1].reshape(-1, 1, 2))
            p1, st1, _ = cv2.calcOpticalFlowPyrLK(prev, cur, p0, None, **params)
            back, st2, _ = cv2.calcOpticalFlowPyrLK(cur, prev, p1, None, **params)
            p0, p1, back = p0[:, 0], p1[:, 0], back[:, 0]
            fb_err = np.linalg.norm(back - p0, axis=1)
            ok = (
                (st1[:, 0] == 1)
                & (st2[:, 0] == 1)
                & np.isfinite(p1).all(axis=1)
                & (fb_err < self.fb_threshold)
                & _inside(p1, height, width)
            )
            shift = np.median(p1[ok] - p0[ok], axis=0) if ok.any() else np.zeros(2, np.float32)
            tracks[t] = np.where(ok[:, None], p1, p0 + shift)
            visible[t] = ok
            prev = cur
        return tracks, visible


def _hub_dir() -> Path | None:
    try:
        import torch.hub
    except ImportError:
        return None
    return Path(torch.hub.get_dir())


def _find_checkpoint(checkpoint: str | os.PathLike | None) -> Path:
    if checkpoint is not None:
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"CoTracker3 checkpoint not found: {path} (expected scaled_offline.pth)")
        return path
    env = os.environ.get("L2M_COTRACKER_CHECKPOINT")
    if env:
        path = Path(env).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"L2M_COTRACKER_CHECKPOINT points to a missing file: {path}")
        return path
    hub = _hub_dir()
    if hub is not None and (hub / "checkpoints" / "scaled_offline.pth").is_file():
        return hub / "checkpoints" / "scaled_offline.pth"
    where = hub / "checkpoints" / "scaled_offline.pth" if hub is not None else "the torch.hub cache"
    raise RuntimeError(
        f"no CoTracker3 weights: looked for an explicit checkpoint, $L2M_COTRACKER_CHECKPOINT and {where}. "
        + _COTRACKER_INSTALL
    )


def _import_predictor():
    """The CoTrackerPredictor class from the installed package, else from a torch.hub code cache."""
    try:
        from cotracker.predictor import CoTrackerPredictor

        return CoTrackerPredictor
    except ImportError as e:
        first_error = e
    hub = _hub_dir()
    repos = sorted(glob.glob(str(hub / "facebookresearch_co-tracker_*"))) if hub is not None else []
    for repo in repos:
        if (Path(repo) / "cotracker" / "predictor.py").is_file():
            # The hub copy uses absolute `cotracker.` imports, so it has to be importable by name.
            sys.path.insert(0, repo)
            try:
                from cotracker.predictor import CoTrackerPredictor

                logger.info("using CoTracker code from the torch.hub cache %s", repo)
                return CoTrackerPredictor
            except ImportError:
                sys.path.remove(repo)
    raise RuntimeError(
        f"the `cotracker` package is not importable ({first_error}). {_COTRACKER_INSTALL}"
    ) from first_error


class CoTrackerTracker(Tracker):
    """CoTracker3 offline model (the paper's tracker), from local code and weights only.

    checkpoint: path to ``scaled_offline.pth``; default $L2M_COTRACKER_CHECKPOINT, then
        ``<torch.hub dir>/checkpoints/scaled_offline.pth``.
    device: torch device string; default CUDA when available, else CPU (slow but works).
    window_len: the model's temporal window (60 for the released offline weights).

    Raises RuntimeError (with install instructions) when the code or the weights are missing, and
    FileNotFoundError for an explicit checkpoint path that does not exist. Nothing is downloaded.
    """

    name = "cotracker3"

    def __init__(
        self, checkpoint: str | os.PathLike | None = None, device: str | None = None, window_len: int = 60
    ):
        try:
            import torch  # noqa: F401
        except ImportError as e:
            raise RuntimeError(
                f"CoTracker3 needs PyTorch: pip install 'l2m[export]'. {_COTRACKER_INSTALL}"
            ) from e
        self.checkpoint = _find_checkpoint(checkpoint)
        self._predictor_cls = _import_predictor()
        self.window_len = int(window_len)
        self.device = device
        self._model = None

    def config(self) -> dict:
        # Weights are identified by file name and size: hashing a 100 MB file on every run is not worth it.
        return {
            "checkpoint": self.checkpoint.name,
            "checkpoint_bytes": self.checkpoint.stat().st_size,
            "window_len": self.window_len,
        }

    def _load(self):
        import torch

        if self._model is None:
            device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
            try:
                model = self._predictor_cls(
                    checkpoint=str(self.checkpoint), offline=True, v2=False, window_len=self.window_len
                )
            except TypeError as e:
                raise RuntimeError(
                    f"the installed `cotracker` predates CoTracker3. {_COTRACKER_INSTALL}"
                ) from e
            self._model = model.to(device).eval()
            self._device = device
        return self._model

    def track(self, frames, points) -> tuple[np.ndarray, np.ndarray]:
        import torch

        frames = _check_frames(frames)
        points = _check_points(points)
        model = self._load()
        video = (
            torch.from_numpy(frames).permute(0, 3, 1, 2)[None].float().to(self._device)
        )  # (1, T, 3, H, W) 0..255
        queries = torch.zeros((1, len(points), 3), dtype=torch.float32)
        queries[0, :, 1:] = torch.from_numpy(points)  # (t=0, x, y) per query
        with torch.no_grad():
            tracks, visible = model(video, queries=queries.to(self._device))
        tracks = tracks[0].detach().float().cpu().numpy().astype(np.float32)  # (T, N, 2)
        visible = visible[0].detach().cpu().numpy()
        if visible.ndim == 3:  # some versions keep a trailing channel
            visible = visible[..., 0]
        if visible.dtype != bool:
            visible = visible > 0.5
        if tracks.shape != (len(frames), len(points), 2) or visible.shape != tracks.shape[:2]:
            raise RuntimeError(
                f"CoTracker returned tracks {tracks.shape} / visibility {visible.shape}, "
                f"expected ({len(frames)}, {len(points)}, 2) / ({len(frames)}, {len(points)})"
            )
        tracks[0] = points  # the query frame is exact by definition
        return tracks, visible


TRACKERS = {"lk": LucasKanadeTracker, "cotracker3": CoTrackerTracker}


def get_tracker(name: str, **kwargs) -> Tracker:
    """A tracker by name ('lk' or 'cotracker3'); kwargs go to its constructor."""
    key = name.lower().replace("-", "").replace("_", "")
    aliases = {"lk": "lk", "lucaskanade": "lk", "cotracker3": "cotracker3", "cotracker": "cotracker3"}
    if key not in aliases:
        raise ValueError(f"unknown tracker {name!r}; choose one of {sorted(TRACKERS)}")
    return TRACKERS[aliases[key]](**kwargs)
