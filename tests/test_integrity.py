"""Bundle integrity: damaged bundles are refused by name, and the writer never leaves a partial bundle.

Loader: a copy of the packaged default bundle is damaged in each way a disk, a copy or an interrupted
export damages files (truncated weights, a flipped byte in a graph, a graph overwritten with garbage
and hashes skipped, a future format_version, a deleted or half-written manifest, a missing file, a
manifest pointing outside the bundle, random edits of the manifest's structure). `l2m_sdk.load` must
refuse each with BundleError (a ValueError) or FileNotFoundError whose message names the offending file.

Writer: export.bundle.write_bundle is interrupted at every step, with its clean-up running (an
exception) or not (a kill: its rmtree disabled, so the temporary directory stays as SIGKILL would leave
it), with and without an existing bundle at the target. Afterwards the target holds the old bundle,
byte for byte, or nothing; a leftover temporary directory never loads unless it is complete; the next
write succeeds. The three torch exports are replaced by copies of the graphs of the session's tiny
bundle (tests/conftest.py `tiny_minilm`, whose own write ran the real exports), so each interrupted
write takes well under a second; everything else in write_bundle runs for real.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import l2m_sdk
from l2m_sdk.bundle import BundleError, load_bundle, sha256_file

DEFAULT_BUNDLE = Path(__file__).resolve().parents[1] / "l2m_sdk" / "assets" / "default"
REFUSED = (BundleError, FileNotFoundError)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    dst = tmp_path_factory.mktemp("pristine") / "bundle"
    shutil.copytree(DEFAULT_BUNDLE, dst)
    return dst


@pytest.fixture
def bundle(pristine, tmp_path) -> Path:
    dst = tmp_path / "bundle"
    shutil.copytree(pristine, dst)
    return dst


def _refused(path: Path, name: str, exc=REFUSED, verify: bool = True) -> str:
    """l2m_sdk.load(path) must raise `exc` naming `name`; returns the message."""
    with pytest.raises(exc) as ei:
        l2m_sdk.Model(path, backend="ort", device="cpu", verify=verify)
    msg = str(ei.value)
    assert name in msg, f"message does not name {name}: {msg}"
    return msg


# ------------------------------------------------------------------------------------------ loader
def test_truncated_weights(bundle):
    st_path = bundle / "model.safetensors"
    with open(st_path, "r+b") as f:
        f.truncate(st_path.stat().st_size // 2)
    assert "truncated" in _refused(bundle, str(st_path), BundleError)


def test_empty_weights(bundle):
    (bundle / "model.safetensors").write_bytes(b"")
    _refused(bundle, "model.safetensors", BundleError)


GRAPHS = ["text.onnx", "motion_encoder.onnx", "motion_decoder.onnx"]
ORT_GRAPHS = [g.replace(".onnx", ".ort.onnx") for g in GRAPHS]  # the graphs the SDK runs on ORT


@pytest.mark.parametrize("graph", GRAPHS + ORT_GRAPHS)
def test_flipped_byte_in_graph(bundle, graph):
    rng = np.random.default_rng()
    data = bytearray((bundle / graph).read_bytes())
    i = int(rng.integers(len(data)))
    data[i] ^= 1 << int(rng.integers(8))
    (bundle / graph).write_bytes(bytes(data))
    assert "sha256" in _refused(bundle, str(bundle / graph), BundleError), f"byte {i}"


@pytest.mark.parametrize("graph", ORT_GRAPHS[1:])
def test_garbage_graph_without_hash_check(bundle, graph):
    """verify=False skips hashing (sizes are still checked): a graph of the right size holding garbage
    must still be refused by name, when ONNX Runtime fails to parse it. (The SDK does not load the
    portable graphs on ONNX Runtime; a verified load catches them by sha256, test_flipped_byte_in_graph.)"""
    n = (bundle / graph).stat().st_size
    (bundle / graph).write_bytes(np.random.default_rng().integers(0, 256, n, dtype=np.uint8).tobytes())
    _refused(bundle, graph, BundleError, verify=False)


def test_future_format_version(bundle):
    mpath = bundle / "manifest.json"
    man = json.loads(mpath.read_text())
    mpath.write_text(json.dumps({**man, "format_version": 99}))
    assert "99" in _refused(bundle, str(mpath), BundleError)


def test_deleted_manifest(bundle):
    (bundle / "manifest.json").unlink()
    _refused(bundle, str(bundle / "manifest.json"), FileNotFoundError)


@pytest.mark.parametrize("keep", [0.0, 0.5, 0.99])
def test_half_written_manifest(bundle, keep):
    mpath = bundle / "manifest.json"
    text = mpath.read_text()
    mpath.write_text(text[: int(len(text) * keep)])
    _refused(bundle, str(mpath), BundleError)


def test_half_written_temp_dir(pristine, tmp_path):
    """What write_bundle leaves when killed before its last step: files, no manifest."""
    tmp = tmp_path / ".bundle.k2j4x9"
    tmp.mkdir()
    for name in ("model.safetensors", "motion_encoder.onnx", "motion_decoder.onnx"):
        shutil.copy(pristine / name, tmp / name)
    with open(tmp / "motion_decoder.onnx", "r+b") as f:
        f.truncate(1000)
    msg = _refused(tmp, "manifest.json", FileNotFoundError)
    assert "partially written" in msg


def test_missing_listed_file(bundle):
    (bundle / "motion_encoder.onnx").unlink()
    _refused(bundle, str(bundle / "motion_encoder.onnx"), FileNotFoundError)


@pytest.mark.parametrize("where", ["files", "graphs", "ort_graphs"])
@pytest.mark.parametrize("target", ["../outside.onnx", "/etc/hostname", "sub/../../outside.onnx"])
def test_manifest_paths_stay_inside_the_bundle(bundle, where, target):
    """A manifest must not make the loader read (or ONNX Runtime load) files outside the bundle."""
    outside = bundle.parent / "outside.onnx"
    (bundle / "sub").mkdir()
    shutil.copy(bundle / "motion_encoder.onnx", outside)
    mpath = bundle / "manifest.json"
    man = json.loads(mpath.read_text())
    if where == "files":
        p = Path(target) if target.startswith("/") else bundle / target
        man["files"][target] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
    else:
        man[where]["motion_encoder"] = target
        p = Path(target) if target.startswith("/") else bundle / target
        man["files"][target] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
    mpath.write_text(json.dumps(man))
    _refused(bundle, target, BundleError)


# Random structural edits of the manifest: replace or delete a value anywhere in the tree.
_VALUES = st.sampled_from([None, 0, -1, 1.5, "", "x", "../x", [], {}, True, 99, {"a": 1}, ["text.onnx"]])


def _paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k in ("training", "metrics") or prefix[-1:] == ("names",):  # free-form / 100 similar keys
                continue
            yield from _paths(v, (*prefix, k))


@st.composite
def edits(draw, man: dict):
    paths = [p for p in _paths(man) if p]
    out = []
    for _ in range(draw(st.integers(1, 2))):
        path = draw(st.sampled_from(paths))
        out.append((path, draw(_VALUES | st.just("<delete>"))))
    return out


def _apply(man: dict, edit_list) -> dict:
    man = json.loads(json.dumps(man))
    for path, value in edit_list:
        node = man
        for k in path[:-1]:
            if not isinstance(node, dict) or k not in node:
                break
            node = node[k]
        else:
            if isinstance(node, dict):
                if value == "<delete>":
                    node.pop(path[-1], None)
                else:
                    node[path[-1]] = value
    return man


_GOOD = json.loads((DEFAULT_BUNDLE / "manifest.json").read_text())
OUTCOMES = {"refused": 0, "loaded": 0}


@settings(
    max_examples=150,
    deadline=None,
    derandomize=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(edit_list=edits(_GOOD))
def test_manifest_edits_never_crash_the_loader(pristine, edit_list):
    """Any structural edit: refused with BundleError / FileNotFoundError (or ValueError / TypeError from
    the settings it names), or a model that works. Never KeyError, AttributeError or a crash."""
    mpath = pristine / "manifest.json"
    good = mpath.read_text()
    try:
        mpath.write_text(json.dumps(_apply(_GOOD, edit_list)))
        try:
            m = l2m_sdk.load(pristine, backend="ort", device="cpu")
        except (BundleError, FileNotFoundError, ValueError, TypeError) as e:
            assert str(e)
            OUTCOMES["refused"] += 1
            return
        with m:
            out = m.generate("a ball bouncing", num_frames=5)
            assert out.shape[0] == 5 and np.isfinite(out).all()
        OUTCOMES["loaded"] += 1
    finally:
        mpath.write_text(good)


# ------------------------------------------------------------------------------------------ writer
class Interrupted(Exception):
    """The injected failure."""


STEPS = [
    "export_encoder",
    "export_decoder",
    "export_text",
    "fuse_file",
    "link_text",
    "write_tokenizer",
    "sha256_file",
    "manifest",
    "swap",
]


@pytest.fixture
def writer(tiny_minilm, monkeypatch):
    """export.bundle with the torch exports replaced by copies of the tiny bundle's graphs (see the
    module docstring). Returns (module, write(out, name), fail_at(step))."""
    import export.bundle as eb

    src = tiny_minilm.bundle
    ext = json.loads((src / "manifest.json").read_text())["external_initializers"]
    real_link = eb.link_initializers
    real_fuse = eb.fuse_file

    def copier(graph):
        def fake(*args):
            path = args[2] if graph == "text.onnx" else args[1]  # export_text(tower, adapter, path, max)
            shutil.copyfile(src / graph, path)
            return path

        return fake

    def link(onnx_path, st_path, **kw):
        if onnx_path.name.startswith("text."):  # already linked in the copy: report what the real call did
            return dict(ext[onnx_path.name]["names"]) if kw.get("strip") else {}
        return real_link(onnx_path, st_path, **kw)

    def fuse(src_path, dst_path):  # the copies are linked already: copy the fused graph too
        if dst_path.name.startswith("text."):
            shutil.copyfile(src / dst_path.name, dst_path)
        else:  # motion graphs: fuse for real (the copy's links resolve in the directory being written)
            real_fuse(src_path, dst_path)
        return {}

    monkeypatch.setattr(eb, "export_encoder", copier("motion_encoder.onnx"))
    monkeypatch.setattr(eb, "export_decoder", copier("motion_decoder.onnx"))
    monkeypatch.setattr(eb, "export_text", copier("text.onnx"))
    monkeypatch.setattr(eb, "link_initializers", link)
    monkeypatch.setattr(eb, "fuse_file", fuse)

    def write(out: Path, name: str) -> Path:
        return eb.write_bundle(tiny_minilm.weights, out, name=name, text_encoder=tiny_minilm.text)

    def fail_at(step: str) -> None:
        def boom(*a, **k):
            raise Interrupted(step)

        if step in (
            "export_encoder",
            "export_decoder",
            "export_text",
            "fuse_file",
            "write_tokenizer",
            "sha256_file",
        ):
            monkeypatch.setattr(eb, step, boom)
        elif step == "link_text":

            def link_or_boom(onnx_path, st_path, **kw):
                if onnx_path.name == "text.onnx":
                    raise Interrupted(step)
                return link(onnx_path, st_path, **kw)

            monkeypatch.setattr(eb, "link_initializers", link_or_boom)
        elif step == "manifest":
            real_write_text = Path.write_text

            def write_text(self, *a, **k):
                if self.name == "manifest.json" and self.parent.name.startswith("."):
                    raise Interrupted(step)
                return real_write_text(self, *a, **k)

            monkeypatch.setattr(Path, "write_text", write_text)
        elif step == "swap":  # the step that puts the new bundle in place
            real_rename = Path.rename

            def rename(self, target):
                if self.name.startswith(".") and "old" not in self.name:
                    raise Interrupted(step)
                return real_rename(self, target)

            monkeypatch.setattr(Path, "rename", rename)
            if hasattr(eb, "_exchange"):
                monkeypatch.setattr(eb, "_exchange", boom)
        else:
            raise AssertionError(step)

    return eb, write, fail_at


def _snapshot(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("existing", [True, False], ids=["over-old", "fresh"])
@pytest.mark.parametrize("kill", [False, True], ids=["exception", "kill"])
@pytest.mark.parametrize("step", STEPS)
def test_interrupted_write(writer, tiny_minilm, tmp_path, monkeypatch, step, kill, existing):
    eb, write, fail_at = writer
    parent = tmp_path / "bundles"
    parent.mkdir()
    out = parent / "motion"
    before = None
    if existing:
        shutil.copytree(tiny_minilm.bundle, out)
        before = _snapshot(out)
    fail_at(step)
    if kill:  # SIGKILL runs no clean-up: the temporary directory stays
        monkeypatch.setattr(eb.shutil, "rmtree", lambda *a, **k: None)
    with pytest.raises(Interrupted):
        write(out, "new")
    monkeypatch.undo()  # back to the real functions for the checks

    if existing:
        assert _snapshot(out) == before, "the existing bundle was changed"
        assert load_bundle(out).name != "new"
    else:
        assert not out.exists(), "a bundle appeared at the target"
    leftovers = [p for p in parent.iterdir() if p != out]
    if not kill:
        assert not leftovers, f"temporary directories left behind: {leftovers}"
    for p in leftovers:
        if step == "swap":  # complete but never put in place: loads only if asked for by its own path
            assert p.name.startswith(".")
            continue
        with pytest.raises(REFUSED) as ei:
            load_bundle(p)
        assert "manifest.json" in str(ei.value)


def test_write_replaces_old_bundle_leaving_nothing_else(writer, tiny_minilm, tmp_path):
    eb, write, _ = writer
    out = tmp_path / "motion"
    shutil.copytree(tiny_minilm.bundle, out)
    write(out, "second")
    assert [p.name for p in tmp_path.iterdir()] == ["motion"]
    assert load_bundle(out).name == "second"
    assert out.stat().st_mode & 0o055 == 0o055, "the bundle directory is not readable by others"
    with l2m_sdk.load(out, backend="ort", device="cpu") as m:
        assert m.generate("a ball bouncing", num_frames=4).shape == (4, m.num_points, 2)


def test_failed_second_rename_restores_old_bundle(writer, tiny_minilm, tmp_path, monkeypatch):
    """Where an atomic exchange is unavailable the writer moves the old bundle aside, then the new one in;
    if that second rename fails, the old bundle goes back to the target."""
    eb, write, fail_at = writer
    if not hasattr(eb, "_exchange"):
        pytest.skip("this write_bundle has no atomic-exchange step")
    monkeypatch.setattr(eb, "_exchange", lambda a, b: False)
    out = tmp_path / "motion"
    shutil.copytree(tiny_minilm.bundle, out)
    before = _snapshot(out)
    real_rename = Path.rename

    def rename(self, target):
        if Path(target) == out and "old" not in self.name:
            raise Interrupted("second rename")
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", rename)
    with pytest.raises(Interrupted):
        write(out, "new")
    monkeypatch.undo()
    assert _snapshot(out) == before
    assert [p.name for p in tmp_path.iterdir()] == ["motion"]


def test_zz_manifest_edit_outcomes(capsys):
    """Both outcomes occur: the edits reach past the first checks (harmless edits, e.g. of the name,
    load) and many are refused."""
    with capsys.disabled():
        print(f"\nmanifest edits: {OUTCOMES['refused']} refused, {OUTCOMES['loaded']} loaded and worked")
    if not sum(OUTCOMES.values()):
        pytest.skip("test_manifest_edits_never_crash_the_loader did not run")
    assert OUTCOMES["refused"] and OUTCOMES["loaded"], OUTCOMES
