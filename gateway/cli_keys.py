"""`toolgate keys create|list|revoke`. (Being built: issue 6.)"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .settings import Settings


def add_parser(commands: Any) -> None:
    commands.add_parser("keys", help="manage API keys (create, list, revoke)")


def run(args: argparse.Namespace, settings: Settings) -> int:
    print("toolgate keys: not implemented yet", file=sys.stderr)
    return 2
