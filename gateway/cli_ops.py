"""Operations commands: `toolgate servers list` and `toolgate doctor`. (Being built: issue 6.)"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .settings import Settings

COMMANDS = ("servers", "doctor")


def add_parser(commands: Any) -> None:
    commands.add_parser("servers", help="list the registered servers")
    commands.add_parser("doctor", help="check every backend and say what is wrong and how to fix it")


def run(args: argparse.Namespace, settings: Settings) -> int:
    print(f"toolgate {args.command}: not implemented yet", file=sys.stderr)
    return 2
