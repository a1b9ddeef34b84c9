"""What every stage stands on; no stage logic here.

    workflow.py   the runner: stages in order, fingerprints, skip what is up to date, publish
    workspace.py  the files of a run, on a local disk or any pyarrow filesystem (s3://, gs://)
    manifest.py   manifest.json: written last, so an output without one was never published
    outputs.py    reading what one stage published, for the stages after it
    cache.py      node-local copies of workspace files, keyed and verified by sha256
    hashing.py    sha256 of files and streams; the stable hash of a document id
    faults.py     the test-only fault hooks (off unless a test sets them)

Open workflow.py first.
"""
