#!/usr/bin/env bash
# quickstart.sh: install what is missing, start Usher on this machine, and show it working.
#
#   ./quickstart.sh [--driver NAME] [--nodes N]
#
# Meant for a fresh Debian 12 machine, as root. Installs Python and the project's virtualenv
# (scripts/bootstrap.sh), starts a controller with N local node managers in the background
# (`usher local --detach`, state under ~/.usher/local; a cluster already running there is
# reused), then runs a few `ush` commands against it. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")"
. scripts/bootstrap.sh

driver=fake
nodes=3
while [ $# -gt 0 ]; do
  case "$1" in
    --driver) driver=${2:?--driver needs a name}; shift 2 ;;
    --driver=*) driver=${1#*=}; shift ;;
    --nodes) nodes=${2:?--nodes needs a number}; shift 2 ;;
    --nodes=*) nodes=${1#*=}; shift ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) die "unknown argument $1 (see ./quickstart.sh --help)" ;;
  esac
done

bootstrap

venv=$USHER_VENV
state="$HOME/.usher/local"
pidfile="$state/local.pid"
if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null && [ -f "$state/ready" ]; then
  say "a local Usher cluster already runs from $state: reusing it"
  cat "$state/ready"
else
  say "usher local --nodes $nodes --driver $driver --detach"
  "$venv/bin/usher" local --nodes "$nodes" --driver "$driver" --state-dir "$state" --detach
fi

show() { printf '\n$ %s\n' "$*"; "$venv/bin/$@"; }
show ush nodes
show ush start -n 6 --cluster demo
show ush list

cat <<EOF

Usher is running: a controller on this machine with its node managers ($driver driver),
state and logs in $state. The ush client is set up through ~/.usher/config.toml:

  . $venv/bin/activate        # puts ush and usher on PATH (or call $venv/bin/ush)
  ush                         # the interactive shell (help, quit)
  ush start -n 20 --cluster c1
  ush list -o json
  ush stop --cluster demo
  ush destroy --cluster demo

Stop it:     usher local --stop
Run tests:   ./test.sh
EOF
