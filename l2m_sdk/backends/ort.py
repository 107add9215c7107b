"""ONNX Runtime sessions for bundle graphs (CPU, or CUDA with onnxruntime-gpu).

ONNX Runtime writes `deviceid` and `onnxruntime.db` under $XDG_CACHE_HOME (default ~/.cache)
/Microsoft/DeveloperTools/.onnxruntime when it is imported; embedders who care point XDG_CACHE_HOME
elsewhere before the first l2m call.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

log = logging.getLogger("l2m_sdk")


def _ort():
    try:
        import onnxruntime
    except ImportError as e:
        raise RuntimeError("onnxruntime is missing: pip install onnxruntime (or onnxruntime-gpu)") from e
    return onnxruntime


def default_threads() -> int:
    """Intra-op threads: L2M_THREADS, else the CPUs this process may use (at most 8: the graphs are
    small, and more threads cost more in synchronisation than they give at batch 1)."""
    env = os.environ.get("L2M_THREADS")
    if env:
        try:
            n = int(env)
        except ValueError as e:
            raise ValueError(f"L2M_THREADS must be a positive integer, got {env!r}") from e
        if n < 1:
            raise ValueError(f"L2M_THREADS must be a positive integer, got {env!r}")
        return n
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:
        n = os.cpu_count() or 1
    return max(1, min(8, n))


class OrtSession:
    """One graph. `run(feeds) -> list of outputs`; safe to call from many threads (ONNX Runtime's
    InferenceSession.run is thread-safe)."""

    def __init__(
        self, path: Path, providers: list[str], threads: int, external: dict[str, np.ndarray] | None = None
    ):
        ort = _ort()
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Worker threads spin between the ~100 small kernels of one call (waking a sleeping thread per
        # kernel cost more than the kernels at batch 1 on 2 cores), and stop spinning as soon as the
        # call returns: an embedded SDK must not burn the host's cores while the game or controller does
        # its own work between generations, and the next graph's pool must not compete with this one.
        so.add_session_config_entry("session.intra_op.allow_spinning", "1")
        so.add_session_config_entry("session.force_spinning_stop", "1")
        self._keep = []
        if external:
            names, values = [], []
            for name, arr in external.items():
                names.append(name)
                values.append(ort.OrtValue.ortvalue_from_numpy(arr))
            self._keep = values  # ONNX Runtime references this memory; keep it alive
            so.add_external_initializers(names, values)
        self.path = path
        self._sess = ort.InferenceSession(str(path), so, providers=providers)
        self.input_names = [i.name for i in self._sess.get_inputs()]
        self.output_names = [o.name for o in self._sess.get_outputs()]
        self.providers = self._sess.get_providers()

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        if self._sess is None:
            raise RuntimeError(f"session for {self.path.name} is closed")
        return self._sess.run(None, feeds)

    def close(self) -> None:
        self._sess = None
        self._keep = []
