"""Motion encoder / decoders / text adapter: any N and T, frame 0 exact, point-order invariance.

Inputs are fresh random trajectories each run (seed printed). Parameters are perturbed away from their
initialisation first: several layers start at zero (the decoder's affine head, the adapter's output),
which would make "frame 0 is exact" or "adapter is the identity" true for the wrong reason.
"""

from __future__ import annotations

import pytest
import torch

from export.model import L2M, ARDecoder, ModelConfig, MotionDecoder, MotionEncoder, TextAdapter, TextPool

NS = (1, 7, 64, 256)
TS = (16, 30, 60)
SMALL = dict(dim=24, width=32, enc_layers=1, dec_layers=1, heads=2, ff=64, point_hidden=16, adapter_hidden=32)
# Point-order invariance: mean pooling sums the N point features in a different order after a
# permutation (max pooling is exact), so float32 rounding (~1e-7 relative per add) propagates through
# the encoder; 1e-5 on unit-vector components leaves ~50x margin over the measured worst case.
PERM_TOL = 1e-5


pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture
def seed(torch_seed):
    return torch_seed


def _perturbed(module: torch.nn.Module, scale: float = 0.05) -> torch.nn.Module:
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * scale)
    return module.eval()


def _random_traj(B: int, T: int, N: int) -> torch.Tensor:
    """(B, T, N, 2): a random layout moved by a random walk plus per-point jitter, roughly in [-1, 1]."""
    init = torch.rand(B, 1, N, 2) * 1.2 - 0.6
    walk = torch.cumsum(torch.randn(B, T, 1, 2) * 0.03, 1)
    jitter = torch.randn(B, T, N, 2) * 0.01
    traj = init + walk - walk[:, :1] + jitter - jitter[:, :1]
    return traj.float()


@pytest.mark.parametrize("N", NS)
@pytest.mark.parametrize("T", TS)
def test_encoder_any_n_and_t(seed, N, T):
    cfg = ModelConfig(**SMALL)
    enc = _perturbed(MotionEncoder(cfg))
    with torch.no_grad():
        z = enc(_random_traj(3, T, N))
    assert z.shape == (3, cfg.dim)
    assert torch.isfinite(z).all()
    norms = z.norm(dim=-1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5), norms


@pytest.mark.parametrize("decoder", ["nar", "ar"])
@pytest.mark.parametrize("N", NS)
@pytest.mark.parametrize("T", TS)
def test_decoder_any_n_and_t_frame0_exact(seed, decoder, N, T):
    cfg = ModelConfig(**SMALL, decoder=decoder)
    dec = _perturbed(MotionDecoder(cfg) if decoder == "nar" else ARDecoder(cfg))
    z = torch.nn.functional.normalize(torch.randn(3, cfg.dim), dim=-1)
    init = _random_traj(3, 1, N)[:, 0]
    with torch.no_grad():
        out = dec(z, init, L2M.times(T))
    assert out.shape == (3, T, N, 2)
    assert torch.isfinite(out).all()
    assert torch.equal(out[:, 0], init), (out[:, 0] - init).abs().max()
    # the perturbed decoder really moves the points (otherwise frame-0 exactness is vacuous)
    assert (out[:, -1] - init).abs().max() > 1e-4


def test_default_config_shapes_and_frame0(seed):
    cfg = ModelConfig()
    model = _perturbed(L2M(cfg))
    for N, T in ((64, 30), (256, 60), (1, 16)):
        traj = _random_traj(2, T, N)
        with torch.no_grad():
            z = model.encoder(traj)
            out = model.decoder(z, traj[:, 0], L2M.times(T))
        assert z.shape == (2, 384)
        assert torch.allclose(z.norm(dim=-1), torch.ones(2), atol=1e-5)
        assert out.shape == (2, T, N, 2) and torch.isfinite(out).all()
        assert torch.equal(out[:, 0], traj[:, 0])


@pytest.mark.parametrize("cfg_kw", [SMALL, {}], ids=["small", "default"])
def test_encoder_invariant_to_point_order(seed, cfg_kw):
    enc = _perturbed(MotionEncoder(ModelConfig(**cfg_kw)))
    worst = 0.0
    for N in (7, 64, 256):
        traj = _random_traj(2, 30, N)
        perm = torch.randperm(N)
        with torch.no_grad():
            a, b = enc(traj), enc(traj[:, :, perm])
        worst = max(worst, float((a - b).abs().max()))
    print(f"encoder permutation max |diff| = {worst:.3g} (tolerance {PERM_TOL})")
    assert worst <= PERM_TOL
    # and it is not invariant to things it should see: the points' relative motion
    other = traj.clone()
    other[:, :, : N // 2] = traj[:, :1, : N // 2]  # half the points stay where they started
    with torch.no_grad():
        assert float((enc(other) - a).abs().max()) > 100 * PERM_TOL


@pytest.mark.parametrize("decoder", ["nar", "ar"])
def test_decoder_equivariant_to_point_order(seed, decoder):
    """Permuting the initial points permutes the output the same way (points are decoded independently
    given the layout's centroid and spread). Same float32 summation-order tolerance as the encoder."""
    cfg = ModelConfig(**SMALL, decoder=decoder)
    dec = _perturbed(MotionDecoder(cfg) if decoder == "nar" else ARDecoder(cfg))
    z = torch.nn.functional.normalize(torch.randn(2, cfg.dim), dim=-1)
    init = _random_traj(2, 1, 64)[:, 0]
    perm = torch.randperm(64)
    with torch.no_grad():
        a = dec(z, init, L2M.times(30))[:, :, perm]
        b = dec(z, init[:, perm], L2M.times(30))
    diff = float((a - b).abs().max())
    print(f"{decoder} decoder permutation max |diff| = {diff:.3g}")
    assert diff <= PERM_TOL


@pytest.mark.parametrize("decoder", ["nar", "ar"])
@pytest.mark.parametrize("k", [1, 5, 16])
def test_decoding_a_subset_of_points_equals_the_full_decode(seed, decoder, k):
    """`points` (training's decode_points) decodes only some points; the layout still comes from all of
    them, so each decoded point must equal the full decode's (same summation-order tolerance)."""
    cfg = ModelConfig(**SMALL, decoder=decoder)
    dec = _perturbed(MotionDecoder(cfg) if decoder == "nar" else ARDecoder(cfg))
    z = torch.nn.functional.normalize(torch.randn(3, cfg.dim), dim=-1)
    init = _random_traj(3, 1, 37)[:, 0]
    pts = torch.randperm(37)[:k]
    with torch.no_grad():
        full = dec(z, init, L2M.times(24))
        part = dec(z, init, L2M.times(24), pts)
        alone = dec(z, init[:, pts], L2M.times(24))  # what a layout of only these points would give
    assert part.shape == (3, 24, k, 2)
    assert float((part - full[:, :, pts]).abs().max()) <= PERM_TOL
    assert torch.equal(part[:, 0], init[:, pts])
    if k < 16:  # a different layout (centroid, spread) gives a different motion: the subset is not that
        assert float((alone - full[:, :, pts]).abs().max()) > 100 * PERM_TOL


def test_batch_items_are_independent(seed):
    """An item's embedding and generation do not depend on the rest of the batch. Tolerance: batched vs
    single matmuls may block the reductions differently (float32 rounding)."""
    model = _perturbed(L2M(ModelConfig(**SMALL)))
    traj = _random_traj(4, 30, 16)
    with torch.no_grad():
        z = model.encoder(traj)
        z1 = model.encoder(traj[2:3])
        out = model.decoder(z, traj[:, 0], L2M.times(30))
        out1 = model.decoder(z[2:3], traj[2:3, 0], L2M.times(30))
    assert float((z[2:3] - z1).abs().max()) <= 1e-5
    assert float((out[2:3] - out1).abs().max()) <= 1e-5


def test_decoder_depends_on_latent(seed):
    cfg = ModelConfig(**SMALL)
    dec = _perturbed(MotionDecoder(cfg))
    init = _random_traj(1, 1, 16)[:, 0].expand(2, -1, -1)
    z = torch.nn.functional.normalize(torch.randn(2, cfg.dim), dim=-1)
    with torch.no_grad():
        out = dec(z, init, L2M.times(30))
    assert float((out[0] - out[1]).abs().max()) > 1e-4


def test_ar_decoder_selectable_and_config_roundtrip():
    assert isinstance(L2M(ModelConfig(**SMALL, decoder="ar")).decoder, ARDecoder)
    assert isinstance(L2M(ModelConfig(**SMALL)).decoder, MotionDecoder)
    with pytest.raises(ValueError, match="nar"):
        L2M(ModelConfig(**SMALL, decoder="mlp"))
    cfg = ModelConfig(**SMALL, decoder="ar")
    d = cfg.to_dict()
    assert ModelConfig.from_dict({**d, "unknown_future_key": 1}) == cfg


def test_text_adapter_starts_as_identity(seed):
    cfg = ModelConfig(**SMALL)
    adapter = TextAdapter(cfg).eval()
    e = torch.nn.functional.normalize(torch.randn(5, cfg.dim), dim=-1)
    with torch.no_grad():
        out = adapter(e)
        # unit in, unit out: only renormalisation rounding (float32) separates them
        assert float((out - e).abs().max()) <= 1e-6
        moved = _perturbed(adapter)(e)
    assert torch.allclose(moved.norm(dim=-1), torch.ones(5), atol=1e-5)
    assert float((moved - e).abs().max()) > 1e-4


def _states_and_mask(B: int, L: int, D: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random token states and a mask of rows of random lengths 1..L (the first row full, the last one
    token long)."""
    x = torch.randn(B, L, D) * 3
    n = torch.randint(1, L + 1, (B,))
    n[0], n[-1] = L, 1
    mask = (torch.arange(L)[None] < n[:, None]).long()
    return x, mask


def test_text_pool_starts_as_mean_pooling(seed):
    """Zero-initialised scores: the pool is the tower's own masked mean + L2 norm, so a model trained with
    mean pooling is its exact starting point."""
    x, mask = _states_and_mask(6, 11, 24)
    m = mask.float()
    want = torch.nn.functional.normalize((x * m[..., None]).sum(1) / m.sum(1, keepdim=True), dim=-1)
    with torch.no_grad():
        got = TextPool(24)(x, mask)
        # with the per-token MLP too: its output layer starts at zero
        got_mlp = TextPool(24, hidden=16)(x, mask)
    assert float((got - want).abs().max()) <= 1e-6
    assert float((got_mlp - want).abs().max()) <= 1e-6


def test_text_pool_token_mlp_remaps_each_token_alone(seed):
    """The per-token MLP acts on each token state by itself: a row's pooled output does not depend on
    another row, padding stays inert, and once trained (perturbed) the pool leaves the mean."""
    pool = _perturbed(TextPool(24, hidden=16), scale=0.5)
    x, mask = _states_and_mask(6, 11, 24)
    m = mask.float()
    with torch.no_grad():
        got = pool(x, mask)
        junk = x + (1 - m)[..., None] * torch.randn_like(x) * 100
        assert float((pool(junk, mask) - got).abs().max()) <= 1e-5
        alone = torch.cat([pool(x[i : i + 1], mask[i : i + 1]) for i in range(6)])
        assert float((alone - got).abs().max()) <= 1e-6
        no_mlp = TextPool(24)
        no_mlp.score.weight.copy_(pool.score.weight)
        assert float((no_mlp(x, mask) - got).abs().max()) > 1e-3
    assert torch.allclose(got.norm(dim=-1), torch.ones(6), atol=1e-5)


def test_text_pool_weighs_tokens_and_ignores_padding(seed):
    """With scores away from zero the pool is a (normalised) convex combination of the row's own tokens
    that differs from the mean, and whatever sits in the padding changes nothing."""
    pool = _perturbed(TextPool(24), scale=0.5)
    x, mask = _states_and_mask(6, 11, 24)
    m = mask.float()
    mean = torch.nn.functional.normalize((x * m[..., None]).sum(1), dim=-1)
    with torch.no_grad():
        got = pool(x, mask)
        junk = x + (1 - m)[..., None] * torch.randn_like(x) * 100
        assert float((pool(junk, mask) - got).abs().max()) <= 1e-6
        w = torch.softmax(pool.score(x).squeeze(-1) + (m - 1) * 1e4, -1)
    assert torch.allclose(got.norm(dim=-1), torch.ones(6), atol=1e-5)
    assert float(w[m == 0].max()) == 0.0 and torch.allclose(w.sum(-1), torch.ones(6), atol=1e-6)
    assert float((got - mean).abs().max()) > 1e-3
    # a one-token row pools to that token
    one = mask.sum(1) == 1
    assert torch.allclose(got[one], torch.nn.functional.normalize(x[one, 0], dim=-1), atol=1e-6)


def test_text_pool_config_is_checked():
    assert L2M(ModelConfig(**SMALL)).pool is None
    assert isinstance(L2M(ModelConfig(**SMALL, text_pool="attention")).pool, TextPool)
    with pytest.raises(ValueError, match="'mean' or 'attention'"):
        L2M(ModelConfig(**SMALL, text_pool="max"))
    with pytest.raises(ValueError, match="token states"):
        L2M(ModelConfig(**SMALL, text_pool="attention", text_tower="clip:ViT-B-32"))
    pooled = L2M(ModelConfig(**SMALL, text_pool="attention", pool_hidden=8)).pool
    assert pooled.token_fc1.out_features == 8 and pooled.token_fc2.in_features == 8
    with pytest.raises(ValueError, match="needs text_pool='attention'"):
        L2M(ModelConfig(**SMALL, pool_hidden=8))
    with pytest.raises(ValueError, match="pool_hidden must be >= 0"):
        TextPool(24, hidden=-1)
    assert L2M(ModelConfig(**SMALL, text_pool="attention", text_depth=4)).cfg.text_depth == 4
    for bad in (dict(text_depth=4), dict(text_pool="attention", text_depth=-1)):
        with pytest.raises(ValueError, match="a count of tower layers"):
            L2M(ModelConfig(**SMALL, **bad))


def test_times_span_unit_interval():
    for T in (1, 2, 30):
        t = L2M.times(T)
        assert t.shape == (T,) and float(t[0]) == 0.0
        if T > 1:
            assert float(t[-1]) == 1.0 and bool((t[1:] > t[:-1]).all())
