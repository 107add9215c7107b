"""One Model from many threads, and the default model's first use from many threads.

Threading model (the contract these tests hold the runtime to):
  - A `Model` may be called from any number of threads at once, with no lock around it in user code.
    Every call gives the same result it gives when calls run one at a time (here: bitwise equal on
    ONNX Runtime CPU), raises no exception that serial use would not raise, and never deadlocks.
  - Inference runs in ONNX Runtime with the GIL released, so calls from several threads overlap; each
    call also uses the model's own intra-op threads (`threads=`, default the usable CPUs, at most 8).
    In a game or control loop, call from a worker thread and keep `threads` below the cores left over.
  - The only shared mutable state is the LRU cache of text embeddings, guarded by one lock that is never
    held while a graph runs. It is keyed by a call's exact prompt list: a prompt's float32 embedding
    depends slightly (~3e-8) on the batch it is computed in, so a per-prompt cache would make results
    depend on which call embedded a prompt first (measured: coordinates off by up to 1.4e-6). Keyed per
    call, a hit returns exactly what the call computes without a cache: results are bitwise
    reproducible, cache on or off, whatever the threads do.
  - The module-level functions (`l2m_sdk.generate`, ...) share one default Model, loaded on first use
    under a lock: threads that race on the first call wait for the one load and all get the same model.
  - `close()` is not synchronised with calls in flight: close a model after the threads that use it
    are done (a call racing with close either completes or raises RuntimeError, never crashes).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import l2m_sdk

THREADS, CALLS = 8, 200
WORDS = ["a ball", "a car", "the crowd", "a bird", "points", "a square", "the swarm", "a wheel"]
MOVES = ["bouncing right", "turning left", "spreads out", "spins clockwise", "zooms in", "falls down"]
REPO = Path(__file__).resolve().parents[1]


def _plan(rng: np.random.Generator, thread: int) -> list[tuple[str, tuple]]:
    """200 calls for one thread: a mix of generate / encode_text / encode_motion / search on small
    inputs. Prompts repeat across threads (same cache key raced from several threads) and within one."""
    calls = []
    gallery = rng.standard_normal((20, 384)).astype(np.float32)
    for i in range(CALLS):
        text = f"{WORDS[rng.integers(len(WORDS))]} {MOVES[rng.integers(len(MOVES))]} {rng.integers(12)}"
        op = ("generate", "encode_text", "encode_motion", "search")[(i + thread) % 4]
        if op == "generate":
            pts = rng.uniform(-0.8, 0.8, (int(rng.integers(1, 7)), 2)).astype(np.float32)
            seed = int(rng.integers(1 << 30))
            args = (text, pts, int(rng.integers(2, 12)), seed, float(rng.choice([0.0, 0.5])))
        elif op == "encode_text":
            args = (text if i % 3 else [text, text + " twice", "x"],)
        elif op == "encode_motion":
            B, T, N = int(rng.integers(1, 3)), int(rng.integers(2, 9)), int(rng.integers(1, 7))
            args = (rng.uniform(-1, 1, (B, T, N, 2)).astype(np.float32),)
        else:
            args = (text, gallery, int(rng.integers(1, 8)))
        calls.append((op, args))
    return calls


def _flat(result) -> list[np.ndarray]:
    return [np.asarray(r) for r in (result if isinstance(result, tuple) else (result,))]


def _run_threads(model, plans) -> tuple[list, list[str], float]:
    """Run each plan in its own thread, all released at once; returns (results, errors, seconds)."""
    results = [[None] * CALLS for _ in plans]
    errors: list[str] = []
    start = threading.Barrier(len(plans))

    def worker(t: int) -> None:
        start.wait()
        try:
            for i, (op, args) in enumerate(plans[t]):
                results[t][i] = getattr(model, op)(*args)
        except BaseException as e:  # noqa: BLE001 - reported by the test
            errors.append(f"thread {t}: {type(e).__name__}: {e}")

    threads = [threading.Thread(target=worker, args=(t,), daemon=True) for t in range(len(plans))]
    t0 = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=240)
    stuck = [i for i, th in enumerate(threads) if th.is_alive()]
    assert not stuck, f"threads {stuck} still running after 240 s: deadlock or stall"
    return results, errors, time.perf_counter() - t0


def _compare(results, reference) -> tuple[int, int, float]:
    """(bitwise-equal results, results, largest |difference|)."""
    same = total = 0
    worst = 0.0
    for got_t, ref_t in zip(results, reference):
        for got, ref in zip(got_t, ref_t):
            g, r = _flat(got), _flat(ref)
            assert [a.shape for a in g] == [b.shape for b in r]
            total += 1
            same += all(np.array_equal(a, b) for a, b in zip(g, r))
            for a, b in zip(g, r):
                if a.dtype.kind == "f":  # search indices are compared by the test
                    worst = max(worst, float(np.abs(a.astype(np.float64) - b).max(initial=0.0)))
    return same, total, worst


@pytest.fixture(scope="module")
def plans_and_reference():
    """Fresh random plans; the reference is every call made serially on a cache-less Model."""
    seed = int(np.random.SeedSequence().entropy % (1 << 63))
    print(f"plan seed = {seed}")
    rng = np.random.default_rng(seed)
    plans = [_plan(rng, t) for t in range(THREADS)]
    with l2m_sdk.load("default", backend="ort", device="cpu", cache_size=0) as ref:
        reference = [[getattr(ref, op)(*args) for op, args in plan] for plan in plans]
    return plans, reference


@pytest.mark.timeout(600)
@pytest.mark.parametrize("cache_size", [0, 16])
def test_threads_equal_serial(plans_and_reference, cache_size, capsys):
    """8 threads x 200 mixed calls on one Model: no error, no stall, results equal serial calls.
    Bitwise, both without the cache and with a small one (cache_size=16: evicting all the time, raced by
    8 threads)."""
    plans, reference = plans_and_reference
    with l2m_sdk.load("default", backend="ort", device="cpu", cache_size=cache_size) as model:
        results, errors, secs = _run_threads(model, plans)
        assert model._cache_rows <= cache_size
    assert not errors, errors[:5]
    same, total, worst = _compare(results, reference)
    with capsys.disabled():
        print(
            f"\n{THREADS} threads x {CALLS} calls, cache_size={cache_size}: {same}/{total} bitwise equal to "
            f"serial, largest |difference| {worst:.3g}, {secs:.1f} s"
        )
    assert same == total, f"{total - same} of {total} results differ from serial (largest {worst:.3g})"


DEFAULT_INIT = textwrap.dedent(
    """
    import json, sys, threading, time
    import l2m_sdk

    real_load = l2m_sdk.load
    loads = []

    def counting_load(*a, **kw):
        loads.append(threading.get_ident())
        time.sleep(0.5)  # a wide window for a second initialiser to slip in, were there no lock
        return real_load(*a, **kw)

    l2m_sdk.load = counting_load
    n = int(sys.argv[1])
    barrier = threading.Barrier(n)
    ids, outs, errors = [None] * n, [None] * n, []

    def worker(i):
        barrier.wait()
        try:
            outs[i] = l2m_sdk.generate("a ball bouncing to the right", num_frames=4)
            ids[i] = id(l2m_sdk.default_model())
        except BaseException as e:
            errors.append(repr(e))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    same = all(o is not None and (o == outs[0]).all() for o in outs)
    print(json.dumps({"loads": len(loads), "ids": len(set(ids)), "errors": errors, "same": bool(same),
                      "alive": sum(t.is_alive() for t in threads)}))
    """
)


@pytest.mark.timeout(300)
def test_default_model_loads_once():
    """8 threads call l2m_sdk.generate at once in a fresh process: one load, one shared model."""
    r = subprocess.run(
        [sys.executable, "-c", DEFAULT_INIT, str(THREADS)],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=REPO,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["alive"] == 0 and not got["errors"], got
    assert got["loads"] == 1, f"default model loaded {got['loads']} times"
    assert got["ids"] == 1 and got["same"], got
