"""The incremental corpus refresh (jobs/refresh_corpus.py): new input files -> a child corpus
version and shards that extend its parent's. Not a stage of the chain: it composes the corpus and
shards stages' builders, which is why it alone may import those packages.

    stage.py    the refresh, start to end (open this first)
    lineage.py  the versions of a workspace, their parents and the input files they saw
    lock.py     one refresh at a time per workspace
    version.py  build and publish the child corpus version
    shards.py   shards that extend the parent's
"""
