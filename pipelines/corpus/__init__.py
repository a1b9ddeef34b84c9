"""The corpus stage: raw web text (HTML, WARC, JSONL, Parquet, text) -> a clean, deduplicated corpus.

    sources.py   corpus.inputs -> input files        readers.py   files -> records (bad input = rejects)
    streams.py   a file's bytes: gzip/zstd, damage   schema.py    record and document columns, ids
    extract.py   HTML -> text                        normalize.py UTF-8, NFC, controls, whitespace
    langid.py    fastText lid.176                    filters.py   Gopher, C4, length (keep or reason)
    pii.py       e-mail / IP redaction               minhash.py   signatures and LSH band keys
    process.py   the per-document steps (Ray Data)   dedup.py     exact + fuzzy dedup (Ray tasks)
    memo.py      outcomes of exact copies, per worker  wordgrams.py n-gram counts for Gopher repetition
    components.py  connected components kernels      shuffle.py   hash partitioning between tasks
    index.py     the index/ a refresh probes         publish.py   data/ and rejects/ files
    stats.py     stats.json and the funnel           build.py     build_corpus(): all of the above
    demo.py      the demo corpus (demo:pydoc)        demo_pages.py  its made-up pages (junk, languages)
    stage.py     the workflow stage

For an incremental refresh: `build.build_corpus(ws, new_files, cfg.corpus, out, against=[old dirs])`
processes only `new_files` and drops documents that duplicate the earlier versions, probing their
index/ (never their documents).
"""
