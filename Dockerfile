# syntax=docker/dockerfile:1
# The metatide image: the `metatide` command with the operator extra (kopf, kubernetes client).
# One image serves the operator Deployment and every phase Job (plan, columns, finalize).
#
#   docker build -t metatide:dev .
#   docker run --rm metatide:dev --help
#
# Runs as the non-root user 10001 and works with readOnlyRootFilesystem: true, provided /tmp is
# writable (an emptyDir on Kubernetes, `--tmpfs /tmp` with docker). TMPDIR and HOME point there,
# and so does the default DuckDB spill folder (spec.duckdb.tempDirectory: /tmp/metatide/duckdb).

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS builder
RUN pip install --no-cache-dir uv==0.13.9
# Bytecode is compiled at build time (the runtime filesystem is read-only); the venv lives where
# the runtime image expects it, using the base image's interpreter (same path in both stages).
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PYTHON=/usr/local/bin/python3.11 \
    UV_PROJECT_ENVIRONMENT=/opt/venv
WORKDIR /src
# Dependencies first, from the lock file alone, so a source change reuses this layer.
COPY pyproject.toml uv.lock ./
RUN uv sync --frozen --no-dev --extra operator --no-install-project
# Then the project itself, as a regular (non-editable) install: src/metatide links to the
# top-level extractor/ and operator/ folders, so the whole tree is the build context.
COPY . .
RUN uv sync --frozen --no-dev --extra operator --no-editable \
    && /opt/venv/bin/metatide --help >/dev/null

FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 metatide \
    && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home \
        --shell /usr/sbin/nologin metatide
COPY --from=builder /opt/venv /opt/venv
# PYTHONSAFEPATH: never put the working directory on sys.path (a folder named `operator` there
# would shadow the standard library).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONSAFEPATH=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TMPDIR=/tmp \
    HOME=/tmp
WORKDIR /tmp
USER 10001:10001
ENTRYPOINT ["metatide"]
CMD ["--help"]
