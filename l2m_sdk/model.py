"""The runtime model: text -> trajectories, trajectories -> embeddings, search, editing.

Conventions: trajectories are float32 (T, N, 2) or (B, T, N, 2) in normalised image coordinates,
x in [-1, 1] left to right and **y in [-1, 1] top to bottom**; frame 0 of a generation equals the
initial points exactly. Embeddings are float32 unit vectors (D,) or (B, D).

Threading: a Model may be called from many threads at once. ONNX Runtime sessions are thread-safe;
the text-embedding cache takes a lock; no call mutates shared arrays. Results do not depend on which
thread runs a call, on concurrency or on the cache: they are bitwise those of serial, cache-less calls.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from functools import lru_cache
from pathlib import Path

import numpy as np

from l2m_sdk import _validate as V
from l2m_sdk.bundle import Bundle, BundleError, load_bundle

log = logging.getLogger("l2m_sdk")
TEXT_CHUNK = 256  # prompts per text-tower call: bounded memory for huge lists
PRECISIONS = ("fp32", "int8")


def default_initial_points(num_points: int, half_size: float = 0.15) -> np.ndarray:
    """A centred square grid (N, 2): ceil(sqrt(N)) columns filled row by row, top row first."""
    n = V.integer(num_points, "num_points", 1, V.MAX_POINTS)
    g = int(np.ceil(np.sqrt(n)))
    a = np.linspace(-half_size, half_size, g) if g > 1 else np.zeros(1)
    xy = np.stack(np.meshgrid(a, a), -1).reshape(-1, 2)[:n]
    if n < g * g:
        xy = xy - xy.mean(0)  # keep a partial grid centred
    return xy.astype(np.float32)


def _slerp(a: np.ndarray, b: np.ndarray, t: np.ndarray, what: str = "alphas") -> np.ndarray:
    """Spherical interpolation between unit rows a (B, D), b (B, D) at t (K,) -> (K, B, D) float32,
    computed in float64. Opposite rows (cosine within 1e-6 of -1) have no unique path between them,
    and float32 rounding alone would pick its direction: ValueError for any t strictly inside
    (0, 1); t = 0 and t = 1 still give a and b (the linear branch when sin(omega) is 0, else the slerp
    formula, whose weights are then exactly 1 and 0)."""
    a64, b64, t64 = a.astype(np.float64), b.astype(np.float64), np.asarray(t, np.float64)
    dot = np.clip((a64 * b64).sum(-1), -1.0, 1.0)  # (B,)
    opposite = dot < -1.0 + 1e-6
    if opposite.any() and ((t64 > 0) & (t64 < 1)).any():
        rows = np.flatnonzero(opposite)
        raise ValueError(
            f"the two endpoints point in opposite directions (cosine {dot[rows[0]]:.7f}) in row(s) "
            f"{rows[:8].tolist()}: no unique path on the sphere joins them; use {what} 0 and 1 only, "
            "or move one endpoint (e.g. edit() it, or interpolate through a third point)"
        )
    om = np.arccos(dot)
    so = np.sin(om)
    t3 = t64[:, None, None]
    lin = (1 - t3) * a64 + t3 * b64
    with np.errstate(invalid="ignore", divide="ignore"):
        sl = (np.sin((1 - t3) * om[:, None]) * a64 + np.sin(t3 * om[:, None]) * b64) / so[:, None]
        out = np.where((so < 1e-6)[None, :, None], lin, sl)
        out = out / np.linalg.norm(out, axis=-1, keepdims=True)
    return out.astype(np.float32)


def ensemble_embeddings(e: np.ndarray, groups: list[list[str]]) -> np.ndarray:
    """(sum of group sizes, D) embeddings of the flattened groups -> (len(groups), D) float32: each
    group's mean, renormalised (a label described by several texts, as in classify)."""
    out = np.empty((len(groups), e.shape[1]), np.float32)
    start = 0
    for i, group in enumerate(groups):
        if len(group) == 1:  # a single text is its own embedding, bit for bit
            out[i] = e[start]
        else:
            m = e[start : start + len(group)].mean(0)
            out[i] = m / max(float(np.linalg.norm(m)), 1e-12)
        start += len(group)
    return out


def _label_prompts(labels) -> tuple[list[str], list[list[str]]]:
    """classify()'s labels -> (names, prompts per name). A str or list of str: each text is its own
    label; a dict: name -> a text or a non-empty list of texts (ensembled)."""
    from l2m_sdk.tokenizer import as_text_list

    if not isinstance(labels, dict):
        texts, _ = as_text_list(labels)
        return texts, [[t] for t in texts]
    if not labels:
        raise ValueError("labels dict is empty; pass at least one {name: text or list of texts}")
    names, prompts = [], []
    for name, value in labels.items():
        if not isinstance(name, str):
            raise TypeError(f"labels keys must be str (the names returned), got {type(name).__name__}")
        if isinstance(value, (list, tuple)) and not value:
            raise ValueError(f"labels[{name!r}] is an empty list; give at least one text for the label")
        if not isinstance(value, (str, list, tuple)):
            raise TypeError(
                f"labels[{name!r}] must be a str or a list of str (texts describing the label), "
                f"got {type(value).__name__}"
            )
        texts, _ = as_text_list(value)
        names.append(name)
        prompts.append(texts)
    return names, prompts


class Index:
    """A search gallery validated and normalised once (``Model.index``): float32 unit rows, read-only.

    Searching a raw array re-validates it (finite, non-zero, renormalised in float64) on every call, which
    costs far more than the search itself on a large library; an Index pays that once.

    A gallery of at least `topk.MIN_ROWS` rows also keeps an int8 image of its rows (a quarter of their
    size more memory) for search's int8 first pass, which returns the fp32 search's result exactly
    (l2m_sdk/topk.py); `int8=False` skips it."""

    __slots__ = ("embeddings", "dim", "int8")

    def __init__(self, embeddings: np.ndarray, int8: bool = True):
        from l2m_sdk.topk import MIN_ROWS, Int8Rows

        e = np.ascontiguousarray(embeddings, dtype=np.float32)
        e.flags.writeable = False
        self.embeddings = e
        self.dim = int(e.shape[1])
        self.int8 = Int8Rows(e) if int8 and e.shape[0] >= MIN_ROWS else None

    def __len__(self) -> int:
        return int(self.embeddings.shape[0])

    def __repr__(self) -> str:
        return f"Index({len(self)} x {self.dim})"


class Model:
    """A loaded bundle on one backend. Use `l2m_sdk.load(...)` to make one.

    backend: "auto" | "ort" | "trt"; device: "auto" | "cpu" | "cuda"; threads: intra-op threads per
    graph (default: L2M_THREADS or the usable CPUs, at most 8); cache_size: prompts whose embeddings
    are kept in an LRU cache keyed by each call's exact prompt list (0 disables it); precision: "fp32"
    (exact: the exported graphs, equal to the PyTorch model within float32 rounding) or "int8" (ONNX
    Runtime CPU only: the text tower's matrix products in int8, weights derived at load, l2m_sdk/int8.py;
    1.25x-1.9x faster generate at B = 1 by benchmark run, held-out evaluation within noise of fp32, see
    the README).
    """

    def __init__(
        self,
        bundle: str | Path | Bundle = "default",
        backend: str = "auto",
        device: str = "auto",
        threads: int | None = None,
        cache_size: int = 1024,
        verify: bool = True,
        precision: str = "fp32",
    ):
        from l2m_sdk.backends import choose_backend
        from l2m_sdk.backends.ort import OrtSession, default_threads
        from l2m_sdk.tokenizer import TextTokenizer

        self.bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle, verify=verify)
        b = self.bundle
        m = b.model
        self.dim = int(m["dim"])
        self.num_frames = int(m.get("num_frames", 30))
        self.num_points = int(m.get("num_points", 64))
        self.cache_size = V.integer(cache_size, "cache_size", 0, 1 << 24)
        threads = default_threads() if threads is None else V.integer(threads, "threads", 1, 256)
        self.choice = choose_backend(backend, device, b.path, b.manifest)
        self.backend = self.choice.name
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if precision == "int8" and (self.backend != "ort" or self.choice.device != "cpu"):
            raise ValueError(
                f"precision='int8' runs on ONNX Runtime CPU only (this model chose {self.backend} on "
                f"{self.choice.device}); pass backend='ort', device='cpu', or precision='fp32'"
            )
        self.precision = precision
        self.threads = threads
        tok = b.manifest["tokenizer"]
        tok_file = b.path / tok.get("file", "tokenizer.json")
        self.tokenizer = TextTokenizer(tok_file, tok)
        self._sessions: dict = {}
        roles = [r for r in ("text", "motion_encoder", "motion_decoder") if r in b.manifest["graphs"]]
        try:
            for role in roles:
                graph = b.ort_file(role)
                engine = self.choice.engines.get(role) if self.choice.name == "trt" else None
                if engine is not None:
                    from l2m_sdk.backends.trt import TrtSession

                    self._sessions[role] = TrtSession(engine, cuda_graphs=role == "motion_decoder")
                elif role == "text" and precision == "int8":
                    graph, arrays = b.int8_text()
                    self._sessions[role] = OrtSession(graph, self.choice.providers, threads, arrays)
                else:
                    self._sessions[role] = OrtSession(
                        graph, self.choice.providers, threads, b.external.get(graph.name)
                    )
        except Exception as e:
            self.close()
            if "onnxruntime" in type(e).__module__:
                raise BundleError(
                    f"bundle file {graph}: ONNX Runtime could not load this graph ({e}); "
                    "the bundle is corrupt or was written by another exporter, export it again"
                ) from e
            raise
        self._default_p0 = V.points(default_initial_points(self.num_points), 1)
        self._default_p0.flags.writeable = False
        self._cache: OrderedDict[tuple[str, ...], np.ndarray] = OrderedDict()  # prompt list -> (B, D)
        self._cache_rows = 0  # prompts held, at most cache_size
        self._lock = threading.Lock()
        self._int8_search = None  # search's int8 first pass, made on the first large Index search
        log.info("loaded bundle %s on %s (%s)", b.name, self.backend, self.choice.reason)

    # ------------------------------------------------------------------------------------- lifecycle
    def close(self) -> None:
        """Release sessions (and GPU memory). The model cannot be used afterwards."""
        for s in getattr(self, "_sessions", {}).values():
            s.close()
        self._sessions = {}
        if getattr(self, "_int8_search", None) is not None:
            self._int8_search.close()
            self._int8_search = None
        if hasattr(self, "_cache"):
            self._cache.clear()
            self._cache_rows = 0

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @staticmethod
    @lru_cache(maxsize=64)
    def _times(T: int) -> np.ndarray:
        """Frame times in [0, 1] for T frames (read-only, shared)."""
        t = np.linspace(0.0, 1.0, T, dtype=np.float32)
        t.flags.writeable = False
        return t

    def _run(self, role: str, feeds: dict) -> np.ndarray:
        s = self._sessions.get(role)
        if s is None:
            raise RuntimeError("this Model is closed; load a new one with l2m_sdk.load()")
        return s.run(feeds)[0]

    def info(self) -> dict:
        return {
            "bundle": str(self.bundle.path),
            "name": self.bundle.name,
            "backend": self.backend,
            "device": self.choice.device,
            "providers": self.choice.providers,
            "reason": self.choice.reason,
            "threads": self.threads,
            "dim": self.dim,
            "num_frames": self.num_frames,
            "num_points": self.num_points,
            "text_tower": self.bundle.model.get("text_tower"),
            "precision": self.precision,
        }

    # ------------------------------------------------------------------------------------------ text
    def encode_text(self, text: str | list[str]) -> np.ndarray:
        """Text -> unit embedding: str -> (D,), list of B str -> (B, D) float32. Prompts longer than the
        tower's window (MiniLM 256 tokens, CLIP 77) are truncated with a warning."""
        from l2m_sdk.tokenizer import as_text_list

        texts, single = as_text_list(text)
        # The cache maps a call's exact prompt list to its embeddings. A prompt's float32 embedding
        # depends (~3e-8) on the batch it was computed in (batch size, padded length), so caching per
        # call, not per prompt, keeps every result identical to what the call gives without a cache.
        key = tuple(texts)
        if self.cache_size:
            with self._lock:
                hit = self._cache.get(key)
                if hit is not None:
                    self._cache.move_to_end(key)
                    out = hit.copy()  # callers own what they get back
                    return out[0] if single else out
        uniq = list(dict.fromkeys(texts))
        emb_of: dict[str, np.ndarray] = {}
        # int8 quantizes activations with one scale per call (dynamic), so a batched prompt's embedding
        # would depend on its batch-mates (up to ~1e-2 per component, measured): int8 runs one prompt
        # per call, which costs nothing here (batched fp32 text throughput is within 10% of B = 1).
        step = 1 if self.precision == "int8" else TEXT_CHUNK
        for s in range(0, len(uniq), step):
            chunk = uniq[s : s + step]
            batch = self.tokenizer.encode(chunk)
            emb = self._run("text", {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask})
            emb_of.update(zip(chunk, emb.astype(np.float32, copy=False)))
        out = np.stack([emb_of[t] for t in texts])
        if self.cache_size and len(texts) <= self.cache_size:
            with self._lock:
                if key not in self._cache:
                    self._cache[key] = out.copy()
                    self._cache_rows += len(texts)
                self._cache.move_to_end(key)
                while self._cache_rows > self.cache_size:
                    self._cache_rows -= len(self._cache.popitem(last=False)[0])
        return out[0] if single else out

    # ---------------------------------------------------------------------------------------- motion
    def encode_motion(self, trajectories) -> np.ndarray:
        """(T, N, 2) -> (D,) or (B, T, N, 2) -> (B, D) unit embeddings. Any N >= 1, T >= 2."""
        traj, single = V.trajectories(trajectories)
        z = self._run("motion_encoder", {"trajectory": traj})
        return z[0] if single else z

    def decode(self, embedding, initial_points=None, num_frames: int | None = None) -> np.ndarray:
        """Embeddings (D,) or (B, D) -> trajectories (T, N, 2) or (B, T, N, 2); frame 0 = initial_points."""
        z, single = V.embeddings(embedding, self.dim)
        traj = self._decode(z, initial_points, num_frames)
        return traj[0] if single else traj

    def _decode(self, z: np.ndarray, initial_points, num_frames) -> np.ndarray:
        T = self.num_frames if num_frames is None else V.integer(num_frames, "num_frames", 2, V.MAX_FRAMES)
        if initial_points is None:  # the default grid, built and checked once (read-only)
            p0 = self._default_p0 if z.shape[0] == 1 else np.repeat(self._default_p0, z.shape[0], 0)
        else:
            p0 = V.points(initial_points, z.shape[0])
        times = self._times(T)
        z = np.ascontiguousarray(z, dtype=np.float32)  # the graph takes float32 only
        out = self._run("motion_decoder", {"embedding": z, "initial_points": p0, "times": times})
        out[:, 0] = p0  # the graph already gives frame 0 == p0 exactly; make it a contract
        return out

    def generate(
        self,
        text: str | list[str],
        initial_points=None,
        num_frames: int | None = None,
        seed: int | None = None,
        temperature: float = 0.0,
    ) -> np.ndarray:
        """Text -> trajectories. str -> (T, N, 2); list of B str -> (B, T, N, 2) float32.

        initial_points: (N, 2) shared by all prompts or (B, N, 2); default a centred grid of the
        bundle's default N. num_frames: T >= 2 (default the training length; any T works).
        temperature > 0 samples: the text embedding is perturbed on the sphere by Gaussian noise of
        that scale and renormalised; `seed` makes it reproducible.
        """
        temperature = V.real(temperature, "temperature", 0.0, 10.0)
        if seed is not None:
            seed = V.integer(seed, "seed", 0, 2**63 - 1)
        e = self.encode_text(text)
        single = e.ndim == 1
        e = np.atleast_2d(e)
        if temperature > 0:
            rng = np.random.default_rng(seed)
            # float32 throughout: a float64 scalar here would promote e to float64, which the graph refuses
            noise = rng.standard_normal(e.shape).astype(np.float32) / np.float32(np.sqrt(self.dim))
            e = e + temperature * noise
            e /= np.linalg.norm(e, axis=1, keepdims=True)
        traj = self._decode(e, initial_points, num_frames)
        return traj[0] if single else traj

    # ------------------------------------------------------------------------------------ retrieval
    def _as_embeddings(self, x, name: str) -> np.ndarray:
        """str/list of str -> text embeddings; (M, D)/(D,) -> embeddings; (M, T, N, 2) -> motion;
        an Index -> its rows."""
        if isinstance(x, Index):
            if x.dim != self.dim:
                raise ValueError(f"{name} is an Index of dimension {x.dim}; this model's is {self.dim}")
            return x.embeddings
        if isinstance(x, str) or (isinstance(x, (list, tuple)) and x and isinstance(x[0], str)):
            return np.atleast_2d(self.encode_text(x))
        a = np.asarray(x) if not isinstance(x, np.ndarray) else x
        if a.ndim in (3, 4) and a.shape[-1] == 2:
            return np.atleast_2d(self.encode_motion(a))
        if a.ndim in (1, 2):
            return V.embeddings(a, self.dim, name)[0]
        raise ValueError(
            f"{name} must be text, embeddings (M, {self.dim}) or trajectories (M, T, N, 2); "
            f"got shape {a.shape}"
        )

    def index(self, gallery) -> Index:
        """Validate and normalise a search gallery once: (M, D) embeddings or (M, T, N, 2) trajectories
        (encoded here) -> an Index to pass to search() any number of times."""
        return Index(self._as_embeddings(gallery, "gallery"))

    def search(self, query, gallery, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
        """Top-k of a gallery by cosine. query: text, list of texts, embeddings or trajectories;
        gallery: an Index (fastest, see index()), (M, D) embeddings or (M, T, N, 2) trajectories.
        Returns (indices, scores), each (k,) for a single query or (Q, k), best first; k is capped at M."""
        texts = isinstance(query, (list, tuple)) and query and isinstance(query[0], str)
        single = isinstance(query, str) or (not texts and np.ndim(query) in (1, 3))
        q = self._as_embeddings(query, "query")
        g = self._as_embeddings(gallery, "gallery")
        k = V.integer(k, "k", 1, 1 << 31)
        k = min(k, g.shape[0])
        if isinstance(gallery, Index) and gallery.int8 is not None and k < g.shape[0]:
            r = self._search_int8(q, gallery, k)
            if r is not None:
                return (r[0][0], r[1][0]) if single else r
        scores = q @ g.T if q.shape[0] > 1 else (g @ q[0])[None]  # (Q, M); matrix-vector for one query
        if k < g.shape[0]:
            part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        else:
            part = np.broadcast_to(np.arange(g.shape[0]), scores.shape)
        top = np.take_along_axis(scores, part, 1)
        order = np.argsort(-top, axis=1, kind="stable")
        idx = np.take_along_axis(part, order, 1)
        sc = np.take_along_axis(top, order, 1)
        return (idx[0], sc[0]) if single else (idx, sc)

    def _search_int8(self, q: np.ndarray, gallery: Index, k: int):
        """search() through the int8 first pass (l2m_sdk/topk.py); None -> the fp32 pass."""
        from l2m_sdk.topk import MAX_QUERIES, Int8Search

        if q.shape[0] > MAX_QUERIES:
            return None
        if self._int8_search is None:
            with self._lock:
                if self._int8_search is None:
                    self._int8_search = Int8Search(self.threads)
        return self._int8_search.search(q, gallery.embeddings, gallery.int8, k)

    def classify(self, trajectories, labels) -> tuple[list[str], np.ndarray]:
        """Zero-shot: each motion's nearest label. Returns (labels, probabilities (B, L)); a single
        (T, N, 2) motion gives ([label], (1, L)).

        labels: a list of label texts, or a dict {name: text or list of texts}. A list of texts is one
        label described several ways (prompt ensembling, as CLIP does for image classes): its embedding
        is the renormalised mean of the texts' embeddings, so a label such as "moving" can cover every
        direction ({"moving": ["an object moving left", "an object moving right", ...]}). With a dict
        the returned labels are its keys."""
        names, prompts = _label_prompts(labels)
        z = np.atleast_2d(self.encode_motion(trajectories))
        e = ensemble_embeddings(np.atleast_2d(self.encode_text([t for g in prompts for t in g])), prompts)
        logits = 100.0 * z @ e.T
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        return [names[i] for i in p.argmax(1)], p

    # -------------------------------------------------------------------------------------- editing
    def interpolate(self, a, b, alphas) -> np.ndarray:
        """Spherical interpolation between two texts/embeddings/motions at each alpha in [0, 1]:
        (K, D) for single a and b."""
        ea = self._as_embeddings(a, "a")
        eb = self._as_embeddings(b, "b")
        if ea.shape[0] != eb.shape[0]:
            raise ValueError(f"a and b must have the same batch size, got {ea.shape[0]} and {eb.shape[0]}")
        t = V._as_float_array(alphas, "alphas").reshape(-1).astype(np.float64)
        if t.size == 0 or not np.isfinite(t).all() or t.min() < 0.0 or t.max() > 1.0:
            raise ValueError(f"alphas must be one or more numbers in [0, 1], got {np.asarray(alphas)!r}")
        out = _slerp(ea, eb, t)  # (K, B, D); t stays float64, so a tiny alpha is not read as 0
        return out[:, 0] if ea.shape[0] == 1 else out

    def edit(self, a, b, c) -> np.ndarray:
        """Latent arithmetic a - b + c on the sphere, e.g. edit(walk_left_motion, "walking left",
        "walking right"). Each argument is text, embedding or trajectory; returns (D,) or (B, D)."""
        ea, eb, ec = (self._as_embeddings(x, n) for x, n in ((a, "a"), (b, "b"), (c, "c")))
        if len({ea.shape[0], eb.shape[0], ec.shape[0]} - {1}) > 1:
            raise ValueError(
                f"a, b and c must have the same batch size (or 1), got {ea.shape[0]}, {eb.shape[0]}, "
                f"{ec.shape[0]}"
            )
        out = ea - eb + ec
        n = np.linalg.norm(out, axis=1, keepdims=True)
        if (n < 1e-6).any():
            raise ValueError("a - b + c is the zero vector; choose b different from a + c")
        out = (out / n).astype(np.float32)
        return out[0] if out.shape[0] == 1 else out

    def style_transfer(self, motion, style_text: str | list[str], strength: float = 0.5) -> np.ndarray:
        """Keep a motion's layout (its frame-0 points) and timing (its T), move its latent toward a
        style text by `strength` in [0, 1] along the sphere, and decode. (T, N, 2) -> (T, N, 2);
        (B, T, N, 2) with one style str, or a list of B styles (one per motion) -> (B, T, N, 2)."""
        traj, single = V.trajectories(motion, "motion")
        strength = V.real(strength, "strength", 0.0, 1.0)
        s = np.atleast_2d(self.encode_text(style_text))
        if s.shape[0] not in (1, traj.shape[0]):
            raise ValueError(
                f"style_text has {s.shape[0]} styles for {traj.shape[0]} motions; pass one str or a list of "
                f"{traj.shape[0]}"
            )
        z = self.encode_motion(traj)
        s = np.broadcast_to(s, z.shape)
        zs = _slerp(z, np.ascontiguousarray(s), np.array([strength], np.float64), "strength")[0]
        out = self._decode(zs, traj[:, 0], traj.shape[1])
        return out[0] if single else out
