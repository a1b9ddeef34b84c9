"""Put the repository root first on sys.path, so `ray job submit --working-dir .` runs the code it
uploaded rather than whatever version is installed on the cluster."""

import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[1])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
