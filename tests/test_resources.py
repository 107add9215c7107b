"""Resources: no memory growth over 10,000 generate calls, sessions released on close, bounded caches.

The memory test runs in a fresh subprocess (this file run as a script) so that nothing else the test
session allocates shows up in its RSS. RSS is read from /proc/self/statm (resident pages), sampled every
1,000 calls after a warm-up that has seen every input shape once (ONNX Runtime's CPU arena grows to the
largest shape it has run and then stays) and filled the text cache. Growth = the last sample minus the
first; issue 7 bounds it at 5 MB.

    python tests/test_resources.py --calls 10000 --points 64 --frames 30     # the default sizes, by hand
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path

import numpy as np
import pytest

import l2m_sdk

REPO = Path(__file__).resolve().parents[1]
RSS_LIMIT_MB = 5.0  # issue 7
PROMPTS = [f"{a} {b}" for a in ("a ball", "a car", "the crowd", "a bird", "a wheel") for b in range(10)]


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def memory_run(
    calls: int, warmup: int, points: list[int], frames: list[int], cache_size: int, threads: int | None
) -> dict:
    """`calls` generate calls after `warmup` ones: 9 in 10 reuse one of 50 prompts (cache hits), 1 in 10
    is a new prompt (a text-tower run and a cache eviction); N and T cycle through the given sizes;
    every other call samples (temperature 0.3, seeded). Returns RSS samples in MB."""
    model = l2m_sdk.load("default", backend="ort", device="cpu", threads=threads, cache_size=cache_size)
    rng = np.random.default_rng()
    shapes = [(n, t) for n in points for t in frames]

    def call(i: int) -> None:
        text = f"points drift {i} times" if i % 10 == 0 else PROMPTS[i % len(PROMPTS)]
        n, t = shapes[i % len(shapes)]
        pts = rng.uniform(-0.8, 0.8, (n, 2)).astype(np.float32)
        out = model.generate(text, pts, t, i, 0.3 if i % 2 else 0.0)
        if out.shape != (t, n, 2):
            raise AssertionError(out.shape)

    for i in range(warmup):
        call(i)
    gc.collect()
    samples = [rss_bytes()]
    t0 = time.perf_counter()
    for i in range(calls):
        call(warmup + i)
        if (i + 1) % 1000 == 0:
            samples.append(rss_bytes())
    secs = time.perf_counter() - t0
    gc.collect()
    samples.append(rss_bytes())
    mb = [s / 2**20 for s in samples]
    model.close()
    return {
        "calls": calls,
        "seconds": round(secs, 1),
        "rss_mb": [round(v, 2) for v in mb],
        "growth_mb": round(mb[-1] - mb[0], 2),
        "max_over_start_mb": round(max(mb) - mb[0], 2),
        "cache_entries": cache_size,
    }


def load_close_run(cycles: int) -> dict:
    """RSS after each of `cycles` load / generate / close / del rounds (sessions and memory-mapped
    weights must go with the model). glibc keeps freed heap for reuse (RSS after a round wanders by
    ~15 MB between rounds); malloc_trim(0) hands it back, so "trimmed" is what is still allocated."""
    import ctypes

    try:
        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc: no trimmed figure
        trim = None
    raw, trimmed = [], []
    for _ in range(cycles):
        m = l2m_sdk.load("default", backend="ort", device="cpu")
        m.generate("a ball bouncing to the right")
        m.close()
        del m
        gc.collect()
        raw.append(round(rss_bytes() / 2**20, 2))
        if trim is not None:
            trim(0)
            trimmed.append(round(rss_bytes() / 2**20, 2))
    return {"rss_mb": raw, "trimmed_mb": trimmed or raw}


def _subprocess(args: list[str], timeout: float) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run(
        [sys.executable, __file__, *args], capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.timeout(600)
def test_no_memory_growth_over_10000_generate_calls(capsys):
    got = _subprocess(["--calls", "10000"], timeout=540)
    with capsys.disabled():
        print(
            f"\nRSS over {got['calls']} generate calls after warm-up: growth {got['growth_mb']} MB "
            f"(largest rise {got['max_over_start_mb']} MB), samples {got['rss_mb']}, {got['seconds']} s"
        )
    assert got["growth_mb"] < RSS_LIMIT_MB, got


@pytest.mark.timeout(300)
def test_load_close_cycles_release_memory(capsys):
    """Eight load/close rounds: the memory still allocated after the last is within 5 MB of that after
    the second (ONNX Runtime keeps some process-wide state after its first session; models keep none:
    a model left behind would hold its ~20 MB of sessions and arenas)."""
    got = _subprocess(["--load-cycles", "8"], timeout=280)
    rss = got["trimmed_mb"]
    growth = rss[-1] - rss[1]
    with capsys.disabled():
        print(f"\nRSS after each load/close round (MB, after malloc_trim): {rss}; growth {growth:.2f} MB")
    assert growth < RSS_LIMIT_MB, got


# ------------------------------------------------------------------------------ in-process checks
@pytest.fixture
def fresh_model():
    m = l2m_sdk.load("default", backend="ort", device="cpu", cache_size=5)
    yield m
    m.close()


def _session_refs(model) -> list[weakref.ref]:
    refs = []
    for s in model._sessions.values():
        refs.append(weakref.ref(s._sess))
        refs += [weakref.ref(v) for v in getattr(s, "_keep", [])]
    assert refs
    return refs


def _every_call(model) -> list:
    traj = np.zeros((4, 3, 2), np.float32)
    emb = np.ones(384, np.float32)
    return [
        lambda: model.generate("a ball bouncing"),
        lambda: model.encode_text("a ball bouncing"),
        lambda: model.encode_motion(traj),
        lambda: model.decode(emb),
        lambda: model.search("a ball", np.ones((3, 384), np.float32)),
        lambda: model.classify(traj, ["a", "b"]),
        lambda: model.style_transfer(traj, "fast"),
    ]


@pytest.mark.parametrize("how", ["close", "context"])
def test_close_releases_sessions(how):
    """close() (or leaving `with`) drops every ONNX Runtime session and the weight arrays handed to it;
    afterwards every call raises RuntimeError saying the model is closed (also for cached prompts)."""
    m = l2m_sdk.load("default", backend="ort", device="cpu")
    m.encode_text("a ball bouncing")  # cached
    refs = _session_refs(m)
    if how == "close":
        m.close()
        m.close()  # idempotent
    else:
        with m:
            pass
    gc.collect()
    alive = [r for r in refs if r() is not None]
    assert not alive, f"{len(alive)} of {len(refs)} sessions / initializers still referenced after close"
    assert m._sessions == {} and len(m._cache) == 0
    for fn in _every_call(m):
        with pytest.raises(RuntimeError, match="closed"):
            fn()


def test_dropped_model_is_collected():
    """Nothing global keeps a Model alive: dropping the last reference frees it and its sessions."""
    m = l2m_sdk.load("default", backend="ort", device="cpu")
    m.generate("a ball bouncing")
    refs = [weakref.ref(m), *_session_refs(m)]
    del m
    gc.collect()
    assert all(r() is None for r in refs)


@pytest.mark.timeout(120)
def test_close_while_threads_call():
    """Closing a model while 4 threads call it: each call returns a valid result or raises RuntimeError;
    every thread finishes."""
    m = l2m_sdk.load("default", backend="ort", device="cpu")
    outcomes: list[str] = []
    stop = threading.Event()

    def worker(t: int) -> None:
        rng = np.random.default_rng(t)
        while not stop.is_set():
            try:
                out = m.generate(f"a ball {rng.integers(100)}", rng.uniform(-1, 1, (5, 2)), 8)
                outcomes.append("ok" if out.shape == (8, 5, 2) and np.isfinite(out).all() else "bad")
            except RuntimeError as e:
                outcomes.append("closed" if "closed" in str(e) else f"error: {e}")
                return
            except Exception as e:  # noqa: BLE001 - reported below
                outcomes.append(f"error: {type(e).__name__}: {e}")
                return

    threads = [threading.Thread(target=worker, args=(t,), daemon=True) for t in range(4)]
    for th in threads:
        th.start()
    time.sleep(0.5)
    m.close()
    time.sleep(0.2)
    stop.set()
    for th in threads:
        th.join(timeout=60)
    assert not any(th.is_alive() for th in threads), "a thread hung after close"
    bad = [o for o in outcomes if o not in ("ok", "closed")]
    assert not bad, bad[:5]
    assert "ok" in outcomes and "closed" in outcomes, sorted(set(outcomes))


def test_text_cache_is_bounded_lru(fresh_model):
    """cache_size=5 keeps at most 5 prompts, the most recently used calls first, whatever the call
    pattern; a hit returns exactly what computing the call again gives."""
    m = fresh_model
    texts = [f"prompt number {i}" for i in range(40)]
    for t in texts[:20]:
        m.encode_text(t)
    assert list(m._cache) == [(t,) for t in texts[15:20]]
    m.encode_text(texts[15])  # touch: becomes most recent
    m.encode_text(texts[20:30])  # a batch of 10 prompts: more than the cache holds, not cached
    assert list(m._cache) == [(t,) for t in (*texts[16:20], texts[15])]
    m.encode_text(texts[28])
    m.generate(texts[30])
    m.encode_text(texts[31:33])  # one entry of two prompts: evicts the two least recent
    assert list(m._cache) == [(texts[15],), (texts[28],), (texts[30],), tuple(texts[31:33])]
    assert m._cache_rows == 5
    with l2m_sdk.load("default", backend="ort", device="cpu", cache_size=0) as nocache:
        nocache.encode_text(texts[:50])
        assert len(nocache._cache) == 0
        np.testing.assert_array_equal(nocache.encode_text(texts[31:33]), m.encode_text(texts[31:33]))
        np.testing.assert_array_equal(nocache.encode_text(texts[30]), m.encode_text(texts[30]))


def test_cache_size_checked():
    with pytest.raises(ValueError, match="cache_size"):
        l2m_sdk.load("default", cache_size=-1)
    with pytest.raises(TypeError, match="cache_size"):
        l2m_sdk.load("default", cache_size=2.5)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="RSS measurements for tests/test_resources.py")
    ap.add_argument("--calls", type=int, default=10_000)
    ap.add_argument("--warmup", type=int, default=1_000)
    ap.add_argument("--points", type=int, nargs="+", default=[4, 8, 16])
    ap.add_argument("--frames", type=int, nargs="+", default=[8, 16])
    ap.add_argument("--cache-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None, help="intra-op threads (default: the SDK default)")
    ap.add_argument("--load-cycles", type=int, default=0, help="measure load/close rounds instead")
    a = ap.parse_args(argv)
    if a.load_cycles:
        print(json.dumps(load_close_run(a.load_cycles)))
    else:
        print(json.dumps(memory_run(a.calls, a.warmup, a.points, a.frames, a.cache_size, a.threads)))


if __name__ == "__main__":
    main()
