"""The docker-compose stack: docker-compose.yml, Dockerfile, .env.example.

No Docker engine runs here, so the stack is checked in three ways: docker-compose (1.29, the
Debian package) validates and resolves the file; the Dockerfile and .env.example are parsed and
held to the code (every setting documented with its true default); and the gateway process runs
here with the environment the image and the compose file give it, against this machine's
PostgreSQL and Redis, its health checks run, and a real MCP client talks to it. Qdrant's server
is left out of the live run: the retrieval contract suite covers it.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import threading
import time
import tomllib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar

import anyio
import httpx
import httpx2
import pytest
import redis
import redis.asyncio
import yaml
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from pydantic import AliasChoices
from sqlalchemy.engine import make_url

from gateway.settings import Settings
from tests.running import TOOLGATE
from tests.support import PYTHON, ROOT, console_script, free_port, require

COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERIGNORE = ROOT / ".dockerignore"
SERVICES = {"gateway", "postgres", "redis", "qdrant"}
PG_ADMIN_URL = os.environ.get("TOOLGATE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("TOOLGATE_TEST_REDIS", "redis://127.0.0.1:6379/0")
META_TOOLS = ["find_tools", "call_tool", "forget_tools"]


# --- helpers ----------------------------------------------------------------------------------


def setting_env_names() -> dict[str, str]:
    """Settings field -> the environment variable people set (an alias's first choice)."""
    names = {}
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        names[name] = alias.choices[0] if isinstance(alias, AliasChoices) else f"TOOLGATE_{name.upper()}"
    return names


def all_setting_env_names() -> set[str]:
    """Every name a setting answers to, to keep the host's values out of a Settings() check."""
    found = set()
    for name, field in Settings.model_fields.items():
        found.add(f"TOOLGATE_{name.upper()}")
        if isinstance(field.validation_alias, AliasChoices):
            found.update(str(choice) for choice in field.validation_alias.choices)
    return found


@dataclass
class EnvLine:
    name: str
    value: str
    commented: bool
    described: bool  # a plain comment line stands right above it


def env_example() -> dict[str, EnvLine]:
    lines = ENV_EXAMPLE.read_text().splitlines()
    found: dict[str, EnvLine] = {}
    for index, line in enumerate(lines):
        match = re.fullmatch(r"(# )?([A-Z][A-Z0-9_]*)=(.*)", line)
        if not match:
            continue
        above = lines[index - 1] if index else ""
        described = re.fullmatch(r"# \S.*", above) is not None and not re.match(r"# [A-Z][A-Z0-9_]*=", above)
        name = match.group(2)
        assert name not in found, f".env.example names {name} twice"
        found[name] = EnvLine(name, match.group(3), match.group(1) is not None, described)
    return found


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined and comments dropped."""
    joined = re.sub(
        r"\\\n",
        "",
        "\n".join(line for line in DOCKERFILE.read_text().splitlines() if not line.lstrip().startswith("#")),
    )
    found = []
    for line in joined.splitlines():
        if line.strip():
            keyword, _, rest = line.strip().partition(" ")
            found.append((keyword.upper(), rest.strip()))
    return found


def runtime_stage() -> list[tuple[str, str]]:
    instructions = dockerfile_instructions()
    last_from = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[last_from:]


def image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, rest in runtime_stage():
        if keyword == "ENV":
            for item in shlex.split(rest):
                key, _, value = item.partition("=")
                env[key] = value
    return env


def compose_variables() -> dict[str, str | None]:
    """`${NAME:-default}` / `${NAME}` used by docker-compose.yml (`$${...}` is an escape)."""
    found: dict[str, str | None] = {}
    for match in re.finditer(
        r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}", COMPOSE_FILE.read_text()
    ):
        found[match.group(1)] = match.group(2)
    return found


def unescape(command: str) -> str:
    """What the container's shell receives: compose turns `$$` into `$`."""
    return command.replace("$$", "$")


def health_argv(test: list[str]) -> list[str]:
    kind, *rest = test
    if kind == "CMD-SHELL":
        return ["sh", "-c", unescape(rest[0])]
    assert kind == "CMD", test
    return [unescape(part) for part in rest]


def run_check(argv: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=20, check=False)


# --- docker-compose config ----------------------------------------------------------------------


def compose_binary() -> str:
    found = shutil.which("docker-compose")
    require(found is not None, "docker-compose is not installed (apt-get install -y docker-compose)")
    assert found is not None
    return found


def make_project(folder: Path, env_text: str, compose_text: str | None = None) -> Path:
    """A project folder as a user has it after `cp .env.example .env`: compose reads .env from
    the project folder, and the repository must not get one."""
    folder.mkdir(parents=True, exist_ok=True)
    if compose_text is None:
        (folder / "docker-compose.yml").symlink_to(COMPOSE_FILE)
    else:
        (folder / "docker-compose.yml").write_text(compose_text)
    (folder / "Dockerfile").symlink_to(DOCKERFILE)
    (folder / ".env").write_text(env_text)
    return folder


def compose(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # A bare environment: the host's DATABASE_URL and the like must not fill the ${...}.
    env = {"PATH": os.environ["PATH"], "HOME": str(project)}
    return subprocess.run(
        [compose_binary(), *args],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


# What docs/deploy.md tells an operator to add to .env: the bootstrap admin key.
STACK_ADMIN_KEY = "tg_stack_admin_" + uuid.uuid4().hex


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    env_text = ENV_EXAMPLE.read_text() + f"\nTOOLGATE_ADMIN_KEY={STACK_ADMIN_KEY}\n"
    return make_project(tmp_path_factory.mktemp("compose") / "stack", env_text)


@pytest.fixture(scope="module")
def resolved(project: Path) -> dict[str, Any]:
    """docker-compose's own resolution of the file: interpolated, env_file merged in."""
    result = compose(project, "config")
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = yaml.safe_load(result.stdout)
    return config


def test_docker_compose_validates_the_file(project: Path, tmp_path: Path) -> None:
    result = compose(project, "config", "-q")
    assert result.returncode == 0, result.stderr
    # An empty .env is enough: every ${...} has a default.
    bare = compose(make_project(tmp_path / "bare", ""), "config", "-q")
    assert bare.returncode == 0, bare.stderr
    # The validator is not vacuous: a wrong depends_on condition is refused.
    broken_text = COMPOSE_FILE.read_text().replace("service_healthy", "service_up", 1)
    broken = compose(make_project(tmp_path / "broken", "", broken_text), "config", "-q")
    assert broken.returncode != 0
    assert "service_up" in broken.stderr


def test_stack_shape(resolved: dict[str, Any]) -> None:
    services = resolved["services"]
    assert set(services) == SERVICES
    volumes = set(resolved.get("volumes", {}))
    for name, service in services.items():
        assert service.get("healthcheck", {}).get("test"), f"{name} has no health check"
        assert service.get("restart") in ("always", "unless-stopped"), f"{name} is not restarted"
        if name != "gateway":
            assert "ports" not in service, f"{name} is published; only the gateway should be"
            mounts = {str(v).split(":")[0] for v in service.get("volumes", [])}
            assert mounts, f"{name} keeps no data in a volume"
            assert mounts <= volumes, f"{name} does not keep its data in a named volume"
            assert re.search(r":v?\d+(\.\d+)*(-[a-z]+)?$", service["image"]), f"{name} image is not pinned"
    assert re.fullmatch(r"qdrant/qdrant:v\d+\.\d+\.\d+", services["qdrant"]["image"])

    gateway = services["gateway"]
    assert gateway["build"]
    assert gateway["depends_on"] == {
        name: {"condition": "service_healthy"} for name in ("postgres", "redis", "qdrant")
    }
    env = gateway["environment"]
    assert make_url(env["DATABASE_URL"]).host == "postgres"
    assert env["REDIS_URL"].startswith("redis://redis:")
    assert env["QDRANT_URL"].startswith("http://qdrant:6333")
    assert env["TOOLGATE_HOST"] == "0.0.0.0"
    assert env["TOOLGATE_MIGRATE_ON_START"] == "true"
    assert env["TOOLGATE_LOG_FORMAT"] == "json"
    assert env["TOOLGATE_ADMIN_KEY"] == STACK_ADMIN_KEY  # .env reaches the container
    data_dir = image_env()["TOOLGATE_DATA_DIR"]
    assert any(str(v).split(":")[:2] == ["gateway_data", data_dir] for v in gateway["volumes"]), (
        "the gateway's data dir (the credentials key file) is not on a named volume"
    )
    assert gateway["ports"] == [f"127.0.0.1:8080:{env['TOOLGATE_PORT']}/tcp"]
    # A misspelt setting would be ignored by the gateway (extra="ignore"): catch it here.
    known = all_setting_env_names() | set(compose_variables()) | set(env_example())
    unknown = {key for key in env if key not in known}
    assert not unknown, f"the gateway service sets variables no setting reads: {unknown}"


def test_qdrant_image_matches_the_pinned_client() -> None:
    image = yaml.safe_load(COMPOSE_FILE.read_text())["services"]["qdrant"]["image"]
    server = re.fullmatch(r"qdrant/qdrant:v(\d+)\.(\d+)\.\d+", image)
    client = re.search(r"ARG QDRANT_CLIENT_VERSION=(\d+)\.(\d+)\.\d+", DOCKERFILE.read_text())
    assert server
    assert client
    assert server.group(1) == client.group(1)
    assert abs(int(server.group(2)) - int(client.group(2))) <= 1, (
        "qdrant-client supports a one-minor gap at most"
    )


# --- Dockerfile and .dockerignore -----------------------------------------------------------------


def test_dockerfile_builds_a_small_non_root_offline_image() -> None:
    instructions = dockerfile_instructions()
    stages = [rest for keyword, rest in instructions if keyword == "FROM"]
    assert len(stages) >= 2, "not a multi-stage build"
    assert any("--from=build" in rest for keyword, rest in runtime_stage() if keyword == "COPY")
    text = DOCKERFILE.read_text()
    # The CPU build of torch, from its own index (PyPI's Linux build brings CUDA).
    assert re.search(r"ARG TORCH_VERSION=\d+\.\d+\.\d+\+cpu", text)
    assert "ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu" in text

    runtime = runtime_stage()
    users = [(i, rest) for i, (keyword, rest) in enumerate(runtime) if keyword == "USER"]
    assert users, "the image runs as root"
    user_at, user = users[-1]
    uid = re.search(r"ARG UID=(\d+)", text)
    assert uid
    assert int(uid.group(1)) != 0
    assert user.split(":")[0] in ("${UID}", "$UID", uid.group(1)), user

    env = image_env()
    assert env["HF_HUB_OFFLINE"] == "1"
    cache = env["TOOLGATE_EMBEDDING_CACHE_DIR"]
    cache_root = str(PurePosixPath(cache).parent)
    chowned = [rest for keyword, rest in runtime[:user_at] if keyword == "RUN" and "chown -R" in rest]
    assert any(cache_root in rest for rest in chowned), f"{cache_root} is not given to the runtime user"
    bake = [i for i, (keyword, rest) in enumerate(runtime) if keyword == "RUN" and "build_embedder" in rest]
    assert bake, "the model export is not baked into the image"
    assert bake[0] > user_at, "the model export is not baked in as the runtime user"

    assert ("EXPOSE", env["TOOLGATE_PORT"]) in runtime
    health = [rest for keyword, rest in runtime if keyword == "HEALTHCHECK"]
    assert health
    assert "/readyz" in health[0]
    assert [json.loads(rest) for keyword, rest in runtime if keyword == "CMD"] == [["toolgate", "serve"]]


def test_the_image_install_holds_every_subpackage() -> None:
    """The image installs toolgate from a wheel, not in editable mode: a package directory left
    out of pyproject's explicit package list is missing there and the gateway fails to start."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = setuptools.get("packages")
    if not isinstance(listed, list):
        return  # package discovery, not a fixed list: nothing can be left out by hand
    on_disk = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for root in ("gateway", "registry", "retrieval", "migrations")
        for init in (ROOT / root).rglob("__init__.py")
    }
    missing = sorted(on_disk - set(listed))
    assert not missing, f"pyproject.toml [tool.setuptools] packages leaves out {missing}"


def test_dockerignore_keeps_secrets_and_local_state_out() -> None:
    ignored = {line.strip().rstrip("/") for line in DOCKERIGNORE.read_text().splitlines()}
    assert {".env", ".venv", ".git", "node_modules", ".toolgate"} <= ignored
    for needed in ("pyproject.toml", "README.md", "gateway", "registry", "retrieval", "migrations"):
        assert needed not in ignored


# --- .env.example -----------------------------------------------------------------------------------


def test_env_example_documents_every_setting_with_its_default(monkeypatch: pytest.MonkeyPatch) -> None:
    documented = env_example()
    missing = [env for env in setting_env_names().values() if env not in documented]
    assert not missing, f".env.example does not document {missing}"
    for name in all_setting_env_names():
        monkeypatch.delenv(name, raising=False)
    defaults_none = []
    for field, env in setting_env_names().items():
        line = documented[env]
        assert line.commented, f"{env} is set in .env.example; settings are documented commented out"
        assert line.described, f"{env} has no description line above it"
        if line.value == "":
            defaults_none.append(field)
        else:
            monkeypatch.setenv(env, line.value)
    # The documented values, read by the real Settings, must give the defaults.
    settings = Settings()
    for field, info in Settings.model_fields.items():
        expected = None if field in defaults_none else info.default
        assert getattr(settings, field) == info.default == expected, (
            f"{setting_env_names()[field]}: .env.example says {documented[setting_env_names()[field]].value!r}, "
            f"the default is {info.default!r}"
        )


def test_env_example_documents_every_compose_variable() -> None:
    documented = env_example()
    strays = set(documented) - set(setting_env_names().values()) - set(compose_variables())
    assert not strays, f".env.example names variables neither compose nor the gateway reads: {strays}"
    for name, default in compose_variables().items():
        assert name in documented, f"docker-compose.yml reads ${{{name}}}, which .env.example omits"
        line = documented[name]
        assert line.described, f"{name} has no description line above it"
        if line.commented:  # shown with the default compose falls back to
            assert line.value == default, f"{name}: .env.example says {line.value!r}, compose {default!r}"


# --- health checks, run here ------------------------------------------------------------------------


class _Readyz(BaseHTTPRequestHandler):
    status: ClassVar[int] = 200

    def do_GET(self) -> None:
        self.send_response(type(self).status if self.path == "/readyz" else 404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def fake_qdrant() -> Iterator[tuple[int, type[_Readyz]]]:
    handler = type("Readyz", (_Readyz,), {})
    server = HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], handler
    finally:
        server.shutdown()
        server.server_close()


def test_qdrant_health_check_reads_the_readyz_status(
    resolved: dict[str, Any], fake_qdrant: tuple[int, type[_Readyz]]
) -> None:
    """The image has only bash: its check must tell a ready server from a busy or absent one."""
    require(shutil.which("bash") is not None, "bash is not installed")
    port, handler = fake_qdrant
    argv = [
        part.replace("6333", str(port))
        for part in health_argv(resolved["services"]["qdrant"]["healthcheck"]["test"])
    ]
    assert run_check(argv).returncode == 0
    handler.status = 503
    assert run_check(argv).returncode != 0
    argv_closed = [part.replace(str(port), str(free_port())) for part in argv]
    assert run_check(argv_closed).returncode != 0


@pytest.fixture(scope="module")
def services() -> None:
    """This machine's PostgreSQL and Redis (skipped without them, a failure under CI=true)."""
    try:
        anyio.run(_pg, "SELECT 1")
    except Exception as exc:  # refused, auth, timeout: all mean "no PostgreSQL here"
        require(False, f"PostgreSQL is not reachable at {PG_ADMIN_URL}: {exc}")
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1, socket_timeout=1).ping()
    except (redis.RedisError, OSError) as exc:
        require(False, f"Redis is not reachable at {REDIS_URL}: {exc}")


def test_postgres_and_redis_health_checks_pass_on_real_servers(
    resolved: dict[str, Any], services: None
) -> None:
    for name, tool in (("postgres", "pg_isready"), ("redis", "redis-cli")):
        require(shutil.which(tool) is not None, f"{tool} is not installed")
        result = run_check(health_argv(resolved["services"][name]["healthcheck"]["test"]))
        assert result.returncode == 0, f"{name}: {result.stdout}{result.stderr}"


# --- the gateway, run with the stack's environment ---------------------------------------------------


async def _pg(statement: str, database: str | None = None) -> list[Any]:
    import asyncpg

    url = make_url(PG_ADMIN_URL)
    if database is not None:
        url = url.set(database=database)
    connection = await asyncpg.connect(url.render_as_string(hide_password=False), timeout=5)
    try:
        return list(await connection.fetch(statement))
    finally:
        await connection.close()


@dataclass
class StackGateway:
    base: str
    env: dict[str, str]
    database: str
    log: Path
    process: subprocess.Popen[bytes]

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


def gateway_env(resolved: dict[str, Any], data_dir: Path, database: str, port: int) -> dict[str, str]:
    """What the container's process sees (image ENV, then the compose service's environment),
    moved onto this machine: service host names become loopback, the database a fresh one, the
    container paths local ones, and QDRANT_URL goes (no Qdrant server runs here)."""
    env = {**image_env(), **{k: str(v) for k, v in resolved["services"]["gateway"]["environment"].items()}}
    env["PATH"] = f"{Path(PYTHON).parent}:{os.environ['PATH']}"
    env["HOME"] = os.environ["HOME"]
    if "XDG_CACHE_HOME" in os.environ:
        env["XDG_CACHE_HOME"] = os.environ["XDG_CACHE_HOME"]
    env["TOOLGATE_DATA_DIR"] = str(data_dir)
    env.pop("TOOLGATE_EMBEDDING_CACHE_DIR")  # the image's baked cache; here the user's default cache
    env.pop("QDRANT_URL")
    env["TOOLGATE_PORT"] = str(port)
    admin = make_url(PG_ADMIN_URL)
    database_url = make_url(env["DATABASE_URL"])
    assert database_url.host == "postgres"
    # Trust auth here: the stack's role does not exist, its password is carried but unused.
    env["DATABASE_URL"] = database_url.set(
        host=admin.host, port=admin.port, username=admin.username, database=database
    ).render_as_string(hide_password=False)
    redis_url = httpx.URL(env["REDIS_URL"])
    assert redis_url.host == "redis"
    local_redis = httpx.URL(REDIS_URL)
    env["REDIS_URL"] = str(redis_url.copy_with(host=local_redis.host, port=local_redis.port))
    return env


def _wait_ready(gateway: StackGateway, timeout: float = 120.0) -> None:
    # Bounded: a first start on a fresh machine exports the ONNX model (~25 s) before serving.
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=gateway.base, timeout=5) as http:
        while time.monotonic() < deadline:
            if gateway.process.poll() is not None:
                pytest.fail(f"the gateway exited ({gateway.process.returncode}):\n{gateway.log_tail()}")
            try:
                if http.get("/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
    pytest.fail(f"the gateway was not ready within {timeout:.0f} s:\n{gateway.log_tail()}")


@pytest.fixture(scope="module")
def stack_gateway(
    resolved: dict[str, Any], services: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[StackGateway]:
    folder = tmp_path_factory.mktemp("stack-gateway")
    database = f"toolgate_compose_{uuid.uuid4().hex[:12]}"
    anyio.run(_pg, f'CREATE DATABASE "{database}"')
    port = free_port()
    env = gateway_env(resolved, folder / "data", database, port)
    # The image's CMD, with this checkout's console script for `toolgate`.
    command = next(json.loads(rest) for keyword, rest in runtime_stage() if keyword == "CMD")
    command[0] = TOOLGATE if command[0] == "toolgate" else command[0]
    log = folder / "gateway.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(command, cwd=folder, env=env, stdout=sink, stderr=subprocess.STDOUT)
    gateway = StackGateway(f"http://127.0.0.1:{port}", env, database, log, process)
    try:
        _wait_ready(gateway)
        yield gateway
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        anyio.run(_pg, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def test_baked_export_command_yields_the_onnx_embedder(tmp_path: Path) -> None:
    """The Dockerfile's bake step, run here with the image's environment: it must pick the ONNX
    export (in the image it then finds it in the cache at every start, without torch)."""
    bake = next(rest for keyword, rest in runtime_stage() if keyword == "RUN" and "build_embedder" in rest)
    env = {**image_env(), "PATH": f"{Path(PYTHON).parent}:{os.environ['PATH']}", "HOME": os.environ["HOME"]}
    env.pop("TOOLGATE_EMBEDDING_CACHE_DIR")
    env["TOOLGATE_DATA_DIR"] = str(tmp_path)
    if "XDG_CACHE_HOME" in os.environ:
        env["XDG_CACHE_HOME"] = os.environ["XDG_CACHE_HOME"]
    result = subprocess.run(
        ["sh", "-c", bake], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "/onnx-int8" in result.stdout


def test_gateway_serves_with_the_compose_environment(
    stack_gateway: StackGateway, resolved: dict[str, Any]
) -> None:
    with httpx.Client(base_url=stack_gateway.base, timeout=10) as http:
        assert http.get("/healthz").json() == {"status": "ok"}
        ready = http.get("/readyz").json()
        assert ready["database"] == "ok", ready
    # Migrations ran on start, in the stack's PostgreSQL database.
    from migrations.runner import current_head

    rows = anyio.run(_pg, "SELECT version_num FROM alembic_version", stack_gateway.database)
    assert [row["version_num"] for row in rows] == [current_head()]
    # The image's and the compose file's health checks, run against this process.
    compose_check = resolved["services"]["gateway"]["healthcheck"]["test"]
    image_check = next(rest for keyword, rest in runtime_stage() if keyword == "HEALTHCHECK").split(
        " CMD ", 1
    )[1]
    for argv in (health_argv(compose_check), ["sh", "-c", image_check]):
        result = run_check(argv, stack_gateway.env)
        assert result.returncode == 0, f"{argv}: {result.stderr}"


@pytest.mark.e2e
@pytest.mark.anyio
async def test_mcp_client_through_the_stack_gateway(stack_gateway: StackGateway) -> None:
    admin = {"Authorization": f"Bearer {STACK_ADMIN_KEY}"}
    async with httpx.AsyncClient(base_url=stack_gateway.base, timeout=60) as anonymous:
        refused = await anonymous.get("/admin/servers")
        assert refused.status_code == 401  # auth is on in the stack
    async with httpx.AsyncClient(base_url=stack_gateway.base, timeout=60, headers=admin) as http:
        response = await http.post(
            "/admin/servers",
            json={
                "name": "time",
                "command": console_script("mcp-server-time"),
                "args": ["--local-timezone", "UTC"],
            },
        )
        assert response.status_code == 201, response.text
        assert response.json()["status"] == "ok", response.json()["last_error"]
        # Other containers call the gateway by its service name: that Host must be accepted.
        initialize = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-11-25",
                "capabilities": {},
                "clientInfo": {"name": "compose-test", "version": "0"},
            },
        }
        peer = await http.post(
            "/mcp/",
            json=initialize,
            headers={"Host": "gateway:8080", "Accept": "application/json, text/event-stream"},
        )
        assert peer.status_code == 200, peer.text

    conversation = None
    try:
        async with (
            httpx2.AsyncClient(headers=admin, timeout=httpx2.Timeout(30.0, read=300.0)) as authed,
            Client(
                streamable_http_client(f"{stack_gateway.base}/mcp", http_client=authed), mode="legacy"
            ) as client,
        ):  # initialize handshake
            assert client.server_info is not None
            assert client.server_info.name == "toolgate"
            assert [tool.name for tool in (await client.list_tools()).tools] == META_TOOLS
            found = await client.call_tool("find_tools", {"query": "what time is it in Tokyo", "limit": 3})
            assert not found.is_error, found.content
            assert found.structured_content is not None
            conversation = found.structured_content["conversation"]
            assert "time__get_current_time" in [card["name"] for card in found.structured_content["tools"]]
            now = await client.call_tool(
                "call_tool",
                {
                    "name": "time__get_current_time",
                    "arguments": {"timezone": "Asia/Tokyo"},
                    "conversation": conversation,
                },
            )
            assert not now.is_error, now.content
            assert now.structured_content is not None
            assert now.structured_content["timezone"] == "Asia/Tokyo"
        # The registry is in PostgreSQL and the working set in Redis, not in the process.
        rows = await _pg("SELECT name FROM servers", stack_gateway.database)
        assert [row["name"] for row in rows] == ["time"]
        store = redis.asyncio.Redis.from_url(stack_gateway.env["REDIS_URL"])
        try:
            assert await store.exists(f"toolgate:ws:{conversation}") == 1
        finally:
            await store.aclose()
    finally:
        if conversation is not None:
            async with httpx.AsyncClient(base_url=stack_gateway.base, timeout=10, headers=admin) as http:
                await http.delete(f"/admin/conversations/{conversation}")
