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
# /usr/local/bin/python3.11, pip, groupadd/useradd): `e2e/cluster image` makes one from Debian's
# packages with mmdebstrap, for machines that cannot pull from a registry.
#
# Layers, so a rebuild after a source change takes seconds: the base, the user, the locked
# dependencies (rebuilt only when pyproject.toml or uv.lock change), then the project (~1 MB).

ARG PYTHON_IMAGE=python:3.11-slim
ARG UV_VERSION=0.13.9

# The runtime: the user, then the locked dependencies in /opt/venv (the big layer), rebuilt only
# when pyproject.toml or uv.lock change; they stay in /opt/metatide as a record of what the
# image holds.
FROM ${PYTHON_IMAGE} AS runtime
ARG UV_VERSION
RUN groupadd --system --gid 10001 metatide \
    && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home \
        --shell /usr/sbin/nologin metatide
# Bytecode is compiled at build time (the root filesystem is read-only at run time); the venv
# uses the base image's interpreter. Build arguments, so none of this stays in the image.
ARG UV_COMPILE_BYTECODE=1
ARG UV_LINK_MODE=copy
ARG UV_PYTHON_DOWNLOADS=never
ARG UV_PYTHON=/usr/local/bin/python3.11
ARG UV_PROJECT_ENVIRONMENT=/opt/venv
WORKDIR /opt/metatide
COPY pyproject.toml uv.lock ./
# uv is installed for this step and removed by it, so no layer of the image holds it.
RUN --mount=type=secret,id=ca-bundle,target=/run/secrets/ca-bundle \
    --mount=type=cache,target=/root/.cache \
    if [ -s /run/secrets/ca-bundle ]; then \
        export PIP_CERT=/run/secrets/ca-bundle SSL_CERT_FILE=/run/secrets/ca-bundle; \
    fi \
    && pip install --no-cache-dir --disable-pip-version-check --target /tmp/uv "uv==$UV_VERSION" \
    && /tmp/uv/bin/uv sync --frozen --no-dev --extra operator --no-install-project \
    && rm -rf /tmp/uv

# The project itself, as a regular (non-editable) install: src/metatide links to the top-level
# extractor/ and operator/ folders, so the whole tree is the build context. Only its own files
# are compiled (compiling the whole venv again would rewrite every dependency's bytecode; the
# build arguments above are not inherited here) and copied to /project, a tree that mirrors the
# venv; the build fails if the install wrote anything else, which the final image would miss.
FROM runtime AS project
ARG UV_VERSION
RUN --mount=type=secret,id=ca-bundle,target=/run/secrets/ca-bundle \
    if [ -s /run/secrets/ca-bundle ]; then export PIP_CERT=/run/secrets/ca-bundle; fi \
    && pip install --no-cache-dir --disable-pip-version-check "uv==$UV_VERSION"
ARG UV_LINK_MODE=copy
ARG UV_PYTHON_DOWNLOADS=never
ARG UV_PYTHON=/usr/local/bin/python3.11
ARG UV_PROJECT_ENVIRONMENT=/opt/venv
ARG SITE=/opt/venv/lib/python3.11/site-packages
WORKDIR /src
COPY . .
RUN --mount=type=secret,id=ca-bundle,target=/run/secrets/ca-bundle \
    --mount=type=cache,target=/root/.cache \
    if [ -s /run/secrets/ca-bundle ]; then export SSL_CERT_FILE=/run/secrets/ca-bundle; fi \
    && uv sync --frozen --no-dev --extra operator --no-editable \
    && ! cut -d, -f1 "$SITE"/metatide-*.dist-info/RECORD \
        | grep -v -e '^metatide/' -e '^metatide-[^/]*\.dist-info/' -e '^\.\./\.\./\.\./bin/metatide$' \
    && /opt/venv/bin/python -P -m compileall -q -j 0 "$SITE/metatide" \
    && mkdir -p "/project/opt/venv/bin" "/project$SITE" \
    && cp -a /opt/venv/bin/metatide /project/opt/venv/bin/ \
    && cp -a "$SITE/metatide" "$SITE"/metatide-*.dist-info "/project$SITE/" \
    && /opt/venv/bin/metatide --help >/dev/null

FROM runtime
COPY --from=project /project/ /
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TMPDIR=/tmp \
    HOME=/tmp
WORKDIR /tmp
USER 10001:10001
ENTRYPOINT ["metatide"]
CMD ["--help"]
