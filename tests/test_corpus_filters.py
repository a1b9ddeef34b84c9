"""Per-document steps without Ray: extraction, normalisation, language id, every filter rule with
its reason, PII redaction."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from pipelines.config import load_config
from pipelines.corpus import filters as qf
from pipelines.corpus.extract import ExtractTimeout, decode_html, extract_text
from pipelines.corpus.langid import identify
from pipelines.corpus.normalize import normalize_text, replacement_chars
from pipelines.corpus.pii import redact
from pipelines.errors import UserError
from tests.corpus_inputs import GERMAN, english_doc, html_page

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def prose() -> str:
    return english_doc(random.Random(11))


def verdict(f, text: str):
    doc = qf.Doc(text)
    return f.filter(doc), doc.text


def test_english_prose_passes_every_filter(prose):
    filters = qf.make_filters(["gopher_repetition", "gopher_quality", "c4", "length"], {})
    doc = qf.Doc(prose)
    assert qf.apply(filters, doc) is None and doc.text == prose


@pytest.mark.parametrize(
    "mutate,reason",
    [
        (lambda t: " ".join(t.split()[:30]), "short_doc"),
        (lambda t: "word " * 100_001, "long_doc"),
        (lambda t: " ".join(["a", "an", "is", "to", "of", "be"] * 30), "below_avg_word_length"),
        (
            lambda t: " ".join(["extraordinarily", "incomprehensibilities"] * 40) + " the and",
            "above_avg_word_length",
        ),
        (lambda t: t + " #tag" * 60, "too_many_hashes"),
        (lambda t: t + " wait..." * 60, "too_many_ellipsis"),
        (lambda t: "\n".join("- " + x for x in t.replace("\n", " ").split(". ")), "too_many_bullets"),
        (lambda t: "\n".join(x + "..." for x in t.replace("\n", " ").split(". ")), "too_many_end_ellipsis"),
        (lambda t: t + " 1234 5678 90 !!" * 150, "below_alpha_words_ratio"),
        (
            lambda t: "Green hills roll past quiet farms. Old barns stand beside narrow roads. " * 6,
            "few_stop_words",
        ),
    ],
)
def test_gopher_quality_rules(prose, mutate, reason):
    assert verdict(qf.GopherQuality(), prose)[0] is True
    assert verdict(qf.GopherQuality(), mutate(prose))[0] == (False, reason)


@pytest.mark.parametrize(
    "text,reason",
    [
        ("same paragraph here.\n\n" * 10 + "another one.", "dup_para_frac"),
        (
            "\n\n".join(
                [" ".join(["A long paragraph."] * 12), *"abcde", " ".join(["A long paragraph."] * 12)]
            ),
            "dup_para_char_frac",
        ),
    ],
)
def test_gopher_repetition_paragraph_rules(text, reason):
    assert verdict(qf.GopherRepetition(), text)[0] == (False, reason)


def test_gopher_repetition_line_and_ngram_rules(prose):
    lines = prose.split("\n")
    assert verdict(qf.GopherRepetition(), "\n".join(lines + [lines[0]] * 4))[0] == (False, "dup_line_frac")
    long_line = "this single line is very long and repeated " * 8
    text = "\n".join([long_line, "a", "b", "c", "d", "e", "f", "g", long_line])
    assert verdict(qf.GopherRepetition(dup_line_frac=0.5), text)[0] == (False, "dup_line_char_frac")
    assert verdict(qf.GopherRepetition(), prose + " " + "buy now " * 60)[0] == (False, "top_2_gram")
    phrase = "the quick brown fox jumps over the lazy dog near the river bank today"
    spammy = prose + "\n" + " ".join(f"{phrase} {i}" for i in range(12))
    assert verdict(qf.GopherRepetition(top_n_grams=()), spammy)[0] == (False, "duplicated_5_grams")
    assert verdict(qf.GopherRepetition(), "")[0] == (False, "empty")


def test_c4_line_rules_rewrite_the_text(prose):
    noisy = "\n".join(
        [
            "Home | About | Contact",  # no terminal punctuation
            "Too short.",  # fewer than 3 words
            "Please enable JavaScript to view this page.",
            "By using this site you accept our privacy policy.",
            "A cited sentence stays in the text.[12]",
            *prose.split("\n"),
        ]
    )
    ok, text = verdict(qf.C4Lines(), noisy)
    assert ok is True
    assert text.split("\n")[0] == "A cited sentence stays in the text."
    assert "JavaScript" not in text and "Home" not in text and "privacy" not in text
    assert verdict(qf.C4Lines(), prose + "\nLorem ipsum dolor sit amet.")[0] == (False, "lorem_ipsum")
    assert verdict(qf.C4Lines(), prose + "\nUse a dict like {1: 2} here.")[0] == (False, "curly_bracket")
    assert verdict(qf.C4Lines(filter_curly_bracket=False), prose + "\nA dict {1: 2} here.")[0] is True
    assert verdict(qf.C4Lines(), "One sentence here.\nAnother one there.")[0] == (False, "too_few_sentences")


def test_length_bounds():
    assert verdict(qf.Length(min_chars=10), "short")[0] == (False, "too_short")
    assert verdict(qf.Length(min_chars=0, max_chars=3), "long enough")[0] == (False, "too_long")


def test_filter_params_override_defaults_and_unknown_names_are_config_errors():
    (c4,) = qf.make_filters(["c4"], {"c4": {"min_num_sentences": 1}})
    assert c4.min_num_sentences == 1 and c4.filter_curly_bracket is True
    (rep,) = qf.make_filters(["gopher_repetition"], {"gopher_repetition": {"dup_n_grams": [[5, 0.5]]}})
    assert rep.dup_n_grams == ((5, 0.5),)
    with pytest.raises(UserError, match="corpus.*unknown filter 'gopher'"):
        load_config(None, ["corpus.filters=[gopher]"])
    with pytest.raises(UserError, match="filter 'length' has no parameter 'min_words'"):
        load_config(None, ["corpus.filter_params={length: {min_words: 3}}"])
    with pytest.raises(UserError, match="'min_chars' must be like its default 200, not 'abc'"):
        load_config(None, ["corpus.filter_params.length.min_chars=abc"])
    with pytest.raises(UserError, match="'filter_policy' must be like its default True, not 3"):
        load_config(None, ["corpus.filter_params.c4.filter_policy=3"])


def test_one_filter_parameter_can_be_set_alone():
    """`--set corpus.filter_params.<filter>.<key>=v` merges into the file's parameters of that filter."""
    cfg = load_config(
        ROOT / "configs" / "demo.yaml", ["corpus.filter_params.gopher_quality.min_doc_words=30"]
    )
    demo = load_config(ROOT / "configs" / "demo.yaml", [])
    assert cfg.corpus.filter_params["gopher_quality"] == {
        **demo.corpus.filter_params["gopher_quality"],
        "min_doc_words": 30,
    }
    assert demo.corpus.filter_params[
        "gopher_quality"
    ]  # the file sets some of its keys: a merge, not a replacement
    assert cfg.corpus.filter_params["c4"] == demo.corpus.filter_params["c4"]
    with pytest.raises(UserError, match=r"demo.yaml or --set: .*'min_doc_words' must be like its default 50"):
        load_config(ROOT / "configs" / "demo.yaml", ["corpus.filter_params.gopher_quality.min_doc_words=[]"])


def test_normalisation():
    text = "Cafe\u0301\u00a0 au\tlait\r\n\r\n\r\n\r\nnext\x00 line \u200b  \n"
    assert normalize_text(text) == "Café au lait\n\nnext line"
    # Whitespace runs of any kind become one space, lines lose their edges, and a line of only
    # whitespace counts as blank: at most one blank line is kept between paragraphs.
    text = "  a \u3000\u2028b\x0b c \n\t\n \u00a0 \n\nd\u2029 \n e\n\n"
    assert normalize_text(text) == "a b c\n\nd\ne"
    assert replacement_chars(b"caf\xe9 \xff".decode("utf-8", errors="replace")) == 2


def test_language_identification(prose):
    (en, de) = identify([prose, GERMAN])
    assert en[0] == "en" and en[1] > 0.9
    assert de[0] == "de" and de[1] > 0.9


@pytest.mark.parametrize("extractor", ["resiliparse", "trafilatura"])
def test_extractors_keep_the_main_text(prose, extractor):
    text = extract_text(html_page(prose), extractor)
    assert "The " in text and prose.split(". ")[0] in text
    assert "Home" not in text or extractor == "resiliparse"  # resiliparse keeps short nav text


def test_html_decoding_follows_the_declared_charset():
    raw = "<html><head><meta charset='windows-1252'></head><body><p>naïve café</p></body></html>".encode(
        "cp1252"
    )
    assert "naïve café" in decode_html(raw)


def test_extraction_time_limit():
    huge = html_page("\n".join(f"Paragraph {i} with some words in it." for i in range(20_000)))
    with pytest.raises(ExtractTimeout):
        extract_text(huge, "trafilatura", timeout_s=0.01)


def test_pii_redaction():
    text, count = redact(
        "Mail jane.doe+x@example.co.uk or ping 192.168.1.20, not version 1.2.3 or 999.1.1.1."
    )
    assert text == "Mail <EMAIL> or ping <IP_ADDRESS>, not version 1.2.3 or 999.1.1.1."
    assert count == 2
    assert redact("fe80:0:0:0:200:f8ff:fe21:67cf is here")[0] == "<IP_ADDRESS> is here"


def test_document_processor_runs_every_step_and_passes_rejects_through(prose):
    import pyarrow as pa

    from pipelines.corpus.process import process_batch
    from pipelines.corpus.schema import RECORD_SCHEMA, TIMING_COLUMNS

    def record(key, fmt, raw=None, text=None, reason=None):
        stage = "read" if reason else None
        return {"key": key, "source": "s", "url": None, "format": fmt, "raw": raw, "text": text,
                "stage": stage, "reason": reason, "detail": None, "sec_read": 0.001}  # fmt: skip

    batch = pa.Table.from_pylist(
        [
            record(1, "html", raw=html_page(prose).encode()),
            record(2, "text", text=prose + "\nWrite to ann@example.org or 10.0.0.7 today."),
            record(3, "text", text=GERMAN * 3),
            record(4, "text", raw=b"  \n\t "),
            record(5, "text", reason="malformed_json"),
        ],
        schema=RECORD_SCHEMA,
    )
    cfg = load_config(None, ["corpus.pii_redaction=true"]).corpus
    rows = process_batch(batch, cfg.model_dump_json()).to_pylist()
    assert [(r["stage"], r["reason"]) for r in rows] == [
        (None, None),
        (None, None),
        ("language", "language"),
        ("normalize", "empty"),
        ("read", "malformed_json"),
    ]
    assert rows[0]["text"] == prose and rows[0]["lang"] == "en" and rows[0]["words"] > 100
    assert (
        rows[1]["pii_redactions"] == 2 and "<EMAIL>" in rows[1]["text"] and "10.0.0.7" not in rows[1]["text"]
    )
    assert len(rows[0]["sig"]) == 112 and len(rows[0]["bands"]) == 14 and rows[0]["exact_hash"]
    assert all(r["sig"] is None and r["text"] is None for r in rows[2:])
    assert all(r[c] >= 0 for r in rows for c in TIMING_COLUMNS) and sum(r["sec_extract"] for r in rows) > 0


def reference_top_chars(words: list[str], n: int) -> int:
    """datatrove's find_top_duplicate, on strings."""
    from collections import Counter

    grams = Counter(" ".join(words[i : i + n]) for i in range(len(words) - n + 1))
    if not grams:
        return 0
    gram, count = grams.most_common(1)[0]
    return len(gram) * count


def reference_repeated_chars(words: list[str], n: int) -> int:
    """datatrove's find_all_duplicate, on strings."""
    seen, chars, i = set(), 0, 0
    while i < len(words) - n + 1:
        gram = "".join(words[i : i + n])
        if gram in seen:
            chars += len(gram)
            i += n
        else:
            seen.add(gram)
            i += 1
    return chars


def test_word_grams_equal_the_string_reference():
    from pipelines.corpus.wordgrams import WordGrams

    rng = random.Random(2)
    for trial in range(200):
        vocab = [f"w{i}" * rng.randint(1, 3) for i in range(rng.choice([3, 10, 200]))]
        words = [rng.choice(vocab) for _ in range(rng.randint(0, 300))]
        if trial % 3 == 0 and words:  # long verbatim repeats, as spam has
            words += words[: rng.randint(1, len(words))]
        grams = WordGrams(words)
        bounds = []
        for n in (1, 2, 3, 4, 5, 7, 10):
            assert grams.top_chars(n) == reference_top_chars(words, n), (trial, n)
            repeated = reference_repeated_chars(words, n)
            assert grams.repeated_chars(n) == repeated, (trial, n)
            # the bound that lets the scan be skipped: above the truth, and shrinking as n grows
            bounds.append(grams._repeat_bound(n))
            assert repeated <= bounds[-1] <= min(bounds), (trial, n)
            length = max(1, sum(map(len, words)) + len(words) - 1)
            for share in (0.0, repeated / length, rng.random() * 0.5):  # the boundary itself included
                assert grams.repeated_share_above(n, length, share) == (repeated / length > share)


def test_exact_copies_take_their_outcome_from_the_memo(prose):
    """A copy gets the outcome a fresh processor computes for it, in the same batch or a later one,
    whether it was kept or rejected, and says it was recalled."""
    import pyarrow as pa

    from pipelines.corpus.process import DocumentProcessor
    from pipelines.corpus.schema import RECORD_SCHEMA

    junk = "Buy now! Buy now! Buy now! " * 40
    texts = [prose, junk, prose, GERMAN * 3, junk, prose.replace("the", "a", 3)]

    def batch(items):
        rows = [{"key": k, "source": "s", "format": "text", "text": t, "sec_read": 0.0} for k, t in items]
        return pa.Table.from_pylist(rows, schema=RECORD_SCHEMA)

    cfg = load_config(None, ["corpus.pii_redaction=true"]).corpus
    outcome = ("text", "lang", "lang_score", "stage", "reason", "words", "exact_hash", "sig", "bands")
    alone = [
        {f: DocumentProcessor(cfg)(batch([(k, t)])).to_pylist()[0][f] for f in outcome}
        for k, t in enumerate(texts)
    ]
    processor = DocumentProcessor(cfg)
    first = processor(batch(list(enumerate(texts)))).to_pylist()
    second = processor(batch([(9, prose), (10, junk)])).to_pylist()
    assert [{f: r[f] for f in outcome} for r in first] == alone
    assert [{f: r[f] for f in outcome} for r in second] == [alone[0], alone[1]]
    assert [r["recalled"] for r in first] == [False, False, True, False, True, False]
    assert [r["recalled"] for r in second] == [True, True]
    assert alone[1]["reason"] is not None and alone[0]["reason"] is None  # both kinds were recalled


def test_an_exact_copy_of_a_page_is_parsed_once(prose, monkeypatch):
    """A page seen before in the worker (same raw bytes) takes its extraction and normalisation
    from the memo: the rows equal what a fresh processor makes of each page, and the extractor ran
    once per distinct page. A copy that differs by one byte is parsed again."""
    import pyarrow as pa

    from pipelines.corpus import process
    from pipelines.corpus.process import DocumentProcessor
    from pipelines.corpus.schema import RECORD_SCHEMA

    page = html_page(prose).encode()
    pages = [page, page.replace(b"<p>", b"<p> ", 1), page, b"<html><body></body></html>"] * 2

    def batch(raws):
        rows = [{"key": k, "source": "s", "format": "html", "raw": r, "sec_read": 0.0} for k, r in raws]
        return pa.Table.from_pylist(rows, schema=RECORD_SCHEMA)

    cfg = load_config(None, []).corpus
    outcome = ("text", "replacement_chars", "lang", "stage", "reason", "detail", "exact_hash", "sig")
    alone = [{f: DocumentProcessor(cfg)(batch([(0, r)])).to_pylist()[0][f] for f in outcome} for r in pages]
    extracted = []
    monkeypatch.setattr(
        process, "extract_text", lambda html, *a: extracted.append(html) or extract_text(html, *a)
    )
    processor = DocumentProcessor(cfg)
    rows = processor(batch(list(enumerate(pages[:4])))).to_pylist()
    rows += processor(batch(list(enumerate(pages[4:], start=4)))).to_pylist()
    assert [{f: r[f] for f in outcome} for r in rows] == alone
    assert len(extracted) == 3  # the page, its one-byte variant and the empty page
    # the variant is parsed, but normalises to the page's text: its later steps are recalled
    assert [r["recalled"] for r in rows] == [False, True, True, False, True, True, True, True]
    assert alone[3]["reason"] == "empty" and alone[0]["reason"] is None  # a reject is recalled too


def test_memo_forgets_the_oldest_outcomes_past_its_bounds():
    from pipelines.corpus.memo import TEXT_OUTCOME, OutcomeMemo, text_key

    def compute(memo, texts):
        rows = [{"text": t, "reason": None} for t in texts]
        fresh, waiting = memo.split(rows)
        for row in fresh:
            row.update(lang="en", words=len(row["text"]))
        memo.settle(fresh, waiting)
        return [r["recalled"] if "recalled" in r else False for r in rows]

    memo = OutcomeMemo(TEXT_OUTCOME, text_key, max_entries=2, max_chars=10)
    assert compute(memo, ["aaaa", "bbbb", "aaaa"]) == [False, False, True]
    assert compute(memo, ["cccc"]) == [False]  # 12 characters: "aaaa" (least recently used) goes
    assert compute(memo, ["bbbb", "aaaa"]) == [True, False]
    assert compute(memo, ["x" * 11]) == [False] and compute(memo, ["x" * 11]) == [False]  # never fits
