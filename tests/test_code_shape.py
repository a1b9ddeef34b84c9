"""The shape of the code, so that it stays readable: stage packages that meet only through the
shared ones, an import graph without cycles, and no module or function too long to read at once."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PIPELINES = ROOT / "pipelines"
STAGES = {"corpus", "tokenizer", "shards", "training", "generate", "refresh"}
SHARED = {"core", "runtime", "registry"}  # what the stages stand on; they import no stage
# The refresh re-runs the corpus and shards builders on new input files: it composes those stages.
# Lineage reads back what the stages wrote (the refresh's version chain, the shards' document index,
# the corpus's n-gram index): it composes their readers.
COMPOSES = {"refresh": {"corpus", "shards"}, "lineage": {"corpus", "shards", "refresh"}}
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 400, 80


def modules(*packages: str) -> dict[str, Path]:
    found = {}
    for package in packages:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imported(path: Path, known: dict[str, Path]) -> list[tuple[int, str]]:
    """(line, module) of every import in the file, at any depth (lazy imports count too)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:  # `from pipelines.x import y` may import the module x.y
                name = f"{node.module}.{alias.name}"
                out.append((node.lineno, name if name in known else node.module))
        elif isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
    return [(line, name) for line, name in out if name in known]


def test_the_top_level_holds_a_few_modules_and_every_stage_is_a_package():
    top = sorted(p.stem for p in PIPELINES.glob("*.py") if p.stem != "__init__")
    assert len(top) <= 6, top
    packages = {p.name for p in PIPELINES.iterdir() if (p / "__init__.py").is_file()}
    assert STAGES | SHARED <= packages, STAGES | SHARED - packages
    for package in packages:
        doc = ast.get_docstring(ast.parse((PIPELINES / package / "__init__.py").read_text()))
        assert doc and len(doc.splitlines()) >= 2, f"pipelines/{package}/__init__.py says what it holds"


def test_stage_packages_meet_only_through_the_shared_packages():
    known = modules("pipelines")
    wrong = []
    for name, path in known.items():
        parts = name.split(".")
        if len(parts) < 3 or parts[1] == "config":  # the top level: the CLI, config/, errors, stages.py
            continue
        own = parts[1]
        for line, target in imported(path, known):
            other = target.split(".")[1] if target.count(".") else None
            if other is None or other == own or other not in STAGES:
                continue
            if own in SHARED or other not in COMPOSES.get(own, set()):
                wrong.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
    assert not wrong, "\n".join(wrong)


def test_the_import_graph_has_no_cycle():
    known = modules("pipelines", "gpt2core")
    graph = {name: {t for _, t in imported(path, known) if t != name} for name, path in known.items()}
    state: dict[str, str] = {}
    path: list[str] = []
    cycles = []

    def visit(node: str) -> None:
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join([*path[path.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not cycles, "\n".join(cycles)


def test_no_module_or_function_is_too_long_to_read_at_once():
    long = []
    for path in modules("pipelines", "gpt2core", "jobs").values():
        text = path.read_text()
        if text.count("\n") > MAX_MODULE_LINES:
            long.append(f"{path.relative_to(ROOT)}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {length} lines")
    assert not long, "\n".join(long)
