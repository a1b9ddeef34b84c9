"""The demo corpus: Python's own documentation served as a small raw web crawl, built at run time.

`corpus.inputs: ["demo:pydoc"]` makes the stage generate, once per workspace and Python version,
under <workspace>/demo-input/pydoc-<id>/:
  - every importable standard-library module rendered to HTML by pydoc: most as WARC.gz response
    records, some as single .html files, some as pydoc's plain text in JSONL (.gz and .zst);
  - exact copies (the same page under another URL), edited near-copies (a few percent of the
    words replaced), non-English pages, and junk (navigation boilerplate, lorem ipsum, keyword
    spam, a 404, an image, a binary .html, an empty page, invalid UTF-8, a malformed JSON line, a
    record without text, and a truncated WARC.gz).
Nothing is downloaded and nothing is committed. Generation runs in a subprocess, because it
imports some 500 modules: `python -m pipelines.corpus.demo OUT_DIR`.
"""

from __future__ import annotations

import contextlib
import gzip
import importlib
import io
import json
import os
import pkgutil
import platform
import random
import re
import subprocess
import sys
import sysconfig
import tempfile
import warnings
from pathlib import Path

from pipelines.errors import UserError
from pipelines.manifest import fingerprint

DEMO_VERSION = 2
NAMES = ("pydoc",)
COMPLETE = ".complete"  # written last; hidden, so input expansion never reads it
SKIP = {"antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "__main__", "lib2to3"}
SKIP |= {"ensurepip", "venv", "test", "pydoc_data", "distutils"}
BASE_URL = "https://docs.example.org/python/"


def identity(spec: str) -> dict:
    return {"demo": spec, "version": DEMO_VERSION, "python": platform.python_version()}


def ensure(ws, spec: str, log=print) -> str:
    """The workspace-relative directory of the demo corpus `spec`, generated if not there yet."""
    name = spec.split(":", 1)[1]
    if name not in NAMES:
        raise UserError(f"config key 'corpus.inputs': unknown demo corpus {spec!r} (known: demo:pydoc)")
    rel = f"demo-input/{name}-{fingerprint(identity(spec))[:12]}"
    if ws.exists(f"{rel}/{COMPLETE}"):
        return rel
    log(f"[corpus] generating the demo corpus {spec} into {ws.full_uri(rel)}")
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pipelines.corpus.demo", tmp],
            check=True,
            env=env,
            timeout=900,
            stdout=subprocess.DEVNULL,
        )
        ws.delete_dir(rel)
        for path in sorted(Path(tmp).rglob("*")):
            if path.is_file():
                ws.write_bytes(f"{rel}/{path.relative_to(tmp).as_posix()}", path.read_bytes())
    ws.write_bytes(f"{rel}/{COMPLETE}", b"")
    return rel


# --- generation (in the subprocess) ------------------------------------------------------------
def stdlib_modules() -> list[str]:
    names = []
    for top in sorted(n for n in sys.stdlib_module_names if not n.startswith("_") and n not in SKIP):
        names.append(top)
        module = _import(top)
        if module is not None and hasattr(module, "__path__"):
            for info in pkgutil.walk_packages(module.__path__, top + ".", onerror=lambda name: None):
                if not any(
                    p.startswith("_") or p in ("test", "tests", "idle_test") for p in info.name.split(".")
                ):
                    names.append(info.name)
    return names


def _import(name: str):
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            return importlib.import_module(name)
    except BaseException:  # noqa: BLE001 - platform-specific or broken modules are simply skipped
        return None


def render_pages() -> list[tuple[str, str, str]]:
    """(module, pydoc HTML page, pydoc plain text) for every importable standard-library module."""
    import pydoc

    stdlib = sysconfig.get_paths()["stdlib"]
    pages = []
    for name in stdlib_modules():
        module = _import(name)
        source = getattr(module, "__file__", None) or ""
        if module is None or (source and not source.startswith(stdlib)):
            continue
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                html = pydoc.html.page(pydoc.describe(module), pydoc.html.document(module, name))
                text = pydoc.plaintext.document(module, name)
        except Exception:  # noqa: BLE001 - pydoc fails on a few odd modules: leave them out
            continue
        pages.append((name, html, text))
    return pages + library_pages()


# Installed with the platform and rich in prose docstrings: one page per public function or method,
# like the API reference of a documentation site.
LIBRARIES = {"numpy": ("ndarray",), "pandas": ("DataFrame", "Series")}


def library_pages() -> list[tuple[str, str, str]]:
    import inspect
    import pydoc

    objects = []
    for lib, classes in LIBRARIES.items():
        module = _import(lib)
        if module is None:
            continue
        for name in sorted(n for n in getattr(module, "__all__", dir(module)) if not n.startswith("_")):
            obj = getattr(module, name, None)
            if inspect.isroutine(obj):
                objects.append((f"{lib}.{name}", obj))
        for cls_name in classes:
            cls = getattr(module, cls_name)
            for name in sorted(n for n in vars(cls) if not n.startswith("_")):
                obj = getattr(cls, name, None)
                if inspect.isroutine(obj) and (obj.__doc__ or "").strip():
                    objects.append((f"{lib}.{cls_name}.{name}", obj))
    pages = []
    for name, obj in objects:
        try:
            html = pydoc.html.page(name, pydoc.html.document(obj, name))
            pages.append((name, html, pydoc.plaintext.document(obj, name)))
        except Exception:  # noqa: BLE001 - an object pydoc cannot render is left out
            continue
    return pages


FOREIGN = {
    "de": [
        "Die Stadt liegt an einem breiten Fluss und hat eine lange Geschichte.",
        "Im Sommer kommen viele Besucher, um die alten Brücken zu sehen.",
        "Der Markt öffnet jeden Morgen um sieben Uhr und schließt am frühen Nachmittag.",
        "Wir haben gestern Abend in einem kleinen Restaurant am Hafen gegessen.",
        "Das Wetter war kalt, aber die Sonne schien den ganzen Tag.",
        "Meine Schwester arbeitet seit drei Jahren als Ärztin im Krankenhaus.",
        "Die Kinder spielen nach der Schule gern im Park hinter dem Rathaus.",
        "Am Wochenende fahren wir mit dem Zug in die Berge.",
    ],
    "fr": [
        "La ville se trouve au bord d'une grande rivière et possède une longue histoire.",
        "En été, de nombreux visiteurs viennent admirer les vieux ponts.",
        "Le marché ouvre chaque matin à sept heures et ferme en début d'après-midi.",
        "Nous avons dîné hier soir dans un petit restaurant près du port.",
        "Il faisait froid, mais le soleil a brillé toute la journée.",
        "Ma sœur travaille comme médecin à l'hôpital depuis trois ans.",
        "Les enfants aiment jouer dans le parc derrière la mairie après l'école.",
        "Le week-end, nous prenons le train pour aller à la montagne.",
    ],
    "es": [
        "La ciudad está junto a un río ancho y tiene una larga historia.",
        "En verano llegan muchos visitantes para ver los puentes antiguos.",
        "El mercado abre cada mañana a las siete y cierra a primera hora de la tarde.",
        "Anoche cenamos en un pequeño restaurante cerca del puerto.",
        "Hacía frío, pero el sol brilló durante todo el día.",
        "Mi hermana trabaja como médica en el hospital desde hace tres años.",
        "A los niños les gusta jugar en el parque detrás del ayuntamiento.",
        "Los fines de semana tomamos el tren para ir a las montañas.",
    ],
    "it": [
        "La città si trova lungo un ampio fiume e ha una lunga storia.",
        "In estate arrivano molti visitatori per vedere i vecchi ponti.",
        "Il mercato apre ogni mattina alle sette e chiude nel primo pomeriggio.",
        "Ieri sera abbiamo cenato in un piccolo ristorante vicino al porto.",
        "Faceva freddo, ma il sole ha brillato per tutto il giorno.",
        "Mia sorella lavora come medico in ospedale da tre anni.",
        "Ai bambini piace giocare nel parco dietro il municipio dopo la scuola.",
        "Nel fine settimana prendiamo il treno per andare in montagna.",
    ],
    "nl": [
        "De stad ligt aan een brede rivier en heeft een lange geschiedenis.",
        "In de zomer komen veel bezoekers om de oude bruggen te bekijken.",
        "De markt gaat elke ochtend om zeven uur open en sluit vroeg in de middag.",
        "Gisteravond hebben we gegeten in een klein restaurant bij de haven.",
        "Het was koud, maar de zon scheen de hele dag.",
        "Mijn zus werkt al drie jaar als arts in het ziekenhuis.",
        "De kinderen spelen na school graag in het park achter het stadhuis.",
        "In het weekend nemen we de trein naar de bergen.",
    ],
    "pt": [
        "A cidade fica junto a um rio largo e tem uma longa história.",
        "No verão chegam muitos visitantes para ver as pontes antigas.",
        "O mercado abre todas as manhãs às sete horas e fecha no início da tarde.",
        "Ontem à noite jantámos num pequeno restaurante perto do porto.",
        "Estava frio, mas o sol brilhou durante todo o dia.",
        "A minha irmã trabalha como médica no hospital há três anos.",
        "As crianças gostam de brincar no parque atrás da câmara municipal depois da escola.",
        "Ao fim de semana apanhamos o comboio para ir às montanhas.",
    ],
}

LOREM = (
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore "
    "et dolore magna aliqua. Ut enim ad minim veniam, quis nostrud exercitation ullamco laboris nisi ut "
    "aliquip ex ea commodo consequat."
)
NAV = ["Home", "About us", "Products", "Pricing", "Blog", "Careers", "Contact", "Login", "Sign up", "Cart"]


def _page(title: str, body: str) -> str:
    return f"<!DOCTYPE html><html><head><title>{title}</title></head><body>{body}</body></html>"


def edit_html(html: str, rate: float, rng: random.Random) -> str:
    """Replace a share of the words in the page's text (never inside tags): a near-copy."""

    def edit(match):
        words = match.group(1).split(" ")
        for i, w in enumerate(words):
            if w.isalpha() and rng.random() < rate:
                words[i] = rng.choice(("really", "quite", "often", "rather", "simply", "usually"))
        return ">" + " ".join(words) + "<"

    return re.sub(r">([^<]+)<", edit, html)


def edit_text(text: str, rate: float, rng: random.Random) -> str:
    words = text.split(" ")
    return " ".join(rng.choice(("really", "quite", "often")) if rng.random() < rate else w for w in words)


def junk_pages(rng: random.Random) -> list[tuple[str, str]]:
    pages = []
    for i in range(10):
        nav = " | ".join(rng.sample(NAV, len(NAV)))
        body = (
            "".join(f"<div class='nav'>{nav}</div>" for _ in range(8))
            + "<footer>© 2024 Example Inc.</footer>"
        )
        pages.append((f"shop/{i}", _page(f"Shop {i}", body)))
    for i in range(5):
        pages.append((f"lorem/{i}", _page("Lorem", "".join(f"<p>{LOREM}</p>" for _ in range(6)))))
    for i in range(5):
        spam = " ".join(
            rng.choice(["cheap", "best", "buy", "python", "tutorial", "free", "download"]) for _ in range(400)
        )
        pages.append((f"spam/{i}", _page("Best cheap python", f"<p>{spam}</p>")))
    for i in range(5):
        pages.append((f"short/{i}", _page("Note", "<p>Page moved. See the new site.</p>")))
    return pages


def foreign_pages(rng: random.Random) -> list[tuple[str, str]]:
    pages = []
    for lang, sentences in FOREIGN.items():
        for i in range(4):
            paragraphs = ["<p>" + " ".join(rng.choices(sentences, k=6)) + "</p>" for _ in range(5)]
            pages.append((f"{lang}/{i}", _page(f"{lang} {i}", "".join(paragraphs))))
    return pages


def _http(body: bytes, content_type: str = "text/html; charset=utf-8", status: str = "200 OK"):
    from warcio.statusandheaders import StatusAndHeaders

    return StatusAndHeaders(status, [("Content-Type", content_type)], protocol="HTTP/1.1"), io.BytesIO(body)


def write_warc(path: Path, records: list[tuple], compress: bool = True) -> None:
    """records: (url, body bytes[, content type[, status]])"""
    from warcio.warcwriter import WARCWriter

    with open(path, "wb") as f:
        writer = WARCWriter(f, gzip=compress)
        for url, body, *rest in records:
            headers, payload = _http(body, *rest)
            writer.write_record(
                writer.create_warc_record(url, "response", payload=payload, http_headers=headers)
            )


def generate(out: Path, seed: int = 1234) -> dict:
    warnings.simplefilter("ignore")
    rng = random.Random(seed)
    pages = render_pages()
    order = list(range(len(pages)))
    rng.shuffle(order)
    n_warc, n_html = int(len(pages) * 0.6), int(len(pages) * 0.25)
    warc_ids, html_ids, jsonl_ids = order[:n_warc], order[n_warc : n_warc + n_html], order[n_warc + n_html :]
    url = lambda name: f"{BASE_URL}{name}.html"  # noqa: E731
    (out / "html" / "mirror").mkdir(parents=True)
    (out / "notes").mkdir()

    shards: list[list[tuple]] = [[] for _ in range(4)]
    for k, i in enumerate(warc_ids):
        name, html, _ = pages[i]
        shards[k % 4].append((url(name), html.encode()))
    foreign = foreign_pages(rng)
    for k, (name, html) in enumerate(foreign):
        shards[k % 4].append((f"https://example.{name.split('/')[0]}/{name}", html.encode()))
    for k, shard in enumerate(shards):
        write_warc(out / f"crawl-{k:04d}.warc.gz", shard)
    # A crawl file cut in the middle: its first records are read, then the file is reported.
    whole = (out / "crawl-0000.warc.gz").read_bytes()
    (out / "crawl-9999-truncated.warc.gz").write_bytes(whole[: len(whole) // 2])

    for i in html_ids:
        name, html, _ = pages[i]
        (out / "html" / f"{name}.html").write_text(html)
    for i in rng.sample(warc_ids, 30):  # exact copies: the same page under another URL
        name, html, _ = pages[i]
        (out / "html" / "mirror" / f"{name}.html").write_text(html)
    mirror = [
        (f"https://mirror.example.net/{pages[i][0]}.html", edit_html(pages[i][1], 0.03, rng).encode())
        for i in rng.sample(html_ids, 30)
    ]
    mirror += [(f"https://junk.example.com/{name}", html.encode()) for name, html in junk_pages(rng)]
    mirror += [
        ("https://junk.example.com/logo.png", bytes(range(256)) * 4, "image/png"),
        (
            "https://junk.example.com/gone",
            b"<html><body>Not found</body></html>",
            "text/html",
            "404 Not Found",
        ),
    ]
    write_warc(out / "crawl-mirror.warc.gz", mirror)

    records = [{"id": pages[i][0], "text": pages[i][2], "url": url(pages[i][0])} for i in jsonl_ids]
    near = [
        {"id": f"{pages[i][0]}#edited", "text": edit_text(pages[i][2], 0.03, rng), "url": None}
        for i in rng.sample(jsonl_ids, 10)
    ]
    half = len(records) // 2
    lines = [json.dumps(r) for r in records[:half]] + ['{"id": "broken", "text": "an unterminated record']
    lines.append(json.dumps({"id": "no-text", "body": "this record has no text field"}))
    with gzip.open(out / "docs-0000.jsonl.gz", "wt") as f:
        f.write("\n".join(lines) + "\n")
    import zstandard

    tail = "\n".join(json.dumps(r) for r in records[half:] + near) + "\n"
    (out / "docs-0001.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(tail.encode()))

    (out / "html" / "binary.html").write_bytes(bytes(rng.randrange(256) for _ in range(4096)))
    (out / "html" / "empty.html").write_bytes(b"")
    bad = ("Caf\xe9 na\xefve r\xe9sum\xe9 " * 200).encode("latin-1")  # Latin-1 bytes: invalid UTF-8
    (out / "notes" / "latin1.txt").write_bytes(bad)
    return {"pages": len(pages), "foreign": len(foreign)}


if __name__ == "__main__":
    print(json.dumps(generate(Path(sys.argv[1]))))
