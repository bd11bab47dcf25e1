# kpimargin worker image: `docker build -t kpimargin .`, then `docker run kpimargin` runs
# `kpimargin worker`; any other command works too (`docker run kpimargin topics`).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Every dependency ships manylinux wheels for CPython 3.11: no compiler needed.
COPY pyproject.toml README.md ./
COPY stream ./stream
RUN pip install '.[rocksdb]' \
    && rm -rf build ./*.egg-info \
    && groupadd --system --gid 10001 kpimargin \
    && useradd --system --uid 10001 --gid kpimargin --create-home --home-dir /home/kpimargin kpimargin \
    && mkdir -p /data \
    && chown kpimargin:kpimargin /data

# Local state (rocksdb) lives in /data, writable by the unprivileged user; mount a
# volume there to keep it across container restarts (docker-compose.yml does).
ENV KPIMARGIN_DATA_DIR=/data

USER 10001:10001

ENTRYPOINT ["kpimargin"]
CMD ["worker"]
