#!/usr/bin/env bash
# bootstrap.sh: install what Usher needs on Debian 12 and set up the project's virtualenv.
#
#   scripts/bootstrap.sh [--dev]          run it, or
#   . scripts/bootstrap.sh; bootstrap [--dev]; apt_install PKG...
#
# Shared by quickstart.sh and test.sh so the install logic lives in one place. Idempotent:
# Debian packages are installed only when missing (apt-get update runs once, first), the
# venv (.venv in the repository) is created only when missing or broken, and `pip install -e`
# runs only when pyproject.toml changed since the last install. --dev adds the dev extras
# (pytest, ruff). Installing Debian packages needs root; pip honours the machine's own
# settings (PIP_CERT, SSL_CERT_FILE, pip.conf), which this script never overrides.

USHER_ROOT=${USHER_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
USHER_VENV=${USHER_VENV:-$USHER_ROOT/.venv}
_usher_apt_updated=0

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# apt_install PKG...: install the Debian packages of the list that are not installed yet.
apt_install() {
  local missing=() pkg log
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' ||
      missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  command -v apt-get >/dev/null || die "missing ${missing[*]}, and this is not a Debian system: install them by hand"
  [ "$(id -u)" -eq 0 ] || die "missing Debian packages ${missing[*]}: run this as root (or install them first)"
  log=$(mktemp)
  if [ "$_usher_apt_updated" = 0 ]; then
    say "apt-get update"
    apt-get update -q >"$log" 2>&1 || { cat "$log" >&2; rm -f "$log"; die "apt-get update failed"; }
    _usher_apt_updated=1
  fi
  say "apt-get install ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" \
    >"$log" 2>&1 </dev/null || { tail -n 40 "$log" >&2; rm -f "$log"; die "apt-get install failed"; }
  rm -f "$log"
}

# A Python 3.11+ that can make virtualenvs: the one on PATH if it does, else Debian's.
_usher_python() {
  local py
  py=$(command -v python3 || true)
  if [ -n "$py" ] && "$py" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "$py"
    return
  fi
  apt_install python3 python3-venv
  /usr/bin/python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
    die "Usher needs Python 3.11 or newer; /usr/bin/python3 is $(/usr/bin/python3 -V 2>&1)"
  echo /usr/bin/python3
}

# bootstrap [--dev] [--libvirt]: Debian packages (QEMU among them), the venv, and Usher
# installed in it; --dev adds the test tools, --libvirt libvirt's daemon and the libvirt driver.
bootstrap() {
  local extras="" spec=. stamp want py arg
  for arg in "$@"; do
    case "$arg" in
      --dev) extras="${extras:+$extras,}dev" ;;
      --libvirt) extras="${extras:+$extras,}libvirt"
        apt_install libvirt-daemon-system libvirt-daemon-driver-qemu libvirt-clients ;;
      *) die "bootstrap: unknown option $arg" ;;
    esac
  done
  [ -n "$extras" ] && spec=".[$extras]"
  # QEMU runs the guests; qemu-utils makes their disks; iproute2 serves bridges and the
  # network-namespace tests; mmdebstrap and e2fsprogs build the debian image; `ush ssh` runs
  # OpenSSH's client.
  apt_install ca-certificates qemu-system-x86 qemu-utils iproute2 mmdebstrap e2fsprogs \
    openssh-client
  if ! "$USHER_VENV/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    py=$(_usher_python)
    say "creating $USHER_VENV (with $("$py" -V 2>&1))"
    rm -rf "$USHER_VENV"
    "$py" -m venv "$USHER_VENV" || die "could not create the virtualenv $USHER_VENV"
  fi
  if [ -n "$extras" ]; then
    # both extras hold libvirt-python, which PyPI has only as source: pip compiles it against
    # the host's libvirt (its headers, found by pkg-config) and Python's headers
    apt_install libvirt-dev pkg-config gcc
    "$USHER_VENV/bin/python" -c 'import sys; sys.exit(sys.base_prefix != "/usr")' &&
      apt_install python3-dev
  fi
  stamp="$USHER_VENV/.usher-installed${extras:+-$extras}"
  want="$(sha256sum "$USHER_ROOT/pyproject.toml" | cut -d' ' -f1)"
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || [ ! -x "$USHER_VENV/bin/usher" ]; then
    say "pip install -e '$spec' (into $USHER_VENV)"
    (cd "$USHER_ROOT" && "$USHER_VENV/bin/python" -m pip install -q --disable-pip-version-check \
      -e "$spec") || die "pip install failed"
    echo "$want" >"$stamp"
  fi
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then  # run, not sourced
  set -euo pipefail
  bootstrap "$@"
fi
