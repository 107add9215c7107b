"""Index search's int8 first pass (l2m_sdk/topk.py): certified bounds, exact results, fallbacks."""

from __future__ import annotations

import numpy as np
import pytest

import l2m_sdk
from l2m_sdk import topk
from l2m_sdk.topk import GRAPH, Int8Rows, Int8Search, kth_largest, quantize_queries


def _clustered(rng, m: int, d: int, centres: int, spread: float) -> np.ndarray:
    """(m, d) unit rows around a few centres: many rows within a few hundredths of each other's
    scores, where the int8 bounds leave most candidates (the hard case for the certificate)."""
    c = rng.standard_normal((centres, d))
    x = c[rng.integers(0, centres, m)] + spread * rng.standard_normal((m, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_kth_largest_is_exact(rng):
    for n, k in ((1, 1), (7, 3), (1000, 1), (50_000, 5), (50_000, 64), (200_000, 10)):
        v = rng.standard_normal(n).astype(np.float32)
        if n > 10:
            v[rng.integers(0, n, n // 10)] = v[0]  # ties
        assert kth_largest(v, k) == np.sort(v)[n - k], (n, k)


def test_int8_scores_are_within_the_bound(rng):
    """The certificate: |q.e - int8 score| <= |q^| |e - e^| + |q - q^| for every row, with the int32
    sums from ONNX Runtime's kernel (so also: no 16-bit saturation on this CPU)."""
    g = _clustered(rng, 5000, 384, 20, 0.3)
    g[:10] = np.sign(g[:10]) * np.float32(384**-0.5)  # every component at the row's peak
    q = _clustered(rng, 6, 384, 6, 0.1)
    q[0] = g[3]
    rows = Int8Rows(g)
    assert rows.q.shape == (384, 5000) and rows.q.dtype == np.int8 and np.abs(rows.q).max() <= 63
    a, scale, qn, eps = quantize_queries(q)
    s = Int8Search(2)
    sums = s._sess.run({"a": a, "b": rows.q, "a_zero": np.array(128, np.uint8)})[0]
    s.close()
    ref = (a.astype(np.int64) - 128) @ rows.q.astype(np.int64)
    assert np.array_equal(sums, ref), "MatMulInteger's int32 sums are not exact"
    approx = sums * (rows.scale[None] * scale[:, None].astype(np.float32))
    exact = q.astype(np.float64) @ g.T.astype(np.float64)
    bound = qn[:, None] * rows.err[None] + eps[:, None] * rows.norm[None]
    gap = np.abs(exact - approx) - bound
    assert gap.max() <= 1e-6, f"bound exceeded by {gap.max():.3g}"
    assert bound.max() < 0.05, f"bounds too loose to prune ({bound.max():.3f})"


@pytest.mark.parametrize("kind", ["random", "clustered", "unnormalised"])
def test_index_search_equals_fp32_search(default_model, rng, random_unit, kind):
    m = default_model
    M = topk.MIN_ROWS + int(rng.integers(0, 5000))
    g = random_unit(rng, M, m.dim) if kind == "random" else _clustered(rng, M, m.dim, 50, 0.5)
    if kind == "unnormalised":  # an Index built directly from rows of any length ranks by dot product
        g = g * rng.uniform(0.2, 5.0, (M, 1)).astype(np.float32)
        ix, ix32 = l2m_sdk.Index(g), l2m_sdk.Index(g, int8=False)
    else:
        ix, ix32 = m.index(g), l2m_sdk.Index(m.index(g).embeddings, int8=False)
    assert ix.int8 is not None and ix32.int8 is None
    qs = np.concatenate(
        [g[rng.integers(0, M, 4)] + 0.05 * random_unit(rng, 4, m.dim), random_unit(rng, 4, m.dim)]
    )
    for k in (1, 5, 37):
        for q in qs:
            i8, s8 = m.search(q, ix, k=k)
            i32, s32 = m.search(q, ix32, k=k)
            assert i8.shape == (k,) and s8.dtype == np.float32
            np.testing.assert_allclose(s8, s32, rtol=2e-6, atol=2e-6)  # fp32 sums in another order
            full = ix32.embeddings.astype(np.float64) @ (q / np.linalg.norm(q)).astype(np.float64)
            kth = np.sort(full)[-k]
            assert (full[i8] >= kth - 1e-5).all(), "a row outside the exact top k"
            assert np.all(np.diff(s8) <= 0)
        i8, s8 = m.search(qs[:5], ix, k=k)  # several queries in one first pass
        i32, s32 = m.search(qs[:5], ix32, k=k)
        assert i8.shape == (5, k)
        np.testing.assert_allclose(s8, s32, rtol=2e-6, atol=2e-6)  # fp32 sums in another order
    assert m.search(PROMPT, ix, k=3)[0].shape == (3,)  # a text query
    assert callable(l2m_sdk.search), "l2m_sdk.search was shadowed by a submodule"


PROMPT = "a kite drifting to the top left corner"


def test_near_duplicate_gallery_falls_back_to_fp32(default_model, rng, random_unit):
    """Rows all within the int8 bound of each other leave every row a candidate: the fp32 pass runs
    and the answer is still exact."""
    m = default_model
    base = random_unit(rng, 1, m.dim)
    g = base + 3e-3 * random_unit(rng, topk.MIN_ROWS, m.dim)
    ix = m.index(g)
    q = ix.embeddings[123]
    a, scale, qn, eps = quantize_queries(q[None])
    sums = (a.astype(np.int64) - 128) @ ix.int8.q.astype(np.int64)
    assert topk.top_k_exact(sums[0], scale[0], qn[0], eps[0], ix.int8, ix.embeddings, q, 5) is None
    i, s = m.search(q, ix, k=5)
    full = ix.embeddings @ q
    np.testing.assert_array_equal(s, np.sort(full)[::-1][:5])
    np.testing.assert_array_equal(full[i], s)


def test_small_galleries_and_opt_out_keep_no_int8_rows(random_unit, rng):
    assert l2m_sdk.Index(random_unit(rng, topk.MIN_ROWS - 1, 8)).int8 is None
    big = l2m_sdk.Index(random_unit(rng, topk.MIN_ROWS, 8))
    assert big.int8.nbytes == topk.MIN_ROWS * (8 + 4 + 4 + 4)
    assert not big.int8.q.flags.writeable
    assert l2m_sdk.Index(big.embeddings, int8=False).int8 is None


def test_shipped_graph_is_the_one_export_ops_writes():
    pytest.importorskip("onnx", reason="export extra (pip install -e '.[export]')")
    from export.ops import matmul_u8s8_bytes

    assert GRAPH.read_bytes() == matmul_u8s8_bytes()
