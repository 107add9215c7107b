"""Exact top-k cosine search over a large Index, through an int8 first pass.

One fp32 query against M unit rows of dimension D streams 4 M D bytes (154 MB for 100k x 384): memory
bound, 6-9 ms on this project's 2-core machine. The first pass here streams a quarter of that, as one
ONNX Runtime MatMulInteger (u8 query x s8 rows, int32 sums); then every row whose exact score could
still reach the top k is rescored in fp32. For a unit query q with int8 image q^ and a row e with image
e^ (both dequantised):

    |q.e - q^.e^|  <=  |q - q^| |e| + |q^| |e - e^|      (Cauchy-Schwarz; |e| = 1 on an Index)

So with lower and upper bounds l = s - b, u = s + b around the int8 score s, the k-th largest l is at
most the k-th best exact score, and a row whose u is below it cannot be in the top k. The result is the
fp32 search's: the same rows and fp32 scores (ties aside, which fp32 rounding decides either way).

Rows are quantised to 7 bits (|e^| <= 63 steps): on AVX2 without VNNI, ONNX Runtime's u8 x s8 kernel
adds pairs of products in 16 bits with saturation, which 255 x 63 x 2 never reaches (the bound above
assumes exact integer sums). The query keeps 8 bits (255 levels around the zero point 128).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

log = logging.getLogger("l2m_sdk")

GRAPH = Path(__file__).resolve().parent / "assets" / "ops" / "matmul_u8s8.onnx"
MIN_ROWS = 8192  # below this an fp32 pass is already well under a millisecond
MAX_QUERIES = 32  # more queries at once: one fp32 GEMM is compute bound and faster than the loop here
ROW_LEVELS = 63
QUERY_LEVELS = 127
CHUNK = 2048  # rows per block when quantising a gallery
SLACK = 1e-5  # float32 rounding of the dequantised int8 scores (|s| <= 1, relative error ~1e-7)


class Int8Rows:
    """Rows (M, D) float32 (unit on an Index) -> their int8 image for the first pass: q (D, M) int8
    (transposed, as MatMulInteger's B), scale (M,) float32, err (M,) float32 = |e - e^| and norm (M,)
    float32 = |e| per row (1 on an Index; kept so that the bound holds for any rows)."""

    __slots__ = ("q", "scale", "err", "norm")

    def __init__(self, rows: np.ndarray):
        n = rows.shape[0]
        q = np.empty((rows.shape[1], n), np.int8)
        self.scale = np.empty(n, np.float32)
        self.err = np.empty(n, np.float32)
        self.norm = np.empty(n, np.float32)
        # In blocks of rows: whole-gallery temporaries (a float64 copy of 100k x 384 is 300 MB) cost
        # seconds of fresh-page faults on this VM; a block's stay in cache and are reused.
        for i in range(0, n, CHUNK):
            e = rows[i : i + CHUNK].astype(np.float64)
            m = np.maximum(e.max(axis=1), -e.min(axis=1))
            # the float32 scale the first pass multiplies by, so err bounds exactly that dequantisation
            scale = np.where(m > 0, m / ROW_LEVELS, 1.0).astype(np.float32).astype(np.float64)
            qi = np.rint(e / scale[:, None]).clip(-ROW_LEVELS, ROW_LEVELS)
            diff = e - qi * scale[:, None]
            self.err[i : i + CHUNK] = np.sqrt(np.einsum("md,md->m", diff, diff))
            self.norm[i : i + CHUNK] = np.sqrt(np.einsum("md,md->m", e, e))
            self.scale[i : i + CHUNK] = scale
            q[:, i : i + CHUNK] = qi.T
        self.q = q
        for a in (self.q, self.scale, self.err, self.norm):
            a.flags.writeable = False

    @property
    def nbytes(self) -> int:
        return self.q.nbytes + self.scale.nbytes + self.err.nbytes + self.norm.nbytes


def quantize_queries(queries: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Unit queries (Q, D) -> (u8 (Q, D) with zero point 128, scale (Q,), |q^| (Q,), |q - q^| (Q,)),
    norms in float64 so that the bound is not loosened by rounding."""
    m = np.abs(queries).max(axis=1)
    scale = np.where(m > 0, m / QUERY_LEVELS, 1.0)  # (Q,) float64
    q8 = np.rint(queries / scale[:, None]).clip(-QUERY_LEVELS, QUERY_LEVELS)
    deq = q8 * scale[:, None]
    qn = np.linalg.norm(deq, axis=1)
    eps = np.linalg.norm(queries.astype(np.float64) - deq, axis=1)
    return (q8 + 128).astype(np.uint8), scale, qn, eps


def kth_largest(v: np.ndarray, k: int) -> float:
    """The k-th largest value of v (1-D, k <= len(v)), exactly, in about one comparison pass: a strided
    sample's k-th largest is a lower bound that at least k values reach (the sample's top k are values
    of v), so only the values at or above it are partitioned."""
    n = v.shape[0]
    step = max(1, n // (512 * k))
    sample = v[::step]
    if sample.shape[0] >= k and step > 1:
        floor = np.partition(sample, sample.shape[0] - k)[sample.shape[0] - k]
        v = v[v >= floor]
    return float(np.partition(v, v.shape[0] - k)[v.shape[0] - k])


def top_k_exact(
    scores_i32: np.ndarray,  # (M,) int32 sums of one query against the int8 rows
    q_scale: float,
    q_norm: float,
    q_err: float,
    rows: Int8Rows,
    gallery: np.ndarray,  # (M, D) float32 rows (unit on a Model.index gallery; any length is bounded)
    query: np.ndarray,  # (D,) float32 unit
    k: int,
) -> tuple[np.ndarray, np.ndarray] | None:
    """One query's exact top k (indices, fp32 scores), best first; None when the bounds leave more
    than a quarter of the rows as candidates (near-duplicate galleries), for an fp32 pass instead."""
    s = scores_i32 * (rows.scale * np.float32(q_scale))  # (M,) float32
    b = rows.err * np.float32(q_norm) + rows.norm * np.float32(q_err) + np.float32(SLACK)  # (M,)
    floor = kth_largest(s - b, k)
    cand = np.flatnonzero(s + b >= floor)
    if cand.shape[0] > gallery.shape[0] // 4:
        return None
    exact = gallery[cand] @ query  # (C,)
    if cand.shape[0] > k:
        part = np.argpartition(-exact, k - 1)[:k]
        cand, exact = cand[part], exact[part]
    order = np.argsort(-exact, kind="stable")
    return cand[order], exact[order]


class Int8Search:
    """The first pass's ONNX Runtime session (CPU, any backend), shared by every Index of a Model."""

    def __init__(self, threads: int):
        from l2m_sdk.backends.ort import OrtSession

        if not GRAPH.is_file():
            raise FileNotFoundError(f"{GRAPH} is missing; reinstall l2m (python -m export.ops writes it)")
        self._sess = OrtSession(GRAPH, ["CPUExecutionProvider"], threads)
        self._zero = np.array(128, dtype=np.uint8)

    def close(self) -> None:
        self._sess.close()

    def search(
        self, queries: np.ndarray, gallery: np.ndarray, rows: Int8Rows, k: int
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """Unit queries (Q, D) against gallery rows (M, D) -> (indices (Q, k), scores (Q, k)),
        each row best first; None when any query needs the fp32 pass (see top_k_exact)."""
        a, scale, qn, eps = quantize_queries(queries)
        sums = self._sess.run({"a": a, "b": rows.q, "a_zero": self._zero})[0]  # (Q, M) int32
        idx = np.empty((queries.shape[0], k), np.int64)
        sc = np.empty((queries.shape[0], k), np.float32)
        for i in range(queries.shape[0]):
            r = top_k_exact(sums[i], scale[i], qn[i], eps[i], rows, gallery, queries[i], k)
            if r is None:
                log.debug("int8 search: bounds too loose for query %d, fp32 pass instead", i)
                return None
            idx[i], sc[i] = r
        return idx, sc
