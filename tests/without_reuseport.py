"""``exhaust`` as it runs where ``SO_REUSEPORT`` does not spread connections (BSD, macOS):
``python -m tests.without_reuseport serve --processes 2 …`` (tests/acceptance)."""

from __future__ import annotations

import data_exhaust.serving
from data_exhaust.cli import main

if __name__ == "__main__":
    data_exhaust.serving.spreads_connections = lambda: False  # what those systems answer
    main()
