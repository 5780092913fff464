#!/usr/bin/env bash
# Prepare this Debian host for Stockade: apt packages, a recent runsc, the virtualenv and
# the base images. Safe to re-run: every step skips what is already in place.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CACHE_DIR="${STOCKADE_CACHE_DIR:-/var/cache/stockade}"
VENV="$ROOT/.venv"
# nftables: the sandboxes' egress policy. For the tests: dnsmasq-base and openssl (a
# stand-in DNS server, TLS certificates), docker-registry, skopeo, umoci and apache2-utils
# (a real registry on loopback, and the tools that build and push its images), and
# busybox-static (a shell for those images).
PACKAGES=(debootstrap e2fsprogs mount util-linux iproute2 nftables ca-certificates python3
          python3-venv gcc libc6-dev dnsmasq-base openssl docker-registry skopeo umoci
          apache2-utils busybox-static)

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

if [ "$(id -u)" != 0 ]; then
  echo "error: Stockade's server runs sandboxes with runsc and must be set up as root" >&2
  exit 1
fi

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing apt packages: ${missing[*]}"
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
# The tests start their own registries on loopback; the package's system service is not
# wanted (on hosts that run systemd it would listen on port 5000).
if [ -d /run/systemd/system ] && systemctl is-enabled -q docker-registry 2>/dev/null; then
  systemctl disable --now -q docker-registry || true
fi

# runsc: $STOCKADE_RUNSC, a runsc on PATH from 2024 or later, or Debian trixie's package
# unpacked into the cache (bookworm's is too old: no systrap). No system apt change.
runsc_ok() { local v; v=$("$1" --version 2>/dev/null | grep -oE '20[0-9]{6}' | head -1); [ -n "$v" ] && [ "$v" -ge 20240101 ]; }
RUNSC=""
for c in "${STOCKADE_RUNSC:-}" "$CACHE_DIR/bin/runsc" "$(command -v runsc || true)"; do
  if [ -n "$c" ] && [ -x "$c" ] && runsc_ok "$c"; then RUNSC="$c"; break; fi
done
if [ -z "$RUNSC" ]; then
  say "fetching runsc from Debian trixie into $CACHE_DIR/bin"
  mirror=$(grep -hoE '^URIs:\s*\S+' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' | grep -v security | head -1 || true)
  [ -n "$mirror" ] || mirror=$(grep -hoE '^deb\s+\S+' /etc/apt/sources.list 2>/dev/null | awk '{print $2}' | grep -v security | head -1 || true)
  [ -n "$mirror" ] || mirror="http://deb.debian.org/debian"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  mkdir -p "$tmp/lists/partial" "$tmp/archives/partial"
  echo "deb $mirror trixie main" > "$tmp/sources.list"
  opts=(-o "Dir::Etc::sourcelist=$tmp/sources.list" -o Dir::Etc::sourceparts=- \
        -o "Dir::State::Lists=$tmp/lists" -o "Dir::Cache::archives=$tmp/archives" \
        -o APT::Sandbox::User=root)
  apt-get "${opts[@]}" update -q
  (cd "$tmp" && apt-get "${opts[@]}" download runsc)
  dpkg-deb -x "$tmp"/runsc_*.deb "$tmp/x"
  mkdir -p "$CACHE_DIR/bin"
  install -m 0755 "$tmp/x/usr/bin/runsc" "$CACHE_DIR/bin/runsc.new"
  mv "$CACHE_DIR/bin/runsc.new" "$CACHE_DIR/bin/runsc"
  RUNSC="$CACHE_DIR/bin/runsc"
  runsc_ok "$RUNSC" || { echo "error: the fetched runsc is too old: $("$RUNSC" --version)" >&2; exit 1; }
fi
say "runsc: $RUNSC ($("$RUNSC" --version | head -1))"

# The virtualenv, reinstalled only when pyproject.toml or the pinned versions change. The
# package declares ranges (it is a library too); requirements/constraints.txt holds the exact
# versions the server and the tests run with. The framework extras are installed for the
# tests of stockade.integrations.
CONSTRAINTS="$ROOT/requirements/constraints.txt"
stamp="$VENV/.stockade-installed"
want=$(cat "$ROOT/pyproject.toml" "$CONSTRAINTS" | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  say "installing Stockade into $VENV"
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q -c "$CONSTRAINTS" \
    -e "$ROOT[server,dev,cli,langchain,openai-agents,smolagents,pydantic-ai]"
  echo "$want" > "$stamp"
fi

# Node >= 20 and npm: the TypeScript SDK (sdk/typescript) is built and tested against the
# server by the tests (tests/integration/test_typescript_sdk.py runs its `npm ci`).
node_major=$(node --version 2>/dev/null | sed -E 's/^v([0-9]+).*/\1/' || true)
if [ -z "$node_major" ] || [ "$node_major" -lt 20 ] || ! command -v npm >/dev/null; then
  echo "error: the TypeScript SDK needs Node.js 20 or later with npm (found: $(node --version 2>/dev/null || echo none));" \
       "install it, e.g. from https://nodejs.org/en/download or NodeSource's Debian packages (nodejs 20.x)" >&2
  exit 1
fi

# Base images and the built-in code-interpreter image, whose wheels the host's pip
# downloads (built once per cache directory; later runs find them ready).
say "base images"
STOCKADE_CACHE_DIR="$CACHE_DIR" "$VENV/bin/python" -m stockade.server.prebuild debian python code-interpreter
