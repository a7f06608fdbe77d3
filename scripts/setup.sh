#!/usr/bin/env bash
# Idempotent set-up: venv, Python packages, Kafka and Spark/Delta jars from Maven Central,
# Chromium and PostgreSQL from Debian's packages.
# Each step is skipped when its stamp says it is already done for the current inputs.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
HOME_DIR=${LKLAB_HOME:-$ROOT/.lklab}
JARS=$ROOT/.lklab/jars  # shared by every LKLAB_HOME (tests use temporary homes)
PY=${PYTHON:-python3.11}

say() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }
die() { printf '[setup] error: %s\n' "$*" >&2; exit 1; }

command -v java >/dev/null || die "java not found; install a JDK 17+ (apt-get install openjdk-17-jdk-headless)"
JAVA_MAJOR=$(java -version 2>&1 | awk -F'"' '/version/ {split($2, v, "."); print v[1]}')
[ "${JAVA_MAJOR:-0}" -ge 17 ] || die "java 17+ required, found ${JAVA_MAJOR}; install openjdk-17-jdk-headless and put it first on PATH"
command -v mvn >/dev/null || die "mvn not found; install Maven (apt-get install maven)"
command -v "$PY" >/dev/null || die "$PY not found; install Python 3.11"

mkdir -p "$HOME_DIR"
if [ ! -x .venv/bin/python ]; then
  say "creating .venv with $PY"
  "$PY" -m venv .venv
fi
DEPS_HASH=$(sha256sum pyproject.toml | cut -c1-16)
if [ "$(cat .venv/.lklab-deps 2>/dev/null)" != "$DEPS_HASH" ]; then
  say "installing Python packages (pinned in pyproject.toml)"
  # uv installs the same packages in about half pip's time (parallel downloads, no per-wheel
  # subprocess); pip stays in the venv for anyone who prefers it.
  .venv/bin/pip install -q uv
  .venv/bin/uv pip install -q --python .venv/bin/python -e ".[dev]"
  echo "$DEPS_HASH" > .venv/.lklab-deps
else
  say "Python packages up to date"
fi

fetch_jars() {  # name, pom, goal
  local name=$1 pom=$2 goal=$3 stamp="$JARS/$1/.stamp" hash
  hash=$(sha256sum "$pom" | cut -c1-16)
  if [ "$(cat "$stamp" 2>/dev/null)" = "$hash" ]; then
    say "$name jars up to date ($(ls "$JARS/$name"/*.jar | wc -l) jars)"; return
  fi
  say "resolving $name jars from Maven Central"
  rm -rf "$JARS/$name"; mkdir -p "$JARS/$name"
  mvn -q -U -f "$pom" "$goal" -DoutputDirectory="$JARS/$name" -DincludeScope=runtime \
    || die "could not resolve $name jars with Maven (see output above)"
  echo "$hash" > "$stamp"
  say "$name jars ready ($(ls "$JARS/$name"/*.jar | wc -l) jars)"
}
fetch_jars kafka lklab/runtime/kafka-pom.xml dependency:copy-dependencies
fetch_jars spark lklab/runtime/spark-pom.xml dependency:copy

# Data Docs render offline from local copies of the scripts and styles GX's templates load from
# CDNs (expectations/offline_docs.py lists them); they come from their npm packages, once.
WEB=$ROOT/.lklab/web
WEB_HASH=$(sha256sum expectations/offline_docs.py | cut -c1-16)
if [ "$(cat "$WEB/.stamp" 2>/dev/null)" != "$WEB_HASH" ]; then
  command -v npm >/dev/null || die "npm not found; install it (apt-get install npm): Data Docs need local copies of their scripts"
  say "fetching the Data Docs scripts and styles from npm"
  .venv/bin/python -m expectations.offline_docs fetch || die "could not fetch the Data Docs assets (see above)"
  echo "$WEB_HASH" > "$WEB/.stamp"
else
  say "Data Docs assets up to date"
fi

# Headless Chromium: the tests render Data Docs and the API's /docs with no network.
if ! command -v chromium >/dev/null; then
  command -v apt-get >/dev/null || die "chromium not found; install it (the offline-rendering tests use it headless)"
  SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
  say "installing chromium (headless, for the offline-rendering tests)"
  { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null; } \
    || die "could not install chromium with apt-get"
fi
# PostgreSQL: the scaled serving store (every serving-store test also runs on it; make demo-scaled).
# Tests start their own server in a temporary directory; nothing is started here.
if ! command -v pg_ctl >/dev/null && ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then
  command -v apt-get >/dev/null || die "PostgreSQL not found; install it (the serving-store tests run on it too)"
  SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
  say "installing postgresql (the scaled serving store; tests start it on loopback themselves)"
  { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql >/dev/null; } \
    || die "could not install postgresql with apt-get"
fi
say "ready"
