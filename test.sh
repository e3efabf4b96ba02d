#!/usr/bin/env bash
# test.sh: install what is missing and run Usher's whole test suite.
#
#   ./test.sh [PYTEST ARGS...]        e.g. ./test.sh -x -q tests/test_fake_driver.py
#
# Meant for Debian 12, as root. Installs Python, the virtualenv with the dev extras
# (scripts/bootstrap.sh) and PostgreSQL, starts the PostgreSQL cluster if it is down, makes a
# role `usher` (password `usher`) and a database `usher_test`, exports USHER_TEST_PG_URL for
# the PostgreSQL variants of the tests, and runs pytest. If USHER_TEST_PG_URL is already set,
# that server is used and PostgreSQL is left alone. The exit status is pytest's.
set -euo pipefail
cd "$(dirname "$0")"
. scripts/bootstrap.sh

bootstrap --dev

pg_setup() {
  local ver port status
  apt_install postgresql
  ver=$(ls /usr/lib/postgresql 2>/dev/null | sort -V | tail -n 1)
  [ -n "$ver" ] || die "PostgreSQL is installed but /usr/lib/postgresql has no version"
  if ! pg_lsclusters -h | awk -v v="$ver" '$1 == v && $2 == "main" { f = 1 } END { exit !f }'; then
    say "pg_createcluster $ver main"
    pg_createcluster "$ver" main >/dev/null
  fi
  status=$(pg_lsclusters -h | awk -v v="$ver" '$1 == v && $2 == "main" { print $4 }')
  if [ "$status" != online ]; then
    say "pg_ctlcluster $ver main start"
    pg_ctlcluster "$ver" main start
  fi
  port=$(pg_lsclusters -h | awk -v v="$ver" '$1 == v && $2 == "main" { print $3 }')
  psql_admin() { (cd / && runuser -u postgres -- psql -p "$port" -v ON_ERROR_STOP=1 -qAt "$@"); }
  psql_admin -c "DO \$\$ BEGIN
      IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'usher') THEN
        CREATE ROLE usher LOGIN PASSWORD 'usher';
      END IF;
    END \$\$;" >/dev/null
  psql_admin -c "ALTER ROLE usher LOGIN PASSWORD 'usher' CREATEDB" >/dev/null
  if [ -z "$(psql_admin -c "SELECT 1 FROM pg_database WHERE datname = 'usher_test'")" ]; then
    say "creating database usher_test"
    psql_admin -c "CREATE DATABASE usher_test OWNER usher" >/dev/null
  fi
  USHER_TEST_PG_URL="postgresql://usher:usher@127.0.0.1:$port/usher_test"
  say "PostgreSQL $ver runs on port $port: USHER_TEST_PG_URL=$USHER_TEST_PG_URL"
}

if [ -z "${USHER_TEST_PG_URL:-}" ]; then
  pg_setup
else
  say "using USHER_TEST_PG_URL=$USHER_TEST_PG_URL"
fi
export USHER_TEST_PG_URL

# the LDAP tests start their own slapd and seed it with ldapadd; the dashboard test drives
# Debian's chromium through Playwright (no browser download; its node driver needs libatomic1)
apt_install slapd ldap-utils dnsmasq-base chromium libatomic1
# the libvirt driver's tests run libvirtd daemons of their own (tests/libvirt_hosts.py), each in
# private directories; without systemd as init the packages start no system daemon (their
# postinst starts one only when /run/systemd/system exists), and with it that daemon shares
# nothing with the tests' own
apt_install libvirt-daemon-system libvirt-daemon-driver-qemu libvirt-clients
# the debian image tests build it with mmdebstrap (cached in /var/cache/usher-ci) and read
# its root file system with debugfs
apt_install mmdebstrap e2fsprogs
# the dns plugin's tests start a BIND 9 of their own (named -g, a tmp dir, a free port)
apt_install bind9 bind9-dnsutils

say "pytest $*"
exec "$USHER_VENV/bin/python" -m pytest "$@"
