# shellcheck shell=bash
# Sourced by scripts/test.sh: `ensure_system_peers` makes sure the programs the test suite
# talks to are on this machine, installing Debian's packages when run as root:
#   - Node.js 20+ and npm (oidc-provider and the TypeScript MCP SDK; Debian 12's nodejs is 18,
#     too old for oidc-provider 9, so a newer one comes from the npm registry's `node` package),
#   - chromium and chromium-driver (the connect flow and settings pages, driven by selenium),
#   - redis-server (the shared rate limiter; the system instance the package starts is stopped:
#     the tests start their own on free ports).
# A peer that cannot be had is an error: the suite never skips a test for a missing peer.

NODE_MIN_MAJOR=20

_apt_updated=0
_apt_install() {
  if [[ "$(id -u)" != 0 ]] || ! command -v apt-get >/dev/null; then
    echo "error: missing $*; install it (Debian: apt-get install $*) or run as root" >&2
    exit 1
  fi
  if [[ $_apt_updated == 0 ]]; then
    apt-get update -qq
    _apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

_node_major() {
  node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0
}

ensure_node() {
  if ! command -v node >/dev/null; then
    _apt_install nodejs
  fi
  if ! command -v npm >/dev/null; then
    _apt_install npm
  fi
  if (( $(_node_major) < NODE_MIN_MAJOR )); then
    # The npm registry's `node` package ships a prebuilt Node binary inside the package.
    npm install -g --no-audit --no-fund "node@${NODE_MIN_MAJOR}" >/dev/null
    hash -r
    if (( $(_node_major) < NODE_MIN_MAJOR )); then
      echo "error: Node.js ${NODE_MIN_MAJOR}+ is needed, found $(node --version)" >&2
      exit 1
    fi
  fi
}

ensure_system_peers() {
  ensure_node
  local missing=()
  command -v chromium >/dev/null || missing+=(chromium)
  command -v chromedriver >/dev/null || missing+=(chromium-driver)
  command -v redis-server >/dev/null || missing+=(redis-server)
  if ((${#missing[@]})); then
    _apt_install "${missing[@]}"
  fi
  # Installing redis-server starts a system instance on 6379; the tests start their own.
  if command -v service >/dev/null && pgrep -x redis-server >/dev/null 2>&1; then
    service redis-server stop >/dev/null 2>&1 || true
  fi
}
