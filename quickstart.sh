#!/usr/bin/env bash
# quickstart.sh: install what is missing, start Usher on this machine, and show it working.
#
#   ./quickstart.sh [--driver NAME] [--nodes N]
#
# Meant for a fresh Debian 12 machine, as root. Installs QEMU, Python and the project's
# virtualenv (scripts/bootstrap.sh), builds the tiny guest image from Debian packages, starts a
# controller with N local node managers in the background (`usher local --detach`, state under
# $USHER_HOME/local, ~/.usher/local by default; a cluster already running there is reused),
# starts a virtual cluster of three real guests, live-migrates one while showing that it keeps
# running, and leaves it all running. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")"
. scripts/bootstrap.sh

driver=qemu
nodes=2
while [ $# -gt 0 ]; do
  case "$1" in
    --driver) driver=${2:?--driver needs a name}; shift 2 ;;
    --driver=*) driver=${1#*=}; shift ;;
    --nodes) nodes=${2:?--nodes needs a number}; shift 2 ;;
    --nodes=*) nodes=${1#*=}; shift ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) die "unknown argument $1 (see ./quickstart.sh --help)" ;;
  esac
done

if [ "$driver" = libvirt ]; then
  bootstrap --libvirt  # libvirt's daemon, and the driver's libvirt-python
else
  bootstrap
fi

venv=$USHER_VENV
state="${USHER_HOME:-$HOME/.usher}/local"
pidfile="$state/local.pid"
if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null && [ -f "$state/ready" ]; then
  say "a local Usher cluster already runs from $state: reusing it"
  cat "$state/ready"
else
  say "usher local --nodes $nodes --driver $driver --detach"
  "$venv/bin/usher" local --nodes "$nodes" --driver "$driver" --state-dir "$state" --detach
fi

exec "$venv/bin/python" scripts/demo.py --cluster demo --driver "$driver" --state "$state"
