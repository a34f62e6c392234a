#!/usr/bin/env bash
# CI only: build, from Debian bookworm packages, stand-ins for the base images that no
# registry can give us here. Users pull the official images; nothing here changes what
# the Dockerfiles mean.
#
#   python:3.11-slim               Debian's Python 3.11 in a virtualenv on PATH (python, pip),
#                                  the host's CA bundle and PIP_CERT, so `pip install` in a
#                                  `docker build --network host` reaches the package index
#   neuroscan-ci/postgres:bookworm PostgreSQL 15 with an entrypoint that honours the official
#                                  image's POSTGRES_USER / POSTGRES_PASSWORD / POSTGRES_DB
#   neuroscan-ci/redis:bookworm    redis-server (same root filesystem, WORKDIR /data)
#
# An image that already exists is kept (delete it to rebuild); FORCE=1 rebuilds all.
set -euo pipefail

CA_BUNDLE=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
PY_IMAGE=python:3.11-slim
PG_IMAGE=neuroscan-ci/postgres:bookworm
REDIS_IMAGE=neuroscan-ci/redis:bookworm
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

have_image() { [ "${FORCE:-0}" != 1 ] && docker image inspect "$1" >/dev/null 2>&1; }
log() { printf '[base-images %(%H:%M:%S)T] %s\n' -1 "$*"; }

build_python() {
  # A virtualenv at /usr/local, as the official image has its Python there: python, pip and
  # console scripts land in /usr/local/bin, already on PATH, and pip may install (PEP 668's
  # marker applies to the system interpreter only).
  mmdebstrap --variant=minbase --quiet \
    --include=python3,python3-venv,ca-certificates,passwd,hostname \
    --customize-hook='chroot "$1" python3 -m venv /usr/local' \
    --customize-hook="upload $CA_BUNDLE /etc/ssl/certs/ca-certificates.crt" \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
    bookworm "$work/python.tar"
  docker import \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
    --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
    --change 'CMD ["python3"]' \
    "$work/python.tar" "$PY_IMAGE" >/dev/null
  rm -f "$work/python.tar"
}

build_services() {
  cat >"$work/entrypoint.sh" <<'SH'
#!/bin/sh
# The official postgres image's contract, enough for compose: initialise PGDATA once with
# POSTGRES_USER / POSTGRES_PASSWORD / POSTGRES_DB, then run postgres as user postgres.
set -eu
if [ "${1:-}" = postgres ]; then
  shift
  : "${PGDATA:=/var/lib/postgresql/data}" "${POSTGRES_USER:=postgres}" "${POSTGRES_DB:=$POSTGRES_USER}"
  bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
  mkdir -p "$PGDATA" /var/run/postgresql
  chown -R postgres:postgres "$PGDATA" /var/run/postgresql
  chmod 700 "$PGDATA"
  if [ ! -s "$PGDATA/PG_VERSION" ]; then
    pw=$(mktemp); printf '%s\n' "${POSTGRES_PASSWORD:?}" >"$pw"; chown postgres "$pw"
    runuser -u postgres -- "$bin/initdb" -D "$PGDATA" -U "$POSTGRES_USER" --pwfile="$pw" \
      --auth-local=trust --auth-host=scram-sha-256 --encoding=UTF8 >/dev/null
    rm -f "$pw"
    echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
    runuser -u postgres -- "$bin/pg_ctl" -D "$PGDATA" -o "-c listen_addresses=''" -w start >/dev/null
    if [ "$POSTGRES_DB" != postgres ]; then
      runuser -u postgres -- "$bin/createdb" -U "$POSTGRES_USER" "$POSTGRES_DB"
    fi
    runuser -u postgres -- "$bin/pg_ctl" -D "$PGDATA" -m fast -w stop >/dev/null
  fi
  exec runuser -u postgres -- "$bin/postgres" -D "$PGDATA" "$@"
fi
exec "$@"
SH
  chmod +x "$work/entrypoint.sh"
  # Debian's postgresql package creates and starts a cluster in its postinst when it can;
  # policy-rc.d stops the start, and the hook drops the cluster: PGDATA is made at run time.
  mmdebstrap --variant=minbase --quiet \
    --include=postgresql,redis-server,redis-tools \
    --customize-hook='chroot "$1" sh -c "pg_dropcluster --stop \$(ls /etc/postgresql) main || true"' \
    --customize-hook="upload $work/entrypoint.sh /usr/local/bin/docker-entrypoint.sh" \
    --customize-hook='chmod 755 "$1"/usr/local/bin/docker-entrypoint.sh' \
    --customize-hook='mkdir -p "$1"/data' \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
    bookworm "$work/services.tar"
  docker import \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]' \
    --change 'WORKDIR /data' \
    --change 'CMD ["postgres"]' \
    "$work/services.tar" "$PG_IMAGE" >/dev/null
  docker tag "$PG_IMAGE" "$REDIS_IMAGE"
  rm -f "$work/services.tar"
}

command -v mmdebstrap >/dev/null || {
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mmdebstrap >/dev/null
}

pids=()
if have_image "$PY_IMAGE"; then log "$PY_IMAGE: cached"
else log "$PY_IMAGE: building"; build_python & pids+=($!); fi
if have_image "$PG_IMAGE" && have_image "$REDIS_IMAGE"; then log "$PG_IMAGE, $REDIS_IMAGE: cached"
else log "$PG_IMAGE, $REDIS_IMAGE: building"; build_services & pids+=($!); fi
rc=0
for pid in "${pids[@]}"; do wait "$pid" || rc=1; done
[ "$rc" -eq 0 ] || { log "failed"; exit 1; }
docker run --rm "$PY_IMAGE" sh -c 'python --version && pip --version && command -v useradd hostname >/dev/null'
log "done"
