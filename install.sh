#!/usr/bin/env bash
# sensorkit installer.
#
#   ./install.sh --bench   set up in ./.venv and run the agent here, with simulated sensors,
#                          console output and a local InfluxDB (installed from Debian's
#                          `influxdb` package and started when missing, where that is possible)
#   ./install.sh --test    set up in ./.venv (with test tools and InfluxDB) and run all tests
#   sudo ./install.sh      on a Raspberry Pi: install to /opt/sensorkit, config in
#                          /etc/sensorkit/agent.ini, and run it under systemd
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"
mode="${1:---pi}"

say() { printf 'install.sh: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@";
    elif command -v sudo >/dev/null; then sudo "$@";
    else return 1; fi
}

apt_install() {
    command -v apt-get >/dev/null || return 1
    say "installing Debian packages: $*"
    as_root apt-get update -qq >/dev/null || return 1
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null || return 1
}

need_python() {
    command -v python3 >/dev/null || apt_install python3 || die "python3 (3.11 or newer) is needed"
    python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        || die "python3 is $(python3 -V 2>&1); sensorkit needs 3.11 or newer"
    python3 -c 'import venv, ensurepip' 2>/dev/null || apt_install python3-venv \
        || die "python3-venv is needed: apt-get install python3-venv"
}

need_influxdb() {
    # The test suite starts its own influxd; the bench runs against one on localhost:8086.
    if ! command -v influxd >/dev/null || ! command -v influx >/dev/null; then
        apt_install influxdb influxdb-client \
            || { say "could not install Debian's influxdb package (need root or sudo)"; return 1; }
    fi
}

venv_setup() {  # $1: extras, e.g. dev
    if [ ! -x .venv/bin/python ]; then
        say "creating .venv"
        python3 -m venv .venv
    fi
    say "installing sensorkit into .venv"
    .venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
    if ! .venv/bin/python -m pip install -q -e ".[$1]" >.venv/pip.log 2>&1; then
        cat .venv/pip.log >&2
        die "installing into .venv failed (log above, also in .venv/pip.log)"
    fi
    .venv/bin/python -c 'import agent, drivers, serial' || die "installing into .venv failed"
}

start_local_influxd() {
    if curl -fsS -o /dev/null http://127.0.0.1:8086/ping 2>/dev/null \
        || python3 -c 'import urllib.request; urllib.request.urlopen("http://127.0.0.1:8086/ping", timeout=1)' 2>/dev/null; then
        say "InfluxDB already answers on localhost:8086"
        return 0
    fi
    command -v influxd >/dev/null || return 1
    mkdir -p .bench/influxdb
    cat > .bench/influxdb.conf <<EOF
reporting-enabled = false
bind-address = "127.0.0.1:8088"
[meta]
  dir = "$here/.bench/influxdb/meta"
[data]
  dir = "$here/.bench/influxdb/data"
  wal-dir = "$here/.bench/influxdb/wal"
  query-log-enabled = false
[http]
  bind-address = "127.0.0.1:8086"
  log-enabled = false
EOF
    say "starting a local influxd on localhost:8086 (data in .bench/influxdb, log in .bench/influxd.log)"
    # In a session of its own, so Ctrl-C stops the agent (which then delivers its last
    # window) and not the server under it; the EXIT trap stops the server afterwards.
    setsid influxd -config .bench/influxdb.conf >.bench/influxd.log 2>&1 &
    influxd_pid=$!
    trap 'kill "$influxd_pid" 2>/dev/null || true' EXIT
    for _ in $(seq 50); do
        python3 -c 'import urllib.request; urllib.request.urlopen("http://127.0.0.1:8086/ping", timeout=1)' 2>/dev/null && return 0
        sleep 0.2
    done
    say "influxd did not start; see .bench/influxd.log"
    return 1
}

case "$mode" in
--test)
    need_python
    need_influxdb || die "the tests need influxd (Debian package influxdb)"
    venv_setup dev
    say "ruff check"
    .venv/bin/ruff check .
    say "running the test suite"
    set +e
    .venv/bin/python -m pytest -q -p no:cacheprovider
    rc=$?
    set -e
    [ "$rc" -eq 5 ] && die "pytest collected no tests"
    exit "$rc"
    ;;
--bench)
    need_python
    venv_setup dev
    config="$here/agent.ini"
    if need_influxdb && start_local_influxd; then
        say "running the agent: simulated sensors, console and InfluxDB output (Ctrl-C stops it)"
        say "look at the data: influx -database BdP_\$(.venv/bin/python -c 'from agent.config import cpu_serial; print(cpu_serial())') -execute 'SELECT * FROM data'"
    else
        mkdir -p .bench
        sed 's/^\(\[influx\]\)$/\1/; /^\[influx\]/,/^\[/ s/^enabled = yes$/enabled = no/' agent.ini > .bench/agent.ini
        config="$here/.bench/agent.ini"
        say "no InfluxDB here: running with console output only"
    fi
    .venv/bin/sensorkit run -c "$config"
    ;;
--pi)
    [ "$(id -u)" -eq 0 ] || die "run as root on the Pi: sudo ./install.sh"
    need_python
    say "installing to /opt/sensorkit"
    python3 -m venv /opt/sensorkit
    /opt/sensorkit/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
    /opt/sensorkit/bin/python -m pip install -q "$here[pi]"
    id sensorkit >/dev/null 2>&1 || useradd --system --home-dir /var/lib/sensorkit \
        --shell /usr/sbin/nologin sensorkit
    for group in dialout i2c gpio; do
        getent group "$group" >/dev/null && usermod -aG "$group" sensorkit
    done
    install -d -m 0755 /etc/sensorkit
    if [ ! -e /etc/sensorkit/agent.ini ]; then
        sed 's/^backend = simulated$/backend = hardware/; /^\[console\]/,/^\[/ s/^enabled = yes$/enabled = no/' \
            agent.ini > /etc/sensorkit/agent.ini
        say "wrote /etc/sensorkit/agent.ini (hardware backends): edit [kit] and [influx]"
    fi
    chown root:sensorkit /etc/sensorkit/agent.ini
    chmod 0640 /etc/sensorkit/agent.ini
    install -m 0644 systemd/sensorkit.service /etc/systemd/system/sensorkit.service
    ln -sf /opt/sensorkit/bin/sensorkit /usr/local/bin/sensorkit
    systemctl daemon-reload
    systemctl enable --now sensorkit.service
    say "sensorkit runs; see: systemctl status sensorkit; sensorkit status"
    ;;
*)
    die "usage: ./install.sh [--bench | --test]   (no option: install on a Raspberry Pi, as root)"
    ;;
esac
