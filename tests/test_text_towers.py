"""Frozen text towers: CLIP from a local checkpoint file (tiny random-init open_clip config), the CLIP
image tower, spec errors, and MiniLM against sentence-transformers. Nothing is downloaded."""

from __future__ import annotations

import time

import pytest
import torch
import torch.nn.functional as F

from export.text_towers import TextEncoder, save_tiny_clip_config

TEXTS = [
    "a kite drifting to the top left corner",
    "A dial turning counterclockwise!",
    "a puddle expanding outward",
    "x",
    "Ünïcode façade, naïve café: 42 km/h",
]
# float32 embeddings of the same weights through the same ops, but with sequences cut after EOT
# (ours) vs padded to 77 (open_clip): causal attention makes the math equal, the matmul shapes
# differ, so rounding differs; measured 2.6e-7 on unit vectors.
CLIP_TOL = 1e-5
# MiniLM: our BERT vs the transformers one, same float32 math in a different op order; measured 1e-7.
MINILM_TOL = 1e-5


pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """(arch name, original open_clip model, checkpoint directory) for a random-init tiny CLIP."""
    import open_clip

    d = tmp_path_factory.mktemp("tiny_clip")
    name = save_tiny_clip_config(d, name="l2m-test-tiny-clip")
    seed = time.time_ns() % 2**31
    print(f"tiny CLIP init seed = {seed}")
    torch.manual_seed(seed)
    model = open_clip.create_model(name, pretrained=None).eval()
    return name, model, d


def _reference_text(model, name: str, texts: list[str]) -> torch.Tensor:
    import open_clip

    with torch.no_grad():
        return F.normalize(model.encode_text(open_clip.get_tokenizer(name)(texts)), dim=-1)


@pytest.mark.parametrize("fmt", ["pt", "safetensors", "wrapped.pt"])
def test_clip_loads_from_local_checkpoint(tiny_clip, fmt):
    name, model, d = tiny_clip
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    path = d / f"ckpt.{fmt}"
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file(sd, str(path))
    elif fmt == "pt":
        torch.save(sd, path)
    else:  # a training checkpoint: {"state_dict": {"module.<key>": ...}} (DataParallel-style prefix)
        torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3}, path)
    torch.manual_seed(time.time_ns() % 2**31)  # the tower's own random init must not matter
    enc = TextEncoder(f"clip:{name}:{path}")
    assert enc.dim == 64 and enc.image_tower is not None
    got = enc.encode(TEXTS)
    ref = _reference_text(model, name, TEXTS)
    diff = float((got - ref).abs().max())
    print(f"clip {fmt}: max |ours - open_clip| = {diff:.3g}")
    assert got.shape == (len(TEXTS), 64)
    assert diff <= CLIP_TOL
    # and the weights really came from the file: a fresh random init is far away
    fresh = TextEncoder(f"clip:{name}").encode(TEXTS)
    assert float((fresh - ref).abs().max()) > 100 * CLIP_TOL


def test_clip_image_tower(tiny_clip):
    name, model, d = tiny_clip
    path = d / "img.pt"
    torch.save(model.state_dict(), path)
    enc = TextEncoder(f"clip:{name}:{path}")
    img = torch.rand(3, 3, 64, 64)  # any size: resized to the tower's 32x32 inside
    with torch.no_grad():
        e = enc.image_tower(img)
        small = F.interpolate(img, size=(32, 32), mode="bilinear", align_corners=False)
        ref = F.normalize(model.encode_image((small - enc.image_tower.mean) / enc.image_tower.std), dim=-1)
    assert e.shape == (3, enc.dim)
    assert torch.allclose(e.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert float((e - ref).abs().max()) <= CLIP_TOL
    assert float((e[0] - e[1]).abs().max()) > 1e-3  # different images, different embeddings


def test_bad_specs(tiny_clip, tmp_path):
    name, _, _ = tiny_clip
    with pytest.raises(ValueError, match="choices") as err:
        TextEncoder("clip:ViT-B-33")
    assert "ViT-B-32" in str(err.value)  # lists real architectures
    with pytest.raises(ValueError, match="minilm"):
        TextEncoder("bert")
    with pytest.raises(ValueError, match="clip:<arch>"):
        TextEncoder("clip:")
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        TextEncoder(f"clip:{name}:{tmp_path / 'missing.safetensors'}")


def test_minilm_matches_sentence_transformers(monkeypatch):
    st = pytest.importorskip("sentence_transformers")
    from export.text_towers import minilm_dir

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # load from the packaged directory, never the network
    ref_model = st.SentenceTransformer(str(minilm_dir()), device="cpu")
    long_text = " ".join(["the red ball rolls slowly to the left and then bounces"] * 30)  # > 256 tokens
    texts = [*TEXTS, long_text]
    ref = ref_model.encode(texts, convert_to_tensor=True, normalize_embeddings=True).cpu()
    enc = TextEncoder("minilm")
    got = enc.encode(texts, batch_size=4)  # two batches of different padded lengths
    diff = float((got - ref).abs().max())
    print(f"minilm: max |ours - sentence-transformers| = {diff:.3g}")
    assert enc.dim == 384 and got.shape == (len(texts), 384)
    assert diff <= MINILM_TOL


def test_minilm_token_states_at_a_depth(monkeypatch):
    """token_states(depth=k) is the BERT hidden state after k layers (transformers' hidden_states[k]) on
    every real token, padded batch included; depth 0 is the last layer's; other depths are refused."""
    transformers = pytest.importorskip("transformers")
    from export.text_towers import minilm_dir

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ref_model = transformers.AutoModel.from_pretrained(str(minilm_dir())).eval()
    enc = TextEncoder("minilm")
    ids, mask = enc.tokenize(TEXTS)
    with torch.no_grad():
        ref = ref_model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
        real = mask.bool()
        for depth in (1, 4, 6):
            got = enc.tower.token_states(ids, mask, depth)
            diff = float((got - ref[depth])[real].abs().max())
            print(f"minilm depth {depth}: max |ours - transformers| = {diff:.3g}")
            assert diff <= MINILM_TOL * 10  # hidden states are not unit rows: norms of ~5-10
        assert torch.equal(enc.tower.token_states(ids, mask), enc.tower.token_states(ids, mask, 6))
        x4, m4 = enc.encode_states(TEXTS[:2], depth=4)
        assert torch.allclose(x4[0, : int(m4[0].sum())].float(), ref[4][0, : int(m4[0].sum())], atol=0.02)
    for bad in (-1, 7):
        with pytest.raises(ValueError, match=r"layer count in 0\.\.6"):
            enc.tower.token_states(ids, mask, bad)
