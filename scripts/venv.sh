# shellcheck shell=bash
# Sourced by scripts/test.sh and scripts/validate-deploy.sh: `ensure_venv` creates the
# virtualenv at $VENV with $PYTHON when it is missing or unusable (installing Debian's
# python3-venv when root and needed) and installs the pinned tests/requirements.txt.

ensure_venv() {
  if ! [[ -x "$VENV/bin/python" ]] || ! "$VENV/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
    rm -rf "$VENV"
    if ! "$PYTHON" -m venv "$VENV"; then
      # Debian's python3 ships venv support in a separate package.
      if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
        rm -rf "$VENV"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
        "$PYTHON" -m venv "$VENV"
      else
        echo "error: '$PYTHON -m venv' failed; install python3-venv" >&2
        exit 1
      fi
    fi
  fi
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r tests/requirements.txt
}
