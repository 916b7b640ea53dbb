"""Logging set-up: text or JSON lines on stderr. (JSON and request ids being built: issue 6.)"""

from __future__ import annotations

import logging
import sys


def configure_logging(level: str, fmt: str = "text") -> None:
    """Send the gateway's logs to stderr (stdout may carry the MCP protocol)."""
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
