"""Quality filters with their published defaults. Like datatrove, a filter answers keep (True) or
(False, reason); the caller counts and records. One reason per rule, so the funnel says why.

- GopherQuality and GopherRepetition: Rae et al. 2021 (MassiveText), Table A1 thresholds.
- C4Lines: Raffel et al. 2020 line rules (terminal punctuation, >= 3 words, no "javascript" or
  policy lines) and page rules (lorem ipsum, curly bracket, >= 5 sentences). It rewrites the text
  to the lines it keeps, as C4 does, so it takes a mutable document.
- Length: bounds on the final text.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass

from pipelines.corpus.wordgrams import WordGrams

TOKEN = re.compile(r"\w+|[^\w\s]+")  # words and runs of punctuation, roughly what NLTK yields
PUNCTUATION = set(string.punctuation) | set("…–—‘’“”«»„·•►")
Verdict = bool | tuple[bool, str]
# Over tokens joined one per line: tokens made only of punctuation, and tokens without a letter
# (a token is a run of \w or a run of [^\w\s]; a \w run has no letter when it is all digits and _)
_SYMBOL_TOKENS = re.compile("(?m)^[" + re.escape("".join(sorted(PUNCTUATION))) + "]+$")
_NO_LETTER_TOKENS = re.compile(r"(?m)^(?:[^\w\n]+|[\d_]+)$")


def tokens(text: str) -> list[str]:
    return TOKEN.findall(text)


@dataclass
class Doc:
    """A document under filtering; its tokens are computed once per version of its text."""

    text: str
    _tokens: tuple[str, list[str]] | None = None

    @property
    def tokens(self) -> list[str]:
        if self._tokens is None or self._tokens[0] is not self.text:
            self._tokens = (self.text, tokens(self.text))
        return self._tokens[1]


STOP_WORDS = ("the", "be", "to", "of", "and", "that", "have", "with")


@dataclass
class GopherQuality:
    name = "gopher_quality"
    min_doc_words: int = 50
    max_doc_words: int = 100_000
    min_avg_word_length: float = 3
    max_avg_word_length: float = 10
    max_symbol_word_ratio: float = 0.1
    max_bullet_lines_ratio: float = 0.9
    max_ellipsis_lines_ratio: float = 0.3
    min_alpha_words_ratio: float = 0.8
    min_stop_words: int = 2
    stop_words: tuple[str, ...] = STOP_WORDS

    def filter(self, doc: Doc) -> Verdict:
        text = doc.text
        words = doc.tokens
        n_words = len(words)
        # Tokens hold no whitespace, so one per line lets a regex find the symbol-only ones in C
        one_per_line = "\n".join(words)
        symbols = _SYMBOL_TOKENS.findall(one_per_line)
        n_real = n_words - len(symbols)
        if n_real < self.min_doc_words:
            return False, "short_doc"
        if n_real > self.max_doc_words:
            return False, "long_doc"
        real_chars = len(one_per_line) - (n_words - 1) - sum(map(len, symbols))
        avg = real_chars / n_real
        if avg < self.min_avg_word_length:
            return False, "below_avg_word_length"
        if avg > self.max_avg_word_length:
            return False, "above_avg_word_length"
        if text.count("#") / n_words > self.max_symbol_word_ratio:
            return False, "too_many_hashes"
        if (text.count("...") + text.count("…")) / n_words > self.max_symbol_word_ratio:
            return False, "too_many_ellipsis"
        lines = text.splitlines() or [""]
        bullets = sum(line.lstrip().startswith(("•", "-")) for line in lines)
        if bullets / len(lines) > self.max_bullet_lines_ratio:
            return False, "too_many_bullets"
        ellipsis_ends = sum(line.rstrip().endswith(("...", "…")) for line in lines)
        if ellipsis_ends / len(lines) > self.max_ellipsis_lines_ratio:
            return False, "too_many_end_ellipsis"
        alpha_words = n_words - len(_NO_LETTER_TOKENS.findall(one_per_line))
        if alpha_words / n_words < self.min_alpha_words_ratio:
            return False, "below_alpha_words_ratio"
        if len(set(self.stop_words).intersection(words)) < self.min_stop_words:
            return False, "few_stop_words"
        return True


def _duplicates(items: list[str]) -> tuple[int, int]:
    """(number of repeated items, characters in the repeats): what is left after each item's first
    occurrence."""
    distinct = set(items)
    return len(items) - len(distinct), sum(map(len, items)) - sum(map(len, distinct))


@dataclass
class GopherRepetition:
    name = "gopher_repetition"
    dup_line_frac: float = 0.3
    dup_para_frac: float = 0.3
    dup_line_char_frac: float = 0.2
    dup_para_char_frac: float = 0.2
    top_n_grams: tuple[tuple[int, float], ...] = ((2, 0.2), (3, 0.18), (4, 0.16))
    dup_n_grams: tuple[tuple[int, float], ...] = (
        (5, 0.15),
        (6, 0.14),
        (7, 0.13),
        (8, 0.12),
        (9, 0.11),
        (10, 0.10),
    )

    def filter(self, doc: Doc) -> Verdict:
        text = doc.text
        if not text:
            return False, "empty"
        paragraphs = re.split(r"\n{2,}", text.strip())
        count, chars = _duplicates(paragraphs)
        if count / len(paragraphs) > self.dup_para_frac:
            return False, "dup_para_frac"
        if chars / len(text) > self.dup_para_char_frac:
            return False, "dup_para_char_frac"
        lines = re.split(r"\n+", text)
        count, chars = _duplicates(lines)
        if count / len(lines) > self.dup_line_frac:
            return False, "dup_line_frac"
        if chars / len(text) > self.dup_line_char_frac:
            return False, "dup_line_char_frac"
        grams = WordGrams(doc.tokens)
        for n, frac in self.top_n_grams:
            if grams.top_chars(n) / len(text) > frac:
                return False, f"top_{n}_gram"
        for n, frac in self.dup_n_grams:
            if grams.repeated_share_above(n, len(text), frac):
                return False, f"duplicated_{n}_grams"
        return True


CITATION = re.compile(r"\[\d*]|\[edit]|\[citation needed]")
END_PUNCTUATION = (".", "?", "!", '"', "'")
SENTENCE_END = re.compile(r"[.!?]+[\"')\]]*(?=\s|$)")
POLICY_PHRASES = (
    "terms of use",
    "privacy policy",
    "cookie policy",
    "uses cookies",
    "use of cookies",
    "use cookies",
)
_POLICY = re.compile("|".join(map(re.escape, POLICY_PHRASES)))


@dataclass
class C4Lines:
    name = "c4"
    min_num_sentences: int = 5
    min_words_per_line: int = 3
    max_word_length: int = 1000
    filter_no_terminal_punct: bool = True
    filter_lorem_ipsum: bool = True
    filter_javascript: bool = True
    filter_curly_bracket: bool = True
    filter_policy: bool = True

    def filter(self, doc: Doc) -> Verdict:
        kept, sentences = [], 0
        for raw_line in doc.text.splitlines():
            line = raw_line.strip()
            if "[" in line:
                line = CITATION.sub("", line)
            # cheapest test first: every rule up to lorem ipsum only skips the line
            if self.filter_no_terminal_punct and (not line.endswith(END_PUNCTUATION) or line.endswith("...")):
                continue
            words = line.split()
            if len(words) < self.min_words_per_line:
                continue
            if len(line) > self.max_word_length and any(len(w) > self.max_word_length for w in words):
                continue
            lower = line.lower()
            if self.filter_lorem_ipsum and "lorem ipsum" in lower:
                return False, "lorem_ipsum"
            if self.filter_javascript and "javascript" in lower:
                continue
            if self.filter_curly_bracket and "{" in line:
                return False, "curly_bracket"
            if self.filter_policy and _POLICY.search(lower):
                continue
            sentences += max(1, len(SENTENCE_END.findall(line)))
            kept.append(line)
        if sentences < self.min_num_sentences:
            return False, "too_few_sentences"
        doc.text = "\n".join(kept)
        return True


@dataclass
class Length:
    name = "length"
    min_chars: int = 200
    max_chars: int = 1_000_000

    def filter(self, doc: Doc) -> Verdict:
        if len(doc.text) < self.min_chars:
            return False, "too_short"
        if len(doc.text) > self.max_chars:
            return False, "too_long"
        return True


def apply(filters: list, doc: Doc) -> str | None:
    """Run filters in order; the first that drops the document names the reason ("filter.rule")."""
    for f in filters:
        verdict = f.filter(doc)
        if verdict is not True:
            reason = verdict[1] if isinstance(verdict, tuple) else "dropped"
            return f"{f.name}.{reason}"
    return None


FILTERS = {cls.name: cls for cls in (GopherRepetition, GopherQuality, C4Lines, Length)}


def make_filters(names: list[str], params: dict[str, dict]) -> list:
    """Filters by name, in order, with `params` overriding their published defaults."""
    for name in [*names, *params]:
        if name not in FILTERS:
            raise ValueError(f"unknown filter {name!r} (filters: {', '.join(FILTERS)})")
    made = []
    for name in names:
        cls, overrides = FILTERS[name], params.get(name, {})
        unknown = sorted(set(overrides) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"filter {name!r} has no parameter {unknown[0]!r}")
        for key, value in overrides.items():
            default = cls.__dataclass_fields__[key].default
            if not _same_kind(default, value):
                raise ValueError(
                    f"filter {name!r} parameter {key!r} must be like its default {default!r}, not {value!r}"
                )
        made.append(cls(**{k: _frozen(v) for k, v in overrides.items()}))
    return made


def _same_kind(default, value) -> bool:
    """A filter would fail on every document, in the workers, with a value of another kind."""
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int | float):
        return isinstance(value, int | float) and not isinstance(value, bool)
    if isinstance(default, tuple):
        return isinstance(value, list | tuple)
    return isinstance(value, type(default))


def _frozen(value):
    """YAML lists as the tuples the filters' defaults use (e.g. dup_n_grams: [[5, 0.2], ...])."""
    return tuple(_frozen(v) for v in value) if isinstance(value, list) else value
