"""The demo registry: real MCP servers from PyPI and npm, registered by `toolgate serve --demo`.

npm servers are included only when their commands are installed (`make run` installs them
into ./node_modules); the PyPI one ships with the `demo` extra.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from registry.specs import ServerSpec


def _find(command: str) -> str | None:
    """A console script next to our interpreter, in ./node_modules/.bin, or on PATH."""
    for folder in (Path(sys.executable).parent, Path.cwd() / "node_modules" / ".bin"):
        candidate = folder / command
        if candidate.exists():
            return str(candidate)
    return shutil.which(command)


def demo_specs(data_dir: Path) -> list[ServerSpec]:
    specs: list[ServerSpec] = []
    if time_server := _find("mcp-server-time"):
        specs.append(
            ServerSpec(
                name="time",
                description="Current time and time-zone conversion (mcp-server-time, PyPI).",
                command=time_server,
                args=["--local-timezone", "UTC"],
            )
        )
    if everything := _find("mcp-server-everything"):
        specs.append(
            ServerSpec(
                name="everything",
                description="The MCP reference test server: echo, add, long-running tasks and more (npm).",
                command=everything,
                args=["stdio"],
            )
        )
    if memory := _find("mcp-server-memory"):
        specs.append(
            ServerSpec(
                name="memory",
                description="A knowledge graph of entities, relations and observations kept in a file (npm).",
                command=memory,
                env={"MEMORY_FILE_PATH": str((data_dir / "memory.jsonl").resolve())},
            )
        )
    if filesystem := _find("mcp-server-filesystem"):
        files = (data_dir / "files").resolve()
        files.mkdir(parents=True, exist_ok=True)
        specs.append(
            ServerSpec(
                name="files",
                description=f"Read, write and search files under {files} (npm server-filesystem).",
                command=filesystem,
                args=[str(files)],
            )
        )
    return specs
