"""Reading a config: the YAML file, `--set a.b=c` overrides (values parsed as YAML), validation, and
one-line errors that name the key and where its value came from."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from pipelines.config.sections import Config
from pipelines.errors import UserError


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read YAML (optional), apply `a.b=c` overrides (values parsed as YAML), validate."""
    raw: dict[str, Any] = {}
    if path is not None:
        raw = _read_yaml(Path(path))
    set_keys = set()
    for item in overrides:
        key, value = _parse_override(item)
        _check_key(key)
        _set_dotted(raw, key, value)
        set_keys.add(key)
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise UserError(_describe(exc, path, set_keys)) from None


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise UserError(f"config file {path}{where} is not valid YAML") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping of sections, not {type(data).__name__}")
    return data


def _parse_override(item: str) -> tuple[str, Any]:
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise UserError(f"--set {item!r}: expected KEY=VALUE, e.g. --set train.lr=3e-4")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text  # not YAML: keep the raw string and let validation judge it
    return key, value


def _check_key(dotted: str) -> None:
    """Fail on a key that no section has, with the closest real key as a hint."""
    model: type[BaseModel] | None = Config
    walked: list[str] = []
    for part in dotted.split("."):
        walked.append(part)
        if model is None:
            raise UserError(f"config key {dotted!r}: {'.'.join(walked[:-1])!r} has no sub-keys")
        fields = model.model_fields
        if part not in fields:
            hint = difflib.get_close_matches(part, list(fields), n=1)
            also = f" (did you mean {'.'.join([*walked[:-1], hint[0]])!r}?)" if hint else ""
            raise UserError(f"config key {'.'.join(walked)!r} is unknown{also}")
        annotation = fields[part].annotation
        if get_origin(annotation) is dict:
            return  # a mapping's keys are its own (filter_params): the section's validator judges them
        model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _set_dotted(raw: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = raw
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[parts[-1]] = value


def _describe(exc: ValidationError, path: str | Path | None, set_keys: set[str]) -> str:
    err = exc.errors()[0]
    key = ".".join(str(p) for p in err["loc"]) or "(top level)"
    where = f" in {path}" if path else ""
    if key in set_keys:
        where = " (from --set)"
    elif path and any(k.startswith(f"{key}.") for k in set_keys):
        where += " or --set"  # a whole section's check: the value may come from either
    if err["type"] == "extra_forbidden":
        return f"config key {key!r}{where} is unknown"
    got = err.get("input")
    got_text = f" (got {got!r})" if not isinstance(got, dict) and got is not None else ""
    more = f" (+{len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    return f"config key {key!r}{where}: {err['msg']}{got_text}{more}"


def section_dict(cfg: Config, name: str) -> dict[str, Any]:
    return cfg.section(name).model_dump(mode="json")
