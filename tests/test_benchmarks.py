"""Smoke tests of the latency harness on tiny settings: FLOP counts, correctness checks, table writer.
No timing asserts (the numbers themselves live in benchmarks/results/)."""

import json
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from benchmarks import bench_setup as S  # noqa: E402
from benchmarks import flops as F  # noqa: E402
from benchmarks import latency as LT  # noqa: E402
from benchmarks import latency_report as R  # noqa: E402
from benchmarks import startup  # noqa: E402


@pytest.fixture
def rng():
    seed = time.time_ns() % (2**32)
    print(f"seed={seed}")
    return np.random.default_rng(seed)


class _Bar:
    def set_postfix_str(self, s):
        pass

    def update(self, n):
        pass


def _count(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc, torch.no_grad():
        fn()
    return fc.get_total_flops()


def test_analytic_flops_equal_torch_flop_counter(rng):
    """The napkin math must be exact for matrix products: compare with torch's own FLOP counter on
    random small configurations and shapes."""
    from export.model import ARDecoder, ModelConfig, MotionDecoder, MotionEncoder, TextAdapter, TextPool
    from export.text_towers import MiniLMTower

    cfg = ModelConfig(
        dim=int(rng.integers(8, 40)),
        width=8 * int(rng.integers(2, 6)),
        enc_layers=int(rng.integers(1, 3)),
        dec_layers=int(rng.integers(1, 3)),
        heads=2,
        ff=int(rng.integers(16, 64)),
        point_hidden=int(rng.integers(4, 24)),
        cond_tokens=int(rng.integers(1, 5)),
        adapter_hidden=int(rng.integers(4, 32)),
    )
    d = cfg.to_dict()
    B, T, N = (int(x) for x in rng.integers([1, 2, 1], [4, 12, 20]))
    z = torch.randn(B, cfg.dim)
    p0 = torch.rand(B, N, 2)
    times = torch.linspace(0, 1, T)
    dec, enc, ar = MotionDecoder(cfg), MotionEncoder(cfg), ARDecoder(cfg)
    assert _count(lambda: dec(z, p0, times)) == F.nar_decoder_flops(d, B, T, N)
    assert _count(lambda: enc(torch.rand(B, T, N, 2))) == F.encoder_flops(d, B, T, N)
    assert _count(lambda: ar(z, p0, times)) == F.ar_decoder_flops(cfg.width, cfg.dim, B, T, N)

    tower = MiniLMTower(vocab=50, w=16, layers=2, heads=2, ff=32).eval()
    adapter = TextAdapter(ModelConfig(dim=16, adapter_hidden=cfg.adapter_hidden))
    L = int(rng.integers(2, 12))
    ids = torch.randint(1, 50, (B, L))
    got = _count(lambda: adapter(tower(ids, torch.ones_like(ids))))
    t = F.Tower(layers=2, width=16, ff=32, out_dim=16, read_at_one_token=False, vocab=50)
    assert got == F.text_flops(t, B, L, cfg.adapter_hidden)
    pool, mask = TextPool(16), torch.ones_like(ids)
    got = _count(lambda: adapter(pool(tower.token_states(ids, mask), mask)))
    assert got == F.text_flops(t, B, L, cfg.adapter_hidden, attention_pool=True)
    pool = TextPool(16, hidden=12)
    got = _count(lambda: adapter(pool(tower.token_states(ids, mask), mask)))
    assert got == F.text_flops(t, B, L, cfg.adapter_hidden, attention_pool=True, pool_hidden=12)
    got = _count(lambda: adapter(pool(tower.token_states(ids, mask, 1), mask)))
    assert got == F.text_flops(t, B, L, cfg.adapter_hidden, attention_pool=True, pool_hidden=12, depth=1)


def test_check_close_records_and_raises(rng):
    a = rng.standard_normal((3, 4)).astype(np.float32)
    checks = {}
    LT.check_close("same", a, a + 1e-6, 1e-4, checks)
    assert checks["same"]["ok"] and checks["same"]["max_abs_diff"] < 1e-4
    b = a.copy()
    b[rng.integers(3), rng.integers(4)] += 1e-2
    with pytest.raises(RuntimeError, match="check failed before timing"):
        LT.check_close("different", a, b, 1e-4, checks)
    assert not checks["different"]["ok"]


def test_steal_share_reads_proc_stat_deltas():
    """Steal share = stolen ticks / all ticks between two readings; unreadable or empty intervals give
    None rather than a number."""
    assert F.steal_share((10, 1000), (40, 1600)) == pytest.approx(30 / 600)
    assert F.steal_share((10, 1000), (10, 1000)) is None
    assert F.steal_share(None, (10, 1000)) is None
    now = F.cpu_ticks()
    if now is not None:  # Linux: monotone counters, steal part of the total
        later = F.cpu_ticks()
        assert 0 <= now[0] <= now[1] and later[1] >= now[1] and later[0] >= now[0]


def test_topk_matches_a_full_sort(rng):
    g = rng.standard_normal((300, 16)).astype(np.float32)
    q = rng.standard_normal(16).astype(np.float32)
    idx, sc = LT.topk(q, g, 5)
    want = np.argsort(-(g @ q), kind="stable")[:5]
    np.testing.assert_array_equal(idx, want)
    np.testing.assert_allclose(sc, (g @ q)[want], rtol=1e-6)


def test_accuracy_gate_measures_cosine(rng):
    """The quantization gate's cosine, on stand-in models whose embeddings differ by a known angle."""
    angle = float(rng.uniform(0.01, 0.3))
    e1 = np.array([1.0, 0.0, 0.0], np.float32)
    e2 = np.array([np.cos(angle), np.sin(angle), 0.0], np.float32)
    a = SimpleNamespace(encode_text=lambda p: e1)
    b = SimpleNamespace(encode_text=lambda p: e2)
    g = S.accuracy_gate(a, b, S.prompts(55))
    assert g["prompts"] == 55
    assert abs(g["mean_cosine"] - np.cos(angle)) < 1e-6 and abs(g["min_cosine"] - np.cos(angle)) < 1e-6
    assert len(set(S.prompts(300))) == 300


@pytest.mark.slow
def test_harness_rows_checks_and_tables(tmp_path, rng):
    """One tiny run of the default-bundle parts: checks pass, rows have every field, and the writer
    produces Markdown that shows them, JSON that round-trips, and a PNG."""
    import l2m_sdk

    args = SimpleNamespace(quick=True, threads=1)
    b = LT.Bench(args, _Bar())
    b.n_gen, b.n_stage, b.sizes, b.galleries = 5, 3, (3,), (400,)
    m = l2m_sdk.load("default", backend="ort", device="cpu", threads=1, cache_size=0)
    b.check_default(m, 1)
    row = b.l2m_row("default", "ORT CPU fp32", m)
    b.text_rate(m, "default", "ORT CPU fp32")
    b.search(m, "default")
    # side by side with a stand-in reference (the real one needs CLIP): both schedules recorded
    ref = SimpleNamespace(generate=lambda texts: np.linalg.qr(rng.standard_normal((64, 64)))[0])
    sbs = b.side_by_side(ref, {"ORT CPU fp32": m})
    assert set(sbs) == {"back_to_back", "idle_gap"}
    for sched in sbs.values():
        assert set(sched) == {"reference", "ORT CPU fp32"} and all(v["n"] == 20 for v in sched.values())
    out = b.out
    assert all(c.get("ok", True) for c in out["checks"].values()), out["checks"]
    assert "default: generate B=3 row 0 vs B=1" in out["checks"]
    assert set(row["stages"]) == {"tokenize", "text", "decoder", "render"}
    for k in ("min", "p50", "p90", "p99"):
        assert row["generate_b1"][k] > 0
    assert row["generate_b1"]["min"] <= row["generate_b1"]["p50"] <= row["generate_b1"]["p99"]
    assert row["flops"]["generate"] == row["flops"]["text"] + row["flops"]["decoder"]

    out["machine"] = F.machine(1)
    out["machine"]["load_avg_1m_at_end"] = 0.0
    out["gemm"] = F.gemm_rates(1, 64, 2)
    out["settings"] = {"quick": True, "threads": 1, "bundle": "default", "prompt_12": LT.PROMPT_12}
    out["cold_start"] = {}
    out["not_available"] = startup.not_available(LT.DEFAULT_BUNDLE)
    out["elapsed_s"] = 1.0
    fl = LT.frame_loop(LT.DEFAULT_BUNDLE, 1, 6, ["fp32", "int8"])
    assert set(fl["ms"]) == {"fp32", "int8"} and fl["budget_ms"] == pytest.approx(1e3 / 120)
    for st in fl["ms"].values():
        assert st["n"] == 6 and 0 < st["min"] <= st["p50"] <= st["max"] and 0 <= st["over_budget"] <= 1
    out["frame_loop"] = fl
    cpu = []
    for host in ("idle", "busy"):  # 10 frames of 0.1 s: the busy host computes ~1 s more than the idle one
        t0 = time.process_time()
        r = LT.frame_loop(LT.DEFAULT_BUNDLE, 1, 10, ["fp32"], fps=10.0, host=host)
        cpu.append(time.process_time() - t0)
        assert r["host"] == host and r["ms"]["fp32"]["n"] == 10
    assert cpu[1] - cpu[0] > 0.6, cpu
    out["frame_loop_busy"] = r
    with pytest.raises(ValueError, match="host"):
        LT.frame_loop(LT.DEFAULT_BUNDLE, 1, 1, ["fp32"], host="asleep")
    for share in (row["generate_b1_steal"], fl["steal"]):  # None only where /proc/stat is unreadable
        assert share is None if F.cpu_ticks() is None else 0.0 <= share <= 1.0
    out["acceptance"] = R.acceptance(out)
    assert any("p99" in a["what"] for a in out["acceptance"])
    md = R.write(out, tmp_path)
    assert "| default | ORT CPU fp32 |" in md and "Not measured here" in md
    assert "ms idle before each" in md and "back to back" in md
    assert "60 fps frame loop" in md and sum("frame loop" in a["what"] for a in out["acceptance"]) == 3
    assert "| computing | fp32 |" in md and "| sleeping | int8 |" in md
    assert any("CLIP: ORT CPU fp32 vs reference" in a["what"] for a in out["acceptance"])
    assert f"{row['generate_b1']['p50']:.2f}" in md
    if row["generate_b1_steal"] is not None:
        steal = f"{row['generate_b1']['p99']:.2f} ms (p50"
        assert any(
            a["measured"].startswith(steal) and "host steal" in a["measured"] for a in out["acceptance"]
        )
    back = json.loads((tmp_path / "latency.json").read_text())
    assert back["rows"][0]["generate_b1"] == row["generate_b1"]
    png = (tmp_path / "latency.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000
    m.close()


@pytest.mark.slow
def test_cold_start_subprocess_reports_its_own_memory():
    """The fresh-interpreter measurement returns every stage and a peak RSS of its own (VmHWM), not the
    parent's inherited ru_maxrss."""
    bundle = Path(LT.DEFAULT_BUNDLE)
    import resource

    big = np.ones(3 << 28, np.uint8)  # the parent now peaks 768 MB above anything the child needs
    parent_peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    r = startup.cold_start("l2m", bundle, 1, 1, "a ball bouncing to the right")
    del big
    parts = r["import_s"] + r["runtime_import_s"] + r["verify_s"] + r["sessions_s"] + r["first_call_s"]
    assert abs(parts - r["total_s"]) < 1e-3
    assert 0 < r["peak_rss_mb"] < parent_peak_mb - 500, (r["peak_rss_mb"], parent_peak_mb)


def test_clip_configuration_builds_from_the_shipped_default():
    """The benchmark's CLIP ViT-B-32 model takes the shipped default's sizes; whatever text pooling the
    default uses, the CLIP model must be constructible (CLIP pools at its end-of-text token)."""
    from export.model import L2M, ModelConfig

    default = json.loads((LT.DEFAULT_BUNDLE / "manifest.json").read_text())["model"]
    cfg = S.clip_model_config(default)
    model = L2M(ModelConfig.from_dict(cfg))
    assert model.pool is None and model.cfg.dim == 512 and model.cfg.text_tower.startswith("clip:")
    assert {k: cfg[k] for k in ("width", "enc_layers", "dec_layers")} == {
        k: default[k] for k in ("width", "enc_layers", "dec_layers")
    }
