# The metatide image: the `metatide` command with the operator extra (kopf, kubernetes client).
# One image serves the operator Deployment and every phase Job (plan, columns, finalize).
#
#   docker build -t metatide:dev .
#   docker run --rm metatide:dev --help
#
# Runs as the non-root user 10001 and works with readOnlyRootFilesystem: true, provided /tmp is
# writable (an emptyDir on Kubernetes, `--tmpfs /tmp` with docker). TMPDIR and HOME point there,
# and so does the default DuckDB spill folder (spec.duckdb.tempDirectory: /tmp/metatide/duckdb).
#
# Build with BuildKit (docker 23+ does by default) or podman/buildah: the RUN steps mount a
# download cache and an optional secret. Behind a TLS-intercepting proxy, hand the build your
# CA bundle as the secret `ca-bundle`; it is mounted only while pip and uv download, so no
# layer of the image holds it:
#
#   docker build --secret id=ca-bundle,src=/etc/ssl/certs/ca-certificates.crt -t metatide:dev .
#
# PYTHON_IMAGE may name another CPython 3.11 image of the same shape (interpreter at
# /usr/local/bin/python3.11, pip, groupadd/useradd); e2e/cluster image builds one from Debian
# packages for machines that cannot pull from a registry.

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS deps
# Bytecode is compiled at build time (the runtime filesystem is read-only); the venv lives where
# the runtime image expects it, using the base image's interpreter (same path in both stages).
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PYTHON=/usr/local/bin/python3.11 \
    UV_PROJECT_ENVIRONMENT=/opt/venv \
    UV_CACHE_DIR=/var/cache/uv
RUN --mount=type=secret,id=ca-bundle,target=/run/secrets/ca-bundle \
    if [ -s /run/secrets/ca-bundle ]; then export PIP_CERT=/run/secrets/ca-bundle; fi \
    && pip install --no-cache-dir --disable-pip-version-check uv==0.13.9
WORKDIR /src
# Dependencies first, from the lock file alone: this layer (the big one) is rebuilt only when
# pyproject.toml or uv.lock change, and the final image takes it as one unchanged layer.
COPY pyproject.toml uv.lock ./
RUN --mount=type=secret,id=ca-bundle,target=/run/secrets/ca-bundle \
    --mount=type=cache,target=/var/cache/uv \
    if [ -s /run/secrets/ca-bundle ]; then export SSL_CERT_FILE=/run/secrets/ca-bundle; fi \
    && uv sync --frozen --no-dev --extra operator --no-install-project

FROM deps AS project
# Then the project itself, as a regular (non-editable) install: src/metatide links to the
# top-level extractor/ and operator/ folders, so the whole tree is the build context. Only its
# own files are compiled (compiling the whole venv again would rewrite every dependency's
# bytecode) and copied to /project, a tree that mirrors the venv; the build fails if the
# install wrote anything else, which the final image would otherwise miss.
COPY . .
ARG SITE=/opt/venv/lib/python3.11/site-packages
RUN --mount=type=secret,id=ca-bundle,target=/run/secrets/ca-bundle \
    --mount=type=cache,target=/var/cache/uv \
    if [ -s /run/secrets/ca-bundle ]; then export SSL_CERT_FILE=/run/secrets/ca-bundle; fi \
    && UV_COMPILE_BYTECODE=0 uv sync --frozen --no-dev --extra operator --no-editable \
    && ! cut -d, -f1 "$SITE"/metatide-*.dist-info/RECORD \
        | grep -v -e '^metatide/' -e '^metatide-[^/]*\.dist-info/' -e '^\.\./\.\./\.\./bin/metatide$' \
    && /opt/venv/bin/python -P -m compileall -q -j 0 "$SITE/metatide" \
    && mkdir -p "/project/opt/venv/bin" "/project$SITE" \
    && cp -a /opt/venv/bin/metatide /project/opt/venv/bin/ \
    && cp -a "$SITE/metatide" "$SITE"/metatide-*.dist-info "/project$SITE/" \
    && /opt/venv/bin/metatide --help >/dev/null

FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 metatide \
    && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home \
        --shell /usr/sbin/nologin metatide
COPY --from=deps /opt/venv /opt/venv
COPY --from=project /project/ /
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
