# The vectorstore server image: `vectorstore serve`, the same code the repo tests.
#
# Two stages: the builder installs the package and its wheels into a venv; the runtime stage copies only that
# venv, so no compiler, pip cache or source tree ships. The runtime runs as uid/gid 10001 (numeric, so kubelet
# can verify runAsNonRoot) on a read-only root filesystem: everything that wants to write (HOME, caches,
# temp files) points at /tmp, which the Deployment mounts as an emptyDir.
FROM python:3.11.14-slim-bookworm AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY cli ./cli
COPY config ./config
COPY render ./render
COPY vectorstore ./vectorstore
RUN /opt/venv/bin/pip install --no-cache-dir .

FROM python:3.11.14-slim-bookworm

RUN groupadd --system --gid 10001 vectorstore \
    && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home --shell /usr/sbin/nologin vectorstore
COPY --from=builder /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    HOME=/tmp \
    XDG_CACHE_HOME=/tmp/.cache \
    XDG_CONFIG_HOME=/tmp/.config \
    XDG_DATA_HOME=/tmp/.local/share \
    TMPDIR=/tmp \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
EXPOSE 8000
ENTRYPOINT ["vectorstore"]
CMD ["serve", "--spec", "/etc/vectorstore/stack.yaml", "--host", "0.0.0.0"]
