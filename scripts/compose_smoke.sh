#!/usr/bin/env bash
# `make test-compose`: the full stack from the repository's Dockerfiles and docker-compose.yml
# really starts and works. On this kind of machine (no image registry, loopback only):
#   1. Docker: installs Debian's docker.io + docker-compose if missing; starts dockerd
#      (--bridge=none --iptables=false) if none answers, and stops it again at the end.
#   2. Base images built locally from Debian packages (scripts/build_base_images.sh), then both
#      app images built from Dockerfile.api and Dockerfile.worker with --network host.
#   3. docker-compose.yml + docker-compose.ci.yml (host network, loopback ports) up; waits
#      (bounded) until every service is healthy and migrate has exited 0.
#   4. A key made inside the api container (`neuroscan keys create`); a 20-scan batch through
#      the published port; a second worker; the worker holding the batch killed mid-batch;
#      every scan must succeed (the survivors' reconciler takes the scans back); Flower must
#      list both workers; a PDF report (it needs the model card in the API image).
# Always: `compose down -v` (containers, network, volumes) on exit, logs tail on failure.
# App images stay as the build cache for the next run (CLEAN_IMAGES=1 removes them).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

PY=${PY:-$ROOT/.venv/bin/python}
# A project of its own per run: another run on the same Docker daemon (a concurrent CI job, or
# one cut short whose containers linger) is neither disturbed by this one nor in its way.
PROJECT=${CI_COMPOSE_PROJECT:-neuroscan-ci-$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')}
export NEUROSCAN_TAG=ci
export DOCKER_BUILDKIT=0  # the classic builder: --network host without entitlements

T0=$(date +%s)
WORK=$(mktemp -d /tmp/compose-smoke.XXXXXX)
PASSED=0
passed() { PASSED=$((PASSED + 1)); log "ok: $*"; }
log() { printf '[compose-smoke %4ss] %s\n' "$(( $(date +%s) - T0 ))" "$*"; }
fail() { log "FAIL: $*"; exit 1; }
step() { STEP_T=$(date +%s); log "$*"; }
took() { log "  ... $1 took $(( $(date +%s) - STEP_T ))s"; echo "$1 $(( $(date +%s) - STEP_T ))" >>"$WORK/timings"; }

# Loopback ports for PostgreSQL, Redis, the API and Flower: the first free one of a range each
# (tests.support.stack.free_port), clear of the test suite's ranges and below the kernel's
# ephemeral range (32768-60999), where fixed ports can be held by anything on the machine.
# Ports given in the environment are used as given.
read -r pg redis api flower < <("$PY" -c '
from tests.support.stack import free_port
print(*(free_port(low, low + 999) for low in (21000, 22000, 23000, 24000)))') \
  || { rm -rf "$WORK"; echo "compose: 0 passed, 1 failed"; exit 1; }
export CI_PG_PORT=${CI_PG_PORT:-$pg} CI_REDIS_PORT=${CI_REDIS_PORT:-$redis}
export CI_API_PORT=${CI_API_PORT:-$api} CI_FLOWER_PORT=${CI_FLOWER_PORT:-$flower}
API=http://127.0.0.1:$CI_API_PORT
FLOWER=http://127.0.0.1:$CI_FLOWER_PORT
N_SCANS=20
log "project $PROJECT; loopback ports: postgres $CI_PG_PORT, redis $CI_REDIS_PORT, api $CI_API_PORT, flower $CI_FLOWER_PORT"

# --- 1. Docker --------------------------------------------------------------------------
STARTED_DOCKERD=""
ensure_docker() {
  local missing=()
  command -v dockerd >/dev/null || missing+=(docker.io)
  { docker compose version >/dev/null 2>&1 || command -v docker-compose >/dev/null; } || missing+=(docker-compose)
  command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
  # The Colin27 head the test scans are drawn from (make test installs it too).
  dpkg -s mricron-data >/dev/null 2>&1 || missing+=(mricron-data)
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >"$WORK/apt.log" 2>&1 \
      || { tail -20 "$WORK/apt.log"; fail "apt-get install ${missing[*]}"; }
  fi
  if ! timeout 10 docker info >/dev/null 2>&1; then
    log "starting dockerd (no bridge, no iptables: containers use the host network)"
    # Debian's package may ship containerd separately; dockerd starts its own when none runs.
    dockerd --bridge=none --iptables=false --ip-masq=false >"$WORK/dockerd.log" 2>&1 &
    STARTED_DOCKERD=$!
    for _ in $(seq 1 60); do timeout 5 docker info >/dev/null 2>&1 && break; sleep 1; done
    timeout 10 docker info >/dev/null 2>&1 || { tail -30 "$WORK/dockerd.log"; fail "dockerd did not start in 60 s"; }
  fi
}

# Compose v2 when the plugin is there, else Debian bookworm's docker-compose 1.29. Both read
# docker-compose.yml as shipped, less two keys: the top-level `name:` (unknown to v1; the
# project name is given here) and `ports:` (nothing to publish on the host network, where
# each service listens on its loopback port itself; Docker refuses both together).
compose_cmd() {
  if docker compose version >/dev/null 2>&1; then COMPOSE=(docker compose); else COMPOSE=(docker-compose); fi
  "$PY" - docker-compose.yml "$WORK/docker-compose.yml" <<'PY' || fail "reading docker-compose.yml"
import sys
import yaml
spec = yaml.safe_load(open(sys.argv[1]))
spec.pop("name", None)
spec = {k: v for k, v in spec.items() if not k.startswith("x-")}  # anchors already merged
for service in spec["services"].values():
    service.pop("ports", None)
yaml.safe_dump(spec, open(sys.argv[2], "w"), sort_keys=False)
PY
  COMPOSE+=(--project-directory "$ROOT" -p "$PROJECT" --env-file "$WORK/ci.env"
            -f "$WORK/docker-compose.yml" -f "$ROOT/docker-compose.ci.yml")
}
dc() { "${COMPOSE[@]}" "$@"; }
running_workers() {
  docker ps -q --filter "label=com.docker.compose.project=$PROJECT" \
    --filter "label=com.docker.compose.service=worker"
}

cleanup() {
  local rc=$?
  set +e
  # Builds still running (not dockerd: compose down needs it).
  for job in $(jobs -p); do [ "$job" = "$STARTED_DOCKERD" ] || kill "$job" 2>/dev/null; done
  if [ -n "${COMPOSE:-}" ]; then
    if [ "$rc" -ne 0 ]; then
      log "--- compose ps ---"; dc ps
      log "--- compose logs (last 60 lines per service) ---"; dc logs --no-color --tail=60
    fi
    log "compose down -v"
    dc down -v --remove-orphans --timeout 10 >"$WORK/down.log" 2>&1 || cat "$WORK/down.log"
    # Belt and braces: nothing of this project may outlive the run.
    left=$(docker ps -aq --filter "label=com.docker.compose.project=$PROJECT")
    [ -z "$left" ] || docker rm -f $left >/dev/null
    if [ "${CLEAN_IMAGES:-0}" = 1 ]; then docker rmi neuroscan-api:ci neuroscan-worker:ci >/dev/null 2>&1; fi
    docker image prune -f >/dev/null 2>&1
  fi
  if [ -n "$STARTED_DOCKERD" ]; then kill "$STARTED_DOCKERD"; wait "$STARTED_DOCKERD" 2>/dev/null; fi
  [ -f "$WORK/timings" ] && log "timings (s): $(tr '\n' ' ' <"$WORK/timings")"
  log "$([ "$rc" -eq 0 ] && echo PASSED || echo "FAILED (rc=$rc)") in $(( $(date +%s) - T0 ))s"
  # The plain closing line CI reads: the checks below, each one counted once it held.
  echo "compose: $PASSED passed, $([ "$rc" -eq 0 ] && echo 0 || echo 1) failed"
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Bounded wait until every container of the given services is healthy (or, for one-shot
# services, exited 0); fails at once when a container exits non-zero.
wait_healthy() {
  local deadline=$(( $(date +%s) + $1 )); shift
  while :; do
    local pending=0 ids
    for svc in "$@"; do
      ids=$(dc ps -q "$svc")
      [ -n "$ids" ] || { pending=1; continue; }
      for id in $ids; do
        read -r status health code < <(docker inspect -f '{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}} {{.State.ExitCode}}' "$id")
        case "$status/$health" in
          running/healthy) ;;
          exited/*) [ "$code" = 0 ] && [ "$svc" = migrate ] || fail "$svc exited with code $code" ;;
          *) pending=1 ;;
        esac
      done
    done
    [ "$pending" -eq 0 ] && return 0
    [ "$(date +%s)" -lt "$deadline" ] || fail "services not healthy in time: $*"
    sleep 2
  done
}

json() { "$PY" -c "import json, sys; d = json.load(sys.stdin); print($1)"; }
# Flower asks the workers with a 1 s timeout, which a busy CPU can miss: ask again (60 s).
flower_lists() {
  local deadline=$(( $(date +%s) + 60 )) node missing
  while :; do
    flower_workers=$(curl -fsS -u "admin:$FLOWER_PASSWORD" "$FLOWER/api/workers?refresh=1" | json '" ".join(sorted(d))') || flower_workers=""
    missing=""
    for node in "$@"; do [[ " $flower_workers " == *" $node "* ]] || missing+=" $node"; done
    [ -z "$missing" ] && return 0
    [ "$(date +%s)" -lt "$deadline" ] || fail "Flower does not list$missing (it lists: $flower_workers)"
    sleep 3
  done
}
batch_counts() { curl -fsS -H "Authorization: Bearer $KEY" "$API/v1/batches/$1" | json 'd["counts"]'; }

ensure_docker
step "docker: $(docker version -f '{{.Server.Version}}') ($(docker info -f '{{.Driver}}'))"

# Settings that reach the containers only through env_file (as an operator's .env does): the
# short lease and reconciler periods make the takeover visible in seconds, not the defaults'
# 30-45 s; WORKER_BATCH_SIZE=20 puts the whole batch in one task, on one worker.
cat >"$WORK/ci.env" <<ENV
SECRET_KEY=$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')
FLOWER_PASSWORD=$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')
POSTGRES_PASSWORD=$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')
NEUROSCAN_ENV_FILE=$WORK/ci.env
WORKER_BATCH_SIZE=$N_SCANS
SCAN_LEASE_S=8
RECONCILE_INTERVAL_S=2
RECONCILE_AGE_S=20
LOG_LEVEL=INFO
ENV
set -a; . "$WORK/ci.env"; set +a
compose_cmd
dc down -v --remove-orphans --timeout 5 >/dev/null 2>&1 || true  # the same project given twice

# --- 2. Images ----------------------------------------------------------------------------
step "base images (stand-ins built from Debian packages)"
scripts/build_base_images.sh || fail "base images"
took base_images
# Both at once: most of a cold build is downloading and unpacking wheels, not CPU.
step "docker build Dockerfile.api -> neuroscan-api:ci, Dockerfile.worker -> neuroscan-worker:ci"
declare -A builds
for kind in api worker; do
  docker build --network host -f "Dockerfile.$kind" -t "neuroscan-$kind:ci" . >"$WORK/build-$kind.log" 2>&1 &
  builds[$kind]=$!
done
for kind in api worker; do
  wait "${builds[$kind]}" || { tail -40 "$WORK/build-$kind.log"; fail "building Dockerfile.$kind"; }
done
took build_images
log "image sizes: $(docker image ls --format '{{.Repository}}:{{.Tag}}={{.Size}}' | grep -E '^neuroscan-(api|worker):ci' | tr '\n' ' ')"

# Test images: synthetic brain slices, made here by the research generator (one per seed).
"$PY" - "$WORK/scans" "$N_SCANS" <<'PY' || fail "making test scans"
import sys
from pathlib import Path
from PIL import Image
from tests.support.images import brain_slice
out, n = Path(sys.argv[1]), int(sys.argv[2])
out.mkdir()
labels = ["glioma", "meningioma", "notumor", "pituitary"]
for i in range(n):
    # 768 px: a realistic clinical matrix, and enough work per scan that a kill lands mid-batch.
    img = Image.fromarray(brain_slice(100 + i, labels[i % 4])).resize((768, 768), Image.LANCZOS)
    img.save(out / f"scan-{i:02d}.png")
PY

# --- 3. Up -----------------------------------------------------------------------------------
step "compose up (postgres, redis, migrate, api, worker, webhooks, flower)"
dc up -d --no-build >"$WORK/up.log" 2>&1 || { cat "$WORK/up.log"; fail "compose up"; }
# Bounds, not expectations: on a quiet 2-core machine this takes about a minute; on one shared
# with a training run the containers get a sliver of the CPU (measured: 290 s).
wait_healthy 600 postgres redis migrate api worker webhooks flower
took compose_up
passed "every service healthy, migrate exited 0"
[ "$(docker inspect -f '{{.State.ExitCode}}' "$(dc ps -q migrate)")" = 0 ] || fail "migrate did not exit 0"
curl -fsS "$API/readyz" >/dev/null || fail "/readyz through the published port"
grep -q 'NeuroScan AI Backend is Running' <<<"$(curl -fsS "$API/")" || fail "GET /"
passed "GET / and /readyz through the published port"
metrics=$(curl -fsS "$API/metrics") || fail "GET /metrics"
grep -q '^http_requests_total{handler="/readyz",method="GET",status="2xx"}' <<<"$metrics" \
  || fail "/metrics does not count the /readyz requests"
passed "/metrics scraped from the api container"
# env_file: a setting present only in the env file reached the worker.
lease=$(dc exec -T worker python -c 'from shared.settings import get_settings; print(get_settings().scan_lease_s)' | tr -d '\r')
[ "$lease" = 8.0 ] || fail "SCAN_LEASE_S from env_file did not reach the worker (got '$lease')"
passed "a setting only in the env file reached the worker"

# Fail fast: a worker whose model does not load exits non-zero before it consumes anything.
docker rm -f "$PROJECT-failfast" >/dev/null 2>&1 || true
set +e
timeout 300 docker run --rm --name "$PROJECT-failfast" --label "com.docker.compose.project=$PROJECT" \
  --network host --env-file "$WORK/ci.env" -e MODEL_NAME=no-such-model \
  -e BROKER_URL="redis://127.0.0.1:$CI_REDIS_PORT/0" neuroscan-worker:ci neuroscan worker >"$WORK/failfast.log" 2>&1
code=$?
set -e
{ [ "$code" -ne 0 ] && [ "$code" -ne 124 ] && grep -q "cannot load the model" "$WORK/failfast.log"; } \
  || { tail -20 "$WORK/failfast.log"; fail "a worker without its model did not exit (code $code)"; }
passed "a worker without its model exits with code $code"

KEY=$(dc exec -T api neuroscan keys create --tenant compose-smoke | tail -1 | tr -d '\r')
[[ "$KEY" == nsk_* ]] || fail "keys create printed no key"
passed "API key made inside the api container (prefix ${KEY:0:8})"

step "scale to two workers"
dc up -d --no-build --no-recreate --scale worker=2 worker >>"$WORK/up.log" 2>&1 || { cat "$WORK/up.log"; fail "scale"; }
wait_healthy 420 worker
took scale_worker
WORKERS=($(running_workers))
[ ${#WORKERS[@]} -eq 2 ] || fail "expected 2 worker containers, got ${#WORKERS[@]}"
NODES=()
for c in "${WORKERS[@]}"; do
  NODES+=("neuroscan-$(docker exec "$c" cat /tmp/worker-id)@$(docker exec "$c" hostname)")
done
log "workers: ${NODES[*]}"

# Flower sees both (its API asks the workers directly with refresh=1).
flower_lists "${NODES[@]}"
passed "two workers healthy, Flower lists both"

# --- 4. A batch, and a worker killed while it holds it --------------------------------------
submit_and_kill() {
  local since files=() f logs
  since=$(date +%s)
  for f in "$WORK"/scans/*.png; do files+=(-F "files=@$f;type=image/png"); done
  BATCH=$(curl -fsS -H "Authorization: Bearer $KEY" "${files[@]}" "$API/v1/batches" | json 'd["id"]') \
    || fail "POST /v1/batches"
  # The batch is one task: wait (bounded) for the worker that received it, then kill it.
  local victim="" deadline=$(( $(date +%s) + 60 ))
  while [ -z "$victim" ]; do
    for c in "${WORKERS[@]}"; do
      # (Captured first: with pipefail, grep -q closing the pipe early would read as a miss.)
      logs=$(docker logs --since "$since" "$c" 2>&1)
      if grep -q 'neuroscan.process_scans\[.*\] received' <<<"$logs"; then victim=$c; break; fi
    done
    [ -n "$victim" ] || { [ "$(date +%s)" -lt "$deadline" ] || fail "no worker received batch $BATCH in 60 s"; sleep 0.2; }
  done
  # ... and has claimed its scans (they carry its lease): the kill then lands mid-batch.
  local now
  while :; do
    now=$(batch_counts "$BATCH")
    echo "$now" | grep -q "'processing': [1-9]" && break
    echo "$now" | grep -q "'queued': 0, 'processing': 0" && break  # done already: too late
    [ "$(date +%s)" -lt "$deadline" ] || break
    sleep 0.2
  done
  docker kill "$victim" >/dev/null
  KILLED_AT=$(date +%s)
  local counts; counts=$(batch_counts "$BATCH")
  log "killed worker ${victim:0:12} holding batch $BATCH; counts then: $counts"
  UNFINISHED=$(echo "$counts" | tr -d "{}' " | tr ',' '\n' | awk -F: '$1=="processing"{s+=$2} END{print s+0}')
}

step "submit $N_SCANS scans, kill the worker that holds them"
for attempt in 1 2 3; do
  submit_and_kill
  [ "$UNFINISHED" -gt 0 ] && break
  log "no scan was processing when the kill landed (attempt $attempt); restoring two workers and retrying"
  dc up -d --no-build --no-recreate --scale worker=2 worker >>"$WORK/up.log" 2>&1
  wait_healthy 420 worker
  WORKERS=($(running_workers))
done
[ "$UNFINISHED" -gt 0 ] || fail "could not kill a worker mid-batch in 3 attempts"

deadline=$(( KILLED_AT + 240 ))
while :; do
  out=$(curl -fsS -H "Authorization: Bearer $KEY" "$API/v1/batches/$BATCH")
  if [ "$(echo "$out" | json 'd["done"]')" = True ]; then break; fi
  [ "$(date +%s)" -lt "$deadline" ] || fail "batch not done 240 s after the kill: $(echo "$out" | json 'd["counts"]')"
  sleep 2
done
took batch_after_kill
echo "$out" | "$PY" -c '
import json, sys
d = json.load(sys.stdin)
bad = [(s["id"], s["state"], s.get("error")) for s in d["scans"] if s["state"] != "succeeded"]
assert d["total"] == int(sys.argv[1]) and not bad, (d["counts"], bad)
print("every scan succeeded:", d["counts"])' "$N_SCANS" || fail "not every scan succeeded"
passed "$UNFINISHED scans were held (processing) by the killed worker; all $N_SCANS succeeded $(( $(date +%s) - KILLED_AT ))s after it"

# The PDF report renders in the API container (and cites the model card it now carries).
scan=$(echo "$out" | json 'd["scans"][0]["id"]')
curl -fsS -H "Authorization: Bearer $KEY" -o "$WORK/report.pdf" "$API/v1/scans/$scan/report.pdf" || fail "report.pdf"
head -c 5 "$WORK/report.pdf" | grep -q '%PDF-' || fail "report.pdf is not a PDF"
dc exec -T api python -c 'from shared.reports.wording import read_model_card; assert read_model_card(), "no model card"' \
  || fail "the API image has no model card"
passed "PDF report renders; the API image has the model card"

# Flower still answers and lists the surviving worker.
survivor=""
for c in $(running_workers); do survivor="neuroscan-$(docker exec "$c" cat /tmp/worker-id)@$(docker exec "$c" hostname)"; done
flower_lists "$survivor"
passed "Flower after the kill lists the survivor: $flower_workers"
step "all checks passed"
