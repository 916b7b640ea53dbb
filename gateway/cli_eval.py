"""`toolgate eval`: index a labelled corpus into a fresh temporary index and score its queries.

(Stub: filled in by the eval-harness work.)
"""

from __future__ import annotations

import argparse
from typing import Any

from .settings import Settings


def add_parser(commands: Any) -> None:
    commands.add_parser("eval", help="score retrieval on a labelled corpus (not yet implemented)")


def run(args: argparse.Namespace, settings: Settings) -> int:
    raise SystemExit("toolgate eval: not implemented yet")
