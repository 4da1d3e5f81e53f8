# syntax=docker/dockerfile:1
# Runtime image of the time-to-dispatch stages (train_model, serve_model) under Bodywork 3.0.12:
# Python 3.11, the stages' pinned libraries and Bodywork's CLI, no project code (Bodywork clones
# the repository at the deployed commit). See docs/deployment.md, "The stages' runtime image".
#
#   CI:   docker build -t IMAGE:$(python3 image/tag.py) .   (base: the official python:3.11-slim-bookworm)
#   here: image/build.sh  (podman, base: the local Debian bookworm image image/make_base.sh makes)
#
# Optional build secrets, for a host whose pip needs them (image/build.sh passes what the host's pip
# uses; without them pip uses PyPI and the image's own CA certificates):
#   pip_cert       a CA bundle for pip (e.g. a TLS-intercepting egress proxy's CA)
#   pip_index_url  the package index URL (a file holding it; may carry credentials)
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore
# The venv's python links to the base image's interpreter (/usr/local/bin/python3 in the
# official image, /usr/bin/python3 in Debian's), which the final stage has at the same path.
RUN python3 -m venv /opt/venv
COPY requirements_pipe.txt image/requirements_bodywork.txt /tmp/req/
# Everything is pinned, so --no-deps installs exactly the listed set; `pip check` then proves
# the set is complete and consistent (before Bodywork, whose own metadata pins old versions).
# Bodywork 3.0.12 is an sdist only: built with setuptools 66.1.1 (67+ reject its
# python_requires='>=3.7.*') without build isolation and without its (unbuildable) pins; its
# setup.py calls a usage URL over plain http, sent to a closed local port to fail at once.
RUN --mount=type=secret,id=pip_cert,required=false \
    --mount=type=secret,id=pip_index_url,required=false \
    set -eu; \
    if [ -s /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi; \
    if [ -s /run/secrets/pip_index_url ]; then export PIP_INDEX_URL="$(cat /run/secrets/pip_index_url)"; fi; \
    /opt/venv/bin/python -m pip install pip==26.3; \
    /opt/venv/bin/pip install --no-deps \
        -r /tmp/req/requirements_pipe.txt -r /tmp/req/requirements_bodywork.txt wheel==0.45.1; \
    /opt/venv/bin/pip check; \
    http_proxy=http://127.0.0.1:9 /opt/venv/bin/pip install --no-deps --no-build-isolation \
        bodywork==3.0.12; \
    /opt/venv/bin/pip uninstall -y wheel; \
    /opt/venv/bin/python -c 'import bodywork.cli.cli, bodywork.stage_execution'; \
    rm -rf /tmp/req
# The `bodywork` Bodywork's pods run: replaces the console script (see image/bodywork).
COPY image/bodywork /opt/venv/bin/bodywork
COPY image/bodywork_entry.py /opt/bodywork-entry/bodywork_entry.py

FROM ${BASE_IMAGE}
# git: Bodywork clones the project in the pod; tini: PID 1. Neither is in python:*-slim.
# Installed only if missing, so a base that has them needs no package index.
RUN set -eu; \
    if ! command -v git >/dev/null || ! command -v tini >/dev/null; then \
        apt-get update; \
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends git tini; \
        rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/apt/* /var/log/dpkg.log; \
    fi; \
    useradd --uid 10001 --user-group --create-home --home-dir /home/bodywork \
        --shell /usr/sbin/nologin bodywork
COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /opt/bodywork-entry /opt/bodywork-entry
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    HOME=/home/bodywork
# Bodywork clones into ./bodywork_project: the working directory belongs to the stage's user.
WORKDIR /home/bodywork
USER 10001:10001
# Used by `docker run IMAGE CMD`; Bodywork's pods set `command`, which replaces it, and
# image/bodywork then starts tini itself.
ENTRYPOINT ["tini", "--"]
CMD ["bodywork", "--help"]
