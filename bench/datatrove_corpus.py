"""datatrove 0.10.1 running what the corpus stage runs, for bench/bench_corpus.py (runs in its venv).

    python bench/datatrove_corpus.py SPEC.json      (prints a JSON result on its last line)

FineWeb's layout: extraction + filters (one pipeline, writing JSONL), exact dedup (3 steps), MinHash
(4 steps), with the same extractor, filter parameters and MinHash settings as our run. NLTK's punkt
data cannot be downloaded here, so datatrove gets the same regex word tokenizer our filters use;
its language filter's model is a download too, so it reads the same fastText lid.176 file ours does
and, like ours with no languages configured, labels every document without dropping any.
"""

from __future__ import annotations

import json
import re
import sys
import threading
import time
from pathlib import Path

import psutil
from datatrove.data import Document
from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.dedup import (
    MinhashConfig,
    MinhashDedupBuckets,
    MinhashDedupCluster,
    MinhashDedupFilter,
    MinhashDedupSignature,
)
from datatrove.pipeline.dedup.exact_dedup import (
    ExactDedupConfig,
    ExactDedupFilter,
    ExactDedupSignature,
    ExactFindDedups,
)
from datatrove.pipeline.extractors import Trafilatura
from datatrove.pipeline.extractors.base import BaseExtractor
from datatrove.pipeline.filters import (
    C4QualityFilter,
    GopherQualityFilter,
    GopherRepetitionFilter,
    LambdaFilter,
    LanguageFilter,
)
from datatrove.pipeline.readers import JsonlReader, WarcReader
from datatrove.pipeline.writers import JsonlWriter
from datatrove.utils.lid import FT176LID
from datatrove.utils.word_tokenizers import WordTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipelines.corpus.extract import resiliparse_text  # noqa: E402 - stdlib-only modules of ours
from pipelines.corpus.filters import TOKEN  # noqa: E402 - the same word tokens as our filters

SENTENCE = re.compile(r".+?(?:[.!?]+(?=\s|$)|$)", re.S)


class RegexTokenizer(WordTokenizer):
    def word_tokenize(self, text: str) -> list[str]:
        return TOKEN.findall(text)

    def sent_tokenize(self, text: str) -> list[str]:
        return [m.group().strip() for m in SENTENCE.finditer(text) if m.group().strip()]

    def span_tokenize(self, text: str) -> list[tuple[int, int]]:
        return [m.span() for m in SENTENCE.finditer(text) if m.group().strip()]


class Resiliparse(BaseExtractor):
    """The extractor our pipeline defaults to, called exactly as our pipeline calls it."""

    name = "resiliparse"

    def __init__(self, timeout: float = 5.0):
        super().__init__(timeout)

    def extract(self, text: str) -> str:
        return resiliparse_text(text)


class LocalLID(FT176LID):
    """datatrove's fastText language id, reading a model file on disk instead of downloading one."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path

    @property
    def model(self):
        if self._model is None:
            from fasttext.FastText import _FastText

            self._model = _FastText(self.path)
        return self._model


def language_labels(model_path: str) -> LanguageFilter:
    labels = LanguageFilter(label_only=True)
    labels.model = LocalLID(model_path)
    return labels


def exact_content(doc: Document) -> str:
    return doc.text


class PeakMemory(threading.Thread):
    def __init__(self):
        super().__init__(daemon=True)
        self.peak_total = self.peak_process = 0
        self.running = True

    def run(self):
        me = psutil.Process()
        while self.running:
            try:
                rss = [p.memory_info().rss for p in [me, *me.children(recursive=True)]]
            except psutil.Error:
                continue
            self.peak_total = max(self.peak_total, sum(rss))
            self.peak_process = max(self.peak_process, max(rss))
            time.sleep(0.1)


def main(spec: dict) -> dict:
    work = Path(spec["work"])
    tok = RegexTokenizer()
    p = spec["filter_params"]
    tasks, workers = spec["tasks"], spec["workers"]
    extractor = (
        Resiliparse()
        if spec["extractor"] == "resiliparse"
        else Trafilatura(favour_precision=False, timeout=5.0)
    )
    rep = p.get("gopher_repetition", {})
    qual = dict(p.get("gopher_quality", {}))
    if "min_alpha_words_ratio" in qual:
        qual["max_non_alpha_words_ratio"] = qual.pop("min_alpha_words_ratio")
    c4 = p.get("c4", {})
    length = p.get("length", {})
    lo, hi = length.get("min_chars", 200), length.get("max_chars", 1_000_000)
    minhash = MinhashConfig(
        n_grams=spec["ngram"], num_buckets=spec["bands"], hashes_per_bucket=spec["rows"], seed=1
    )
    exact = ExactDedupConfig(content_getter=exact_content)
    run = lambda pipeline, n, name: LocalPipelineExecutor(  # noqa: E731
        pipeline, tasks=n, workers=min(workers, n), logging_dir=str(work / "logs" / name), start_method="fork"
    ).run()

    memory = PeakMemory()
    memory.start()
    phases = {}
    started = time.perf_counter()
    run(
        [
            WarcReader(spec["input"], glob_pattern="*.warc.gz"),
            extractor,
            language_labels(spec["lid_model"]),
            GopherRepetitionFilter(
                **{k: tuple(map(tuple, v)) if isinstance(v, list) else v for k, v in rep.items()},
                language=tok,
            ),
            GopherQualityFilter(**qual, language=tok),
            C4QualityFilter(**c4, language=tok),
            LambdaFilter(lambda doc: lo <= len(doc.text) <= hi),
            JsonlWriter(str(work / "filtered")),
        ],
        tasks,
        "filter",
    )
    phases["extract+filters"] = time.perf_counter() - started
    t = time.perf_counter()
    run(
        [JsonlReader(str(work / "filtered")), ExactDedupSignature(str(work / "exact_sigs"), exact)],
        tasks,
        "exact1",
    )
    run([ExactFindDedups(str(work / "exact_sigs"), str(work / "exact_dups"), exact)], 1, "exact2")
    run(
        [
            JsonlReader(str(work / "filtered")),
            ExactDedupFilter(str(work / "exact_dups"), exact),
            JsonlWriter(str(work / "exact")),
        ],
        tasks,
        "exact3",
    )
    phases["dedup_exact"] = time.perf_counter() - t
    t = time.perf_counter()
    run(
        [JsonlReader(str(work / "exact")), MinhashDedupSignature(str(work / "sigs"), minhash, language=tok)],
        tasks,
        "mh1",
    )
    phases["minhash_signatures"] = time.perf_counter() - t
    run(
        [MinhashDedupBuckets(str(work / "sigs"), str(work / "buckets"), config=minhash)],
        minhash.num_buckets,
        "mh2",
    )
    run(
        [
            MinhashDedupCluster(
                str(work / "buckets"), str(work / "clusters"), config=minhash, save_cluster_id=True
            )
        ],
        1,
        "mh3",
    )
    run(
        [
            JsonlReader(str(work / "exact")),
            MinhashDedupFilter(
                str(work / "clusters"),
                load_cluster_ids=True,
                exclusion_writer=JsonlWriter(str(work / "removed")),
            ),
            JsonlWriter(str(work / "final")),
        ],
        tasks,
        "mh4",
    )
    phases["dedup_fuzzy"] = time.perf_counter() - t
    wall = time.perf_counter() - started
    memory.running = False

    def docs(folder: str) -> list[dict]:
        import gzip

        out = []
        for f in sorted((work / folder).glob("*.jsonl.gz")):
            with gzip.open(f, "rt") as fh:
                out += [json.loads(line) for line in fh]
        return out

    final, filtered = docs("final"), docs("filtered")
    return {
        "wall_seconds": wall,
        "phases": phases,
        "after_filters": len(filtered),
        "kept_docs": len(final),
        "clusters": clusters_from_pairs(work, tasks),
        "peak_rss_total_mb": memory.peak_total / 2**20,
        "peak_rss_process_mb": memory.peak_process / 2**20,
    }


def clusters_from_pairs(work: Path, tasks: int) -> dict[str, str]:
    """url -> cluster of every document that reached MinHash, from datatrove's duplicate pairs.

    Its own cluster ids leave out each cluster's kept document, so the pairs are read back:
    (rank, index) is the document's position in what JsonlReader gave MinHash rank `rank`."""
    import struct

    position = {}
    for rank in range(tasks):
        for index, doc in enumerate(JsonlReader(str(work / "exact")).run(rank=rank, world_size=tasks)):
            position[(rank, index)] = doc.metadata["url"]
    parent = {url: url for url in position.values()}

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for path in sorted((work / "buckets").glob("*.dups")):
        data = path.read_bytes()
        for f1, d1, f2, d2 in struct.iter_unpack("<4I", data):
            a, b = find(position[(f1, d1)]), find(position[(f2, d2)])
            if a != b:
                parent[max(a, b)] = min(a, b)
    return {url: find(url) for url in parent}


if __name__ == "__main__":
    result = main(json.loads(Path(sys.argv[1]).read_text()))
    print(json.dumps(result))
