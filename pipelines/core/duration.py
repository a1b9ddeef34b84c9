"""Durations as people write them in a config: 90s, 10m, 2h, 1h30m, 1.5h, or seconds."""

from __future__ import annotations

import re

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
PART = re.compile(r"(\d+(?:\.\d+)?)([smhd])")


def parse_duration(text: str) -> float:
    """Seconds in `text`: 90s, 10m, 2h, 1h30m, 1.5h, or a bare number of seconds. ValueError else."""
    text = str(text).strip().lower().replace(" ", "")
    if re.fullmatch(r"\d+(?:\.\d+)?", text):
        seconds = float(text)
    elif re.fullmatch(r"(?:\d+(?:\.\d+)?[smhd])+", text):
        seconds = sum(float(n) * UNITS[unit] for n, unit in PART.findall(text))
    else:
        raise ValueError(f"{text!r} is not a duration (e.g. 90s, 10m, 2h, 1h30m)")
    if not seconds > 0:
        raise ValueError(f"{text!r} is not a positive duration")
    return seconds
