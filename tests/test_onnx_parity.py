"""Every exported graph against the PyTorch module it came from, on fresh random inputs each run.

Graphs: the packaged default bundle (trained weights, real MiniLM), a tiny bundle trained here with
MiniLM, a tiny random CLIP bundle (text, image, motion graphs) and the ViT-B-32 text tower with random
weights. Configs: B in {1, 5}, N in {1, 64, 200}, T in {16, 30, 60}; token lengths across 1..77.

Tolerances (fp32 on both sides; ONNX Runtime fuses and blocks the matmuls differently from torch, so
results differ in summation order only):
  - unit embeddings (text, motion, image): atol 1e-5 per component (float32 eps is 1.2e-7; a few
    transformer layers of reordered sums of O(100) terms leave ~1e-6);
  - trajectories (coordinates O(1)): atol 1e-5 + rtol 1e-5;
  - frame 0 of a decoded trajectory: exactly the initial points (the decoder subtracts its own first
    displacement; x - x is exactly 0).
The largest difference per graph is printed in the terminal summary (conftest.py).
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

DEFAULT_BUNDLE = Path(__file__).resolve().parents[1] / "l2m_sdk" / "assets" / "default"

EMB_ATOL = 1e-5
TRAJ_ATOL, TRAJ_RTOL = 1e-5, 1e-5
EOT_ATOL = 1e-5  # issue 3: 77 tokens vs cut at EOT
BATCHES = (1, 5)
POINTS = (1, 64, 200)
FRAMES = (16, 30, 60)

CLIP_SOT, CLIP_EOT = 49406, 49407
BERT_CLS, BERT_SEP, BERT_VOCAB = 101, 102, 30522


@pytest.fixture(scope="session")
def check(parity_log):
    """assert_allclose that records the largest absolute difference per graph (terminal summary)."""

    def _check(name: str, got: np.ndarray, ref: np.ndarray, atol: float, rtol: float = 0.0) -> float:
        assert got.shape == ref.shape, f"{name}: shape {got.shape} != reference {ref.shape}"
        diff = float(np.abs(got.astype(np.float64) - ref.astype(np.float64)).max()) if got.size else 0.0
        graph = name.split("[")[0]
        parity_log[graph] = max(parity_log.get(graph, 0.0), diff)
        np.testing.assert_allclose(got, ref, atol=atol, rtol=rtol, err_msg=f"{name}: max |diff| = {diff:.3g}")
        return diff

    return _check


@dataclass
class Graphs:
    """A loaded bundle (l2m_sdk Model, ONNX Runtime CPU) and its PyTorch reference modules."""

    name: str
    model: object  # l2m_sdk.Model
    ref: object  # export.model.L2M
    tower: object  # frozen text tower (torch)
    kind: str  # "minilm" | "clip"

    def run(self, role: str, feeds: dict) -> np.ndarray:
        return self.model._sessions[role].run(feeds)[0]


@pytest.fixture(scope="session")
def default_graphs(default_model) -> Graphs:
    from export.text_towers import load_minilm
    from export.train import load_weights

    ref = load_weights(DEFAULT_BUNDLE / "model.safetensors")
    return Graphs("default", default_model, ref, load_minilm(), "minilm")


@pytest.fixture(scope="session")
def tiny_minilm_graphs(tiny_minilm) -> Graphs:
    import l2m_sdk

    m = l2m_sdk.load(tiny_minilm.bundle, backend="ort", device="cpu")
    yield Graphs("tiny-minilm", m, tiny_minilm.model, tiny_minilm.text.tower, "minilm")
    m.close()


@pytest.fixture(scope="session")
def tiny_clip_graphs(tiny_clip) -> Graphs:
    import l2m_sdk

    m = l2m_sdk.load(tiny_clip.bundle, backend="ort", device="cpu")
    yield Graphs("tiny-clip", m, tiny_clip.model, tiny_clip.text.tower, "clip")
    m.close()


ALL = ("default_graphs", "tiny_minilm_graphs", "tiny_clip_graphs")


# ------------------------------------------------------------------------------------------ motion
@pytest.mark.parametrize("which", ALL)
@pytest.mark.parametrize("B", BATCHES)
def test_motion_encoder(request, which, B, rng, check, random_trajectories):
    g: Graphs = request.getfixturevalue(which)
    for N, T in itertools.product(POINTS, FRAMES):
        traj = random_trajectories(rng, B, T, N)
        got = g.run("motion_encoder", {"trajectory": traj})
        with torch.no_grad():
            ref = g.ref.encoder(torch.from_numpy(traj)).numpy()
        check(f"{g.name}/motion_encoder[B={B},N={N},T={T}]", got, ref, EMB_ATOL)
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("which", ALL)
@pytest.mark.parametrize("B", BATCHES)
def test_motion_decoder(request, which, B, rng, check, random_unit):
    g: Graphs = request.getfixturevalue(which)
    D = g.ref.cfg.dim
    for N, T in itertools.product(POINTS, FRAMES):
        z = random_unit(rng, B, D)
        init = rng.uniform(-1, 1, (B, N, 2)).astype(np.float32)
        # the usual grid; at N = 64 also an uneven one (times[0] = 0 is the frame of the initial points)
        grids = [np.linspace(0, 1, T, dtype=np.float32)]
        if N == 64:
            grids.append(np.concatenate([[0.0], np.sort(rng.uniform(0, 1, T - 1))]).astype(np.float32))
        for times in grids:
            got = g.run("motion_decoder", {"embedding": z, "initial_points": init, "times": times})
            with torch.no_grad():
                ref = g.ref.decoder(*(torch.from_numpy(a) for a in (z, init, times))).numpy()
            check(f"{g.name}/motion_decoder[B={B},N={N},T={T}]", got, ref, TRAJ_ATOL, TRAJ_RTOL)
            assert np.array_equal(got[:, 0], init), f"{g.name}: ONNX frame 0 differs from initial points"


# -------------------------------------------------------------------------------------------- text
def token_lengths(rng: np.random.Generator, n_random: int, hi: int = 77) -> list[int]:
    """Fixed edges plus random lengths in 1..hi: a different spread of sequence lengths each run."""
    return sorted({1, 2, 16, hi, *rng.integers(3, hi, n_random).tolist()})


def random_ids(rng: np.random.Generator, kind: str, lengths: list[int], pad_to: int | None = None):
    """Token ids (B, L) int64 + mask, rows of the given lengths padded with 0 to L = max(lengths) (or
    pad_to). MiniLM rows are [CLS] ... [SEP]; CLIP rows <sot> ... <eot> (the tower reads at the largest
    id, so any other id below EOT is fine). A row of length 1 is just the closing token."""
    L = pad_to or max(lengths)
    ids = np.zeros((len(lengths), L), np.int64)
    mask = np.zeros((len(lengths), L), np.int64)
    first, last, lo, hi = (
        (CLIP_SOT, CLIP_EOT, 1, CLIP_SOT) if kind == "clip" else (BERT_CLS, BERT_SEP, 999, BERT_VOCAB)
    )
    for i, n in enumerate(lengths):
        ids[i, :n] = rng.integers(lo, hi, n)
        ids[i, 0] = first
        ids[i, n - 1] = last
        mask[i, :n] = 1
    return ids, mask


def padded(ids: np.ndarray, mask: np.ndarray, L: int) -> tuple[np.ndarray, np.ndarray]:
    pad = ((0, 0), (0, L - ids.shape[1]))
    return np.pad(ids, pad), np.pad(mask, pad)


def torch_text(g: Graphs, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The export side's text path: tower (its first text_depth layers when the model reads fewer than
    all), then the model's attention pooling when it has one (else the tower's own pooling), then the
    adapter."""
    from export.onnx_export import TextGraph

    with torch.no_grad():
        graph = TextGraph(g.tower, g.ref.adapter, g.ref.pool, g.ref.cfg.text_depth).eval()
        return graph(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()


@pytest.mark.parametrize("which", ALL)
@pytest.mark.parametrize("B", BATCHES)
def test_text(request, which, B, rng, check):
    g: Graphs = request.getfixturevalue(which)
    # the full sweep on the real MiniLM weights; the tiny bundles share code paths, a shorter one
    for L in token_lengths(rng, 5 if which == "default_graphs" else 2):
        # B = 5: rows of different lengths, padded to the longest (which is L)
        lengths = [L] if B == 1 else [L, *rng.integers(1, L + 1, B - 1).tolist()]
        ids, mask = random_ids(rng, g.kind, lengths)
        got = g.run("text", {"input_ids": ids, "attention_mask": mask})
        check(f"{g.name}/text[B={B},L={L}]", got, torch_text(g, ids, mask), EMB_ATOL)
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_text_minilm_full_window(default_graphs, rng, check):
    """MiniLM's window is 256 tokens (the runtime truncates there): the graph is exact up to it."""
    g = default_graphs
    ids, mask = random_ids(rng, "minilm", [256, int(rng.integers(100, 256))])
    got = g.run("text", {"input_ids": ids, "attention_mask": mask})
    check(f"{g.name}/text[B=2,L=256]", got, torch_text(g, ids, mask), EMB_ATOL)


def test_text_clip_padding_after_eot_is_inert(tiny_clip_graphs, rng, check):
    """CLIP is causal and read at EOT: the same rows padded to 77 or cut at the batch's longest row give
    the same embedding, in torch and in ONNX."""
    g = tiny_clip_graphs
    lengths = rng.integers(2, 40, 5).tolist()
    ids, mask = random_ids(rng, "clip", lengths)
    ref_full = torch_text(g, *padded(ids, mask, 77))
    check(f"{g.name}/text_cut_vs_77_torch", torch_text(g, ids, mask), ref_full, EOT_ATOL)
    got = g.run("text", {"input_ids": ids, "attention_mask": mask})
    check(f"{g.name}/text_cut_onnx_vs_77_torch", got, ref_full, EOT_ATOL)


def test_image_tower(tiny_clip, rng, check):
    from l2m_sdk.backends.ort import OrtSession
    from l2m_sdk.bundle import load_bundle

    b = load_bundle(tiny_clip.bundle)
    sess = OrtSession(b.file("image"), ["CPUExecutionProvider"], 2)
    tower = tiny_clip.text.image_tower
    for B in BATCHES:
        img = rng.uniform(0, 1, (B, 3, tower.image_size, tower.image_size)).astype(np.float32)
        got = sess.run({"image": img})[0]
        with torch.no_grad():
            ref = tower(torch.from_numpy(img)).numpy()
        check(f"tiny-clip/image_tower[B={B}]", got, ref, EMB_ATOL)


def test_graph_axes_are_dynamic(default_graphs, tiny_minilm_graphs, tiny_clip_graphs):
    """PITFALLS: an exporter can pin the batch axis; every bundle graph declares symbolic axes."""
    want = {
        "input_ids": ["batch", "tokens"],
        "attention_mask": ["batch", "tokens"],
        "trajectory": ["batch", "frames", "points", 2],
        "embedding": ["batch", None],
        "initial_points": ["batch", "points", 2],
        "times": ["frames"],
    }
    for g in (default_graphs, tiny_minilm_graphs, tiny_clip_graphs):
        for role, s in g.model._sessions.items():
            for inp in s._sess.get_inputs():
                dims = [d if isinstance(d, str) else int(d) for d in inp.shape]
                expect = want[inp.name]
                assert len(dims) == len(expect), f"{g.name}/{role}: {inp.name} has shape {dims}"
                for d, e in zip(dims, expect):
                    if e is None:
                        continue
                    assert isinstance(d, str) if isinstance(e, str) else d == e, (
                        f"{g.name}/{role}: {inp.name} has shape {dims}, expected symbolic {expect}"
                    )


# ------------------------------------------------------------------------- CLIP ViT-B-32 (random init)
@pytest.fixture(scope="session")
def b32_text(tmp_path_factory, randomize):
    """ViT-B-32's text tower with random weights + a random adapter, exported once (~40 s here)."""
    from export.model import L2M, ModelConfig
    from export.onnx_export import export_text
    from export.text_towers import load_clip
    from l2m_sdk.backends.ort import OrtSession

    tower, _, _ = load_clip("ViT-B-32")
    model = L2M(ModelConfig(dim=tower.dim, width=32, enc_layers=1, dec_layers=1, ff=64, point_hidden=16))
    randomize(model.adapter, np.random.default_rng(), scale=0.05)
    path = export_text(
        tower, model.adapter.eval(), tmp_path_factory.mktemp("b32") / "text.onnx", tower.max_tokens
    )
    sess = OrtSession(path, ["CPUExecutionProvider"], 2)
    yield tower, model.adapter, sess
    sess.close()


@pytest.mark.slow
@pytest.mark.parametrize("B", BATCHES)
def test_clip_b32_text_and_cut_at_eot(b32_text, B, rng, check):
    """ONNX on ids cut after EOT vs torch on the cut ids and on the full 77-token padded ids."""
    tower, adapter, sess = b32_text

    def ref(ids, mask):
        with torch.no_grad():
            return adapter(tower(torch.from_numpy(ids), torch.from_numpy(mask))).numpy()

    for L in token_lengths(rng, 2):
        lengths = [L] if B == 1 else [L, *rng.integers(1, L + 1, B - 1).tolist()]
        ids, mask = random_ids(rng, "clip", lengths)
        got = sess.run({"input_ids": ids, "attention_mask": mask})[0]
        ref_cut, ref_full = ref(ids, mask), ref(*padded(ids, mask, 77))
        check(f"clip-ViT-B-32/text[B={B},L={L}]", got, ref_cut, EMB_ATOL)
        check(f"clip-ViT-B-32/text_cut_vs_77_torch[B={B},L={L}]", ref_cut, ref_full, EOT_ATOL)
        check(f"clip-ViT-B-32/text_cut_onnx_vs_77_torch[B={B},L={L}]", got, ref_full, EOT_ATOL)


@pytest.mark.parametrize(("pool_hidden", "depth"), [(0, 0), (16, 0), (16, 1)])
def test_text_attention_pool(tmp_path, rng, check, randomize, pool_hidden, depth):
    """A model with text_pool="attention" (the pool's token scores random, not the zero start that equals
    mean pooling; with pool_hidden, its per-token MLP random too) exports a text graph equal to torch,
    rows of mixed lengths padded to the longest: padding gets no weight in either. With text_depth 1 the
    pool reads the first of the tower's two layers, and the graph leaves the second one out."""
    import onnx
    import onnxruntime as ort

    from export.model import L2M, ModelConfig
    from export.onnx_export import TextGraph, export_text
    from export.text_towers import MiniLMTower

    tower = MiniLMTower(vocab=BERT_VOCAB, w=32, layers=2, heads=2, ff=64).eval()
    model = L2M(ModelConfig(dim=32, width=32, enc_layers=1, dec_layers=1, heads=2, ff=64, point_hidden=16,
                            adapter_hidden=16, text_pool="attention", pool_hidden=pool_hidden,
                            text_depth=depth))  # fmt: skip
    randomize(tower, rng, 0.1)
    # LayerNorm gains near 1, as in a trained tower: with gains of order 0.1 the token states come out nearly
    # alike (spread ~4% of their norm), any pooling gives about the mean, and the check below failed.
    with torch.no_grad():
        for ln in (m for m in tower.modules() if isinstance(m, torch.nn.LayerNorm)):
            ln.weight.add_(1.0)
    randomize(model, rng, 0.3)
    randomize(model.pool.score, rng, 0.5)  # token scores spread by 2-3 on these states: far from uniform
    path = export_text(tower, model.adapter.eval(), tmp_path / "text.onnx", 64, model.pool.eval(), depth)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    lengths = [int(rng.integers(20, 40)), *rng.integers(1, 20, 4).tolist()]
    ids, mask = random_ids(rng, "minilm", lengths)
    got = sess.run(None, {"input_ids": ids, "attention_mask": mask})[0]
    with torch.no_grad():
        graph = TextGraph(tower, model.adapter, model.pool, depth).eval()
        want = graph(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
        mean = model.adapter(tower(torch.from_numpy(ids), torch.from_numpy(mask))).numpy()
        last = TextGraph(tower, model.adapter, model.pool).eval()(*map(torch.from_numpy, (ids, mask)))
    check("attention-pool/text", got, want, EMB_ATOL)
    assert np.abs(want - mean).max() > 1e-3, "random token scores should pool differently from the mean"
    # which of the tower's layers the graph holds (its weights are named ...encoder.layer.<i>...)
    names = [i.name for i in onnx.load(str(path), load_external_data=False).graph.initializer]
    layer_weights = {m.group(1) for m in map(re.compile(r"encoder\.layer\.(\d+)\.").search, names) if m}
    assert layer_weights == ({"0"} if depth else {"0", "1"}), layer_weights
    if depth:
        assert np.abs(want - last.numpy()).max() > 1e-3, "the first layer's states should pool differently"
    # the same rows padded further: padding is inert in the exported graph too
    got_padded = sess.run(None, dict(zip(("input_ids", "attention_mask"), padded(ids, mask, 56))))[0]
    check("attention-pool/text-padded", got_padded, want, EMB_ATOL)
