# toolgate gateway image: a virtualenv built in one stage, copied into a slim runtime that runs
# as an unprivileged user and starts offline (the embedding model and its ONNX export are baked
# in). Plain Dockerfile syntax: builds with BuildKit and with the legacy builder alike.
# x86_64 only: the CPU build of torch is pinned by its +cpu local version.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: resolve and install everything into /opt/toolgate --------------------------------
FROM ${PYTHON_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_CONSTRAINT=/tmp/constraints.txt \
    PATH=/opt/toolgate/bin:$PATH

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.13.0+cpu
# qdrant-client supports servers at most one minor version away: keep it with the
# qdrant/qdrant image of docker-compose.yml (tests/test_compose.py holds the two together).
ARG QDRANT_CLIENT_VERSION=1.20.0

# The constraints keep every later resolution on the CPU torch: PyPI's Linux torch drags in
# several GB of CUDA libraries.
RUN printf 'torch==%s\nqdrant-client==%s\n' "$TORCH_VERSION" "$QDRANT_CLIENT_VERSION" > /tmp/constraints.txt \
 && python -m venv /opt/toolgate \
 && pip install --extra-index-url "$TORCH_INDEX" "torch==$TORCH_VERSION"

# Dependencies before sources, so a code change does not reinstall them.
WORKDIR /src
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
 && pip install --extra-index-url "$TORCH_INDEX" -r /tmp/requirements.txt

COPY gateway ./gateway
COPY registry ./registry
COPY retrieval ./retrieval
COPY migrations ./migrations
# The import check runs outside /src, so it sees the installed package, not the sources: a
# subpackage missing from pyproject's package list fails here instead of at container start.
RUN pip install --no-deps . \
 && pip check \
 && cd / && python -c "import gateway.app, gateway.cli, migrations.runner"

# --- runtime ----------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

ARG UID=10001
ENV PATH=/opt/toolgate/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    TOOLGATE_HOST=0.0.0.0 \
    TOOLGATE_PORT=8080 \
    TOOLGATE_DATA_DIR=/var/lib/toolgate \
    TOOLGATE_EMBEDDING_CACHE_DIR=/opt/toolgate-cache/embedders

RUN groupadd --system --gid "$UID" toolgate \
 && useradd --system --uid "$UID" --gid toolgate --home-dir /home/toolgate --create-home \
        --shell /usr/sbin/nologin toolgate \
 && mkdir -p /var/lib/toolgate /opt/toolgate-cache/embedders \
 && chown -R toolgate:toolgate /var/lib/toolgate /opt/toolgate-cache

COPY --from=build /opt/toolgate /opt/toolgate

USER ${UID}:${UID}
WORKDIR /var/lib/toolgate

# Bake the ONNX export of the bundled model into the cache, as the runtime user and through the
# same settings code the server uses: the export is keyed by the model files' path and mtimes,
# which this layer shares with every container. The build fails if the export is not taken.
RUN python -c "from gateway.settings import load_settings; \
from gateway.retrieval_setup import build_embedder; \
embedder = build_embedder(load_settings()); \
print('baked embedder:', embedder.model_id); \
raise SystemExit(0 if '/onnx-' in embedder.model_id else 'the ONNX export was not used')"

EXPOSE 8080

# /readyz: the database answers and the tool index is loaded (the start-up window covers
# migrations and the first catalog load).
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD python -c "import urllib.request as r; r.urlopen('http://127.0.0.1:${TOOLGATE_PORT:-8080}/readyz', timeout=4)"

CMD ["toolgate", "serve"]
