#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# sensorkit installer: the bench and the tests here, the kit on a Raspberry Pi, the server.
# ./install.sh --help lists every mode and option.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

usage() {
    cat <<'EOF'
usage: ./install.sh MODE [OPTIONS]

Modes (exactly one):
  --bench          set up ./.venv and run the agent here: simulated sensors, console output
                   and a local InfluxDB (Debian's influxdb, installed and started if missing)
  --test           set up ./.venv with the test tools (InfluxDB, shellcheck) and run ruff and
                   the whole test suite (what CI runs)
  --pi             install the kit on a Raspberry Pi, as root: OS packages, the sensorkit user,
                   /opt/sensorkit, /etc/sensorkit/agent.ini, the sensorkit systemd service;
                   then `sensorkit probe` says what it found and what to edit
  --server         install the InfluxDB 1.x server the kits write to, as root: Debian's
                   influxdb with auth-enabled = true and an admin user, then says how to run
                   `sensorkit provision` for each kit
  --uninstall      remove the kit's service and code; keep /etc/sensorkit and
                   /var/lib/sensorkit (the config and any unsent data) unless --purge
  -h, --help       this help

Options:
  --dry-run        print every step, in order, with what it would do; change nothing
                   (--pi, --server, --uninstall)
  --force          --pi on a machine that is not a Raspberry Pi (no GPIO extras installed)
  --enable-i2c     --pi: turn the I2C bus on (raspi-config nonint do_i2c 0) for the BME280
  --purge          --uninstall: also remove /etc/sensorkit, /var/lib/sensorkit and the user
  --tls-cert FILE  --server: serve HTTPS with this certificate (PEM), with --tls-key
  --tls-key FILE   --server: the certificate's private key (readable by user influxdb)
  --admin-user N   --server: the admin user to create (default admin)
  --keep-influxd   --bench: leave the local influxd running after Ctrl-C (the `influx`
                   commands keep working; the bench prints how to stop it)
  --print-config   --pi: print the agent.ini a first install writes, and exit

A second run on an installed system is a no-op: each step says it is already done.

Environment:
  SENSORKIT_ADMIN_PASSWORD  --server: the admin password (else it is prompted; never give it
                            on the command line)
  SENSORKIT_DT_MODEL        the device-tree model file that tells a Pi (default
                            /proc/device-tree/model)
  SENSORKIT_ROOT            --dry-run only: inspect this directory as if it were / (tests)
  SENSORKIT_SERVER_URL      --server: where the new server answers (default
                            http://127.0.0.1:8086, https:// with --tls-cert)
EOF
}

say() { printf 'install.sh: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }
die_usage() { say "$*"; say "see ./install.sh --help"; exit 2; }

# -- options --------------------------------------------------------------------------------

mode="" dry=0 force=0 enable_i2c=0 purge=0 keep_influxd=0 print_config=0
tls_cert="" tls_key="" admin_user="admin"
set_mode() {
    [ -z "$mode" ] || die_usage "choose one mode, not --$mode and $1"
    mode="${1#--}"
}
parse_args() {
    while [ $# -gt 0 ]; do
        case "$1" in
        --bench | --test | --pi | --server | --uninstall) set_mode "$1" ;;
        --dry-run) dry=1 ;;
        --force) force=1 ;;
        --enable-i2c) enable_i2c=1 ;;
        --purge) purge=1 ;;
        --keep-influxd) keep_influxd=1 ;;
        --print-config) print_config=1 ;;
        --tls-cert | --tls-key | --admin-user)
            [ $# -ge 2 ] || die_usage "$1 needs a value"
            case "$1" in
            --tls-cert) tls_cert="$2" ;;
            --tls-key) tls_key="$2" ;;
            --admin-user) admin_user="$2" ;;
            esac
            shift
            ;;
        -h | --help)
            usage
            exit 0
            ;;
        *) die_usage "unknown option: $1" ;;
        esac
        shift
    done
}

only_with() {  # $1: option given (0/1), $2: its name, $3...: the modes it belongs to
    local given=$1 name=$2 m
    shift 2
    [ "$given" = 1 ] || return 0
    local modes=""
    for m in "$@"; do
        [ "$mode" = "$m" ] && return 0
        modes="$modes --$m"
    done
    die_usage "$name goes with${modes}, not --$mode"
}

# -- the device-tree model: is this a Raspberry Pi, which one -------------------------------

model_file="${SENSORKIT_DT_MODEL:-/proc/device-tree/model}"
pi_model() {  # prints the model when this is a Raspberry Pi, else fails
    local model
    [ -r "$model_file" ] || return 1
    model="$(tr -d '\0' <"$model_file")"
    case "$model" in
    *"Raspberry Pi"*) printf '%s\n' "$model" ;;
    *) return 1 ;;
    esac
}
is_pi5() {  # BCM2712 boards: RPi.GPIO cannot drive their GPIO (the RP1 chip)
    case "$1" in
    *"Raspberry Pi 5"* | *"Compute Module 5"*) return 0 ;;
    *) return 1 ;;
    esac
}

check_args() {
    if [ -z "$mode" ]; then
        usage >&2
        if model="$(pi_model)"; then
            say "this is a $model: to install the kit here, run: sudo ./install.sh --pi"
        fi
        die_usage "no mode given: nothing was installed"
    fi
    only_with "$dry" --dry-run pi server uninstall
    only_with "$force" --force pi
    only_with "$enable_i2c" --enable-i2c pi
    only_with "$purge" --purge uninstall
    only_with "$keep_influxd" --keep-influxd bench
    only_with "$print_config" --print-config pi
    [ -z "$tls_cert$tls_key" ] || only_with 1 "--tls-cert/--tls-key" server
    [ "$admin_user" = admin ] || only_with 1 --admin-user server
}

# -- helpers for the bench and the tests ----------------------------------------------------

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"
    elif command -v sudo >/dev/null; then sudo "$@"
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

venv_setup() {  # $1: extras, e.g. dev ("" for none)
    if [ ! -x .venv/bin/python ]; then
        say "creating .venv"
        python3 -m venv .venv
    fi
    say "installing sensorkit into .venv"
    .venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
    if ! .venv/bin/python -m pip install -q -e ".${1:+[$1]}" >.venv/pip.log 2>&1; then
        cat .venv/pip.log >&2
        die "installing into .venv failed (log above, also in .venv/pip.log)"
    fi
    .venv/bin/python -c 'import agent, drivers, serial' || die "installing into .venv failed"
}

influx_ping() {  # $1: base URL
    python3 - "$1" <<'EOF' 2>/dev/null
import ssl, sys, urllib.request
context = ssl._create_unverified_context()  # a local check; the kits verify certificates
urllib.request.urlopen(sys.argv[1] + "/ping", timeout=2, context=context)
EOF
}

start_local_influxd() {
    if influx_ping http://127.0.0.1:8086; then
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
    if [ "$keep_influxd" = 1 ]; then
        trap 'say "influxd keeps running on localhost:8086 (pid $influxd_pid); stop it with: kill $influxd_pid"' EXIT
    else
        trap 'kill "$influxd_pid" 2>/dev/null || true' EXIT
    fi
    for _ in $(seq 50); do
        influx_ping http://127.0.0.1:8086 && return 0
        sleep 0.2
    done
    say "influxd did not start; see .bench/influxd.log"
    return 1
}

bench_database() {  # the database the bench writes to, as the agent names it
    .venv/bin/python -c '
import sys
from pathlib import Path
from agent.config import load
s = load(Path(sys.argv[1]))
print(s.influx.database or f"{s.kit.project}_{s.kit.serial}")' "$1"
}

# -- steps: check, then act (or say what it would do) ----------------------------------------

root=""  # SENSORKIT_ROOT: inspected as / in a dry run
step_no=0
last_changed=0  # did the last step change (or, in a dry run, would it change) anything?
changed=0  # did an earlier step change (or, in a dry run, would it change) anything?
detail=""  # a check's note, shown with its verdict

# step TITLE CHECK DOES ACTION [ARG...]: CHECK succeeds when nothing is to do; DOES says what
# ACTION does, for the dry run and the log.
step() {
    local title=$1 check=$2 does=$3
    shift 3
    step_no=$((step_no + 1))
    detail=""
    last_changed=0
    if "$check"; then
        printf '[%d] %s: already done%s\n' "$step_no" "$title" "${detail:+ ($detail)}"
        return 0
    fi
    changed=1
    last_changed=1
    if [ "$dry" = 1 ]; then
        printf '[%d] %s: would %s%s\n' "$step_no" "$title" "$does" "${detail:+ ($detail)}"
        return 0
    fi
    printf '[%d] %s: %s%s\n' "$step_no" "$title" "$does" "${detail:+ ($detail)}"
    "$@"
}

# report TITLE DOES ACTION...: a step that only looks (it runs again on every install).
report() {
    local title=$1 does=$2
    shift 2
    step_no=$((step_no + 1))
    if [ "$dry" = 1 ]; then
        printf '[%d] %s: would %s (read-only)\n' "$step_no" "$title" "$does"
        return 0
    fi
    printf '[%d] %s: %s (read-only)\n' "$step_no" "$title" "$does"
    "$@"
}

need_root() {
    [ "$dry" = 1 ] || [ "$(id -u)" -eq 0 ] \
        || die "--$mode changes the system: run it as root (sudo ./install.sh --$mode), or add --dry-run to see the steps"
}

dpkg_installed() {
    # shellcheck disable=SC2016  # ${db:Status-Status} is dpkg-query's format, not the shell's
    [ "$(dpkg-query --admindir="$root/var/lib/dpkg" -W -f='${db:Status-Status}' "$1" 2>/dev/null)" = installed ]
}
missing=()
packages_present() {  # sets missing=(the packages of $packages not installed)
    local p
    missing=()
    for p in "${packages[@]}"; do dpkg_installed "$p" || missing+=("$p"); done
    if [ "${#missing[@]}" -eq 0 ]; then detail="${packages[*]}"; return 0; fi
    detail="missing: ${missing[*]}"
    return 1
}
install_packages() {
    local log
    log="$(mktemp)"
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
            --no-install-recommends "${missing[@]}"; } >"$log" 2>&1; then
        cat "$log" >&2
        die "apt-get could not install ${missing[*]} (its output above)"
    fi
    rm -f "$log"
}

user_id() {  # $1: user; prints its uid from $root/etc/passwd
    awk -F: -v u="$1" '$1 == u { print $3; found = 1 } END { exit !found }' "$root/etc/passwd" 2>/dev/null
}
group_id() {
    awk -F: -v g="$1" '$1 == g { print $3; found = 1 } END { exit !found }' "$root/etc/group" 2>/dev/null
}
in_group() {  # $1: user, $2: group
    awk -F: -v u="$1" -v g="$2" '
        $1 == g { n = split($4, members, ","); for (i = 1; i <= n; i++) if (members[i] == u) found = 1 }
        END { exit !found }' "$root/etc/group" 2>/dev/null
}

# -- --pi -----------------------------------------------------------------------------------

OPT=/opt/sensorkit
ETC=/etc/sensorkit
STATE=/var/lib/sensorkit
UNIT_DIR=/etc/systemd/system
UNIT="$UNIT_DIR/sensorkit.service"
DROPIN="$UNIT_DIR/sensorkit.service.d/credentials.conf"
PASSWORD_FILE="$ETC/influx-password"
WANTS="$UNIT_DIR/multi-user.target.wants/sensorkit.service"
LINK=/usr/local/bin/sensorkit
GROUPS_WANTED=(dialout i2c gpio)  # serial port, I2C bus, GPIO chip

kit_config() {  # the shipped agent.ini, for a kit: hardware backends, no console, 60 s windows
    sed -e 's/^backend = simulated$/backend = hardware/' \
        -e '/^\[console\]/,/^\[/ s/^enabled = yes$/enabled = no/' \
        -e '/^\[kit\]/,/^\[/ s/^interval = 10$/interval = 60/' \
        -e '/^\[kit\]/,/^\[/ s/^label = bench$/label = garden/' \
        -e 's/^description = sensorkit bench kit with simulated sensors$/description = sensorkit kit/' \
        agent.ini
}

source_stamp() {  # what /opt/sensorkit holds: the extra and a hash of the source installed
    local sum
    sum="$({ cat pyproject.toml
             find agent drivers -type f \( -name '*.py' -o -name '*.txt' \) -print0 \
                 | sort -z | xargs -0 sha256sum; } | sha256sum | cut -c1-16)"
    printf 'extra=%s source=%s\n' "${extra:-none}" "$sum"
}

check_user() {
    user_id sensorkit >/dev/null && detail="uid $(user_id sensorkit)"
}
make_user() {
    useradd --system --user-group --home-dir "$STATE" --no-create-home \
        --shell /usr/sbin/nologin --comment "sensorkit agent" sensorkit
}

groups_todo=()
check_groups() {  # also fails while the user does not exist yet (in a dry run)
    local g absent=()
    groups_todo=()
    for g in "${GROUPS_WANTED[@]}"; do
        if ! group_id "$g" >/dev/null; then absent+=("$g")
        elif ! in_group sensorkit "$g"; then groups_todo+=("$g"); fi
    done
    if [ "${#absent[@]}" -gt 0 ]; then
        say "warning: no group ${absent[*]} on this system: the agent may not reach the devices it guards (on Raspberry Pi OS they exist)"
    fi
    if [ "${#groups_todo[@]}" -gt 0 ]; then
        detail="not yet in: ${groups_todo[*]}"
        return 1
    fi
    detail="member of:$(for g in "${GROUPS_WANTED[@]}"; do in_group sensorkit "$g" && printf ' %s' "$g"; done)"
    [ "${#absent[@]}" -eq 0 ] || detail="$detail; no group here: ${absent[*]}"
}
add_groups() {
    local list
    list="$(IFS=,; printf '%s' "${groups_todo[*]}")"
    usermod -aG "$list" sensorkit
}

check_i2c() {
    command -v raspi-config >/dev/null \
        || die "--enable-i2c needs raspi-config (Raspberry Pi OS); elsewhere add dtparam=i2c_arm=on to /boot/firmware/config.txt and reboot"
    [ "$(raspi-config nonint get_i2c 2>/dev/null)" = 0 ]
}
enable_i2c_bus() { raspi-config nonint do_i2c 0; }

# The service's Python is the system's (/usr/bin/python3), never whatever python3 is first
# on root's PATH (a pyenv under /root: the sensorkit user could not even run it).
SYSTEM_PYTHON=/usr/bin/python3
system_python_version() {
    "$SYSTEM_PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null
}
check_venv() {
    local cfg="$root$OPT/pyvenv.cfg" want
    want="$(system_python_version || echo none)"
    grep -qx "home = ${SYSTEM_PYTHON%/*}" "$cfg" 2>/dev/null \
        && grep -q "^version = $want\." "$cfg" \
        && "$root$OPT/bin/python" -c '' 2>/dev/null \
        && detail="$OPT, Python $want from $SYSTEM_PYTHON"
}
make_venv() {
    [ -x "$SYSTEM_PYTHON" ] || die "$SYSTEM_PYTHON is missing: apt-get install python3-venv"
    "$SYSTEM_PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        || die "$SYSTEM_PYTHON is $("$SYSTEM_PYTHON" -V 2>&1); sensorkit needs 3.11 or newer"
    # --clear: a venv of another Python (an OS upgrade, or one made by hand) is made anew
    "$SYSTEM_PYTHON" -m venv --clear "$OPT"
}

venv_made=0
check_code() {
    local have
    [ "$venv_made" = 0 ] || return 1  # a new virtualenv holds nothing yet
    have="$(cat "$root$OPT/.sensorkit-source" 2>/dev/null || true)"
    [ "$have" = "$(source_stamp)" ] && detail="source unchanged, extra ${extra:-none}"
}
install_code() {
    local pip=("$OPT/bin/python" -m pip)
    "${pip[@]}" install -q --upgrade pip >/dev/null 2>&1 || true
    # RPi.GPIO and its Pi 5 drop-in rpi-lgpio both provide the RPi.GPIO module: one at a time
    case "$extra" in
    pi5) "${pip[@]}" uninstall -y -q RPi.GPIO >/dev/null 2>&1 || true ;;
    pi) "${pip[@]}" uninstall -y -q rpi-lgpio >/dev/null 2>&1 || true ;;
    esac
    if ! "${pip[@]}" install -q "$here${extra:+[$extra]}" >"$OPT/pip.log" 2>&1; then
        cat "$OPT/pip.log" >&2
        die "installing sensorkit into $OPT failed (log above, also in $OPT/pip.log)"
    fi
    source_stamp >"$OPT/.sensorkit-source"
    install -d -m 0755 "$OPT/share"
    install -m 0644 README.md "$OPT/share/README.md"
}

check_link() { [ "$(readlink "$root$LINK" 2>/dev/null)" = "$OPT/bin/sensorkit" ]; }
make_link() { ln -sfn "$OPT/bin/sensorkit" "$LINK"; }

check_config() {
    [ -e "$root$ETC/agent.ini" ] && detail="$ETC/agent.ini exists and is kept as it is"
}
write_config() {
    install -d -m 0755 "$ETC"
    local tmp
    tmp="$(mktemp)"
    kit_config >"$tmp"
    install -m 0640 -o root -g sensorkit "$tmp" "$ETC/agent.ini"
    rm -f "$tmp"
}

check_config_mode() {
    local have uid gid
    uid="$(user_id root || echo none)"
    gid="$(group_id sensorkit || echo none)"
    have="$(stat -c '%a %u %g' "$root$ETC/agent.ini" 2>/dev/null || true)"
    [ "$have" = "640 $uid $gid" ] && detail="mode 0640, owner root, group sensorkit"
}
fix_config_mode() {
    chown root:sensorkit "$ETC/agent.ini"
    chmod 0640 "$ETC/agent.ini"
}

check_state() {
    local uid gid
    uid="$(user_id sensorkit || echo none)"
    gid="$(group_id sensorkit || echo none)"
    [ "$(stat -c '%a %u %g' "$root$STATE" 2>/dev/null || true)" = "700 $uid $gid" ] \
        && detail="$STATE, mode 0700, owner sensorkit"
}
make_state() { install -d -m 0700 -o sensorkit -g sensorkit "$STATE"; }

units_changed=0
check_unit() { cmp -s systemd/sensorkit.service "$root$UNIT" && detail="$UNIT unchanged"; }
install_unit() { install -m 0644 systemd/sensorkit.service "$UNIT"; }

# The credentials drop-in: wanted exactly when the password file exists (LoadCredential= of a
# missing file stops the unit from starting).
check_dropin() {
    if [ -e "$root$PASSWORD_FILE" ]; then
        cmp -s systemd/sensorkit.service.d/credentials.conf "$root$DROPIN" \
            && [ "$(stat -c '%a %u' "$root$PASSWORD_FILE")" = "600 $(user_id root || echo none)" ] \
            && detail="$PASSWORD_FILE handed over as credential influx-password"
    else
        [ ! -e "$root$DROPIN" ] \
            && detail="not used: no $PASSWORD_FILE; the password comes from agent.ini"
    fi
}
dropin_does() {
    if [ -e "$root$PASSWORD_FILE" ]; then
        printf 'install %s (LoadCredential=influx-password:%s) and make that file root-only (0600)' \
            "$DROPIN" "$PASSWORD_FILE"
    else
        printf 'remove %s: %s is gone' "$DROPIN" "$PASSWORD_FILE"
    fi
}
sync_dropin() {
    if [ -e "$PASSWORD_FILE" ]; then
        chown root:root "$PASSWORD_FILE"
        chmod 0600 "$PASSWORD_FILE"
        install -D -m 0644 systemd/sensorkit.service.d/credentials.conf "$DROPIN"
    else
        rm -f "$DROPIN"
        rmdir --ignore-fail-on-non-empty "$(dirname "$DROPIN")" 2>/dev/null || true
    fi
}

check_reload_units() { [ "$units_changed" = 0 ] && detail="no unit file changed"; }
sd_booted() { [ -d /run/systemd/system ]; }  # what sd_booted(3) checks
reload_units() {
    if sd_booted; then systemctl daemon-reload
    else say "systemd is not running here (no /run/systemd/system): nothing to reload"; fi
}

check_enabled() { [ -L "$root$WANTS" ] && detail="starts at boot"; }
enable_unit() { systemctl enable sensorkit.service; }

service_active() { systemctl is-active --quiet sensorkit.service 2>/dev/null; }
check_running() {
    service_active && [ "$changed" = 0 ] && detail="running; nothing changed, so not restarted"
}
start_does() {
    if service_active; then printf 'restart sensorkit.service (its code, unit or config changed)'
    else printf 'start sensorkit.service (and wait for it to report READY)'; fi
}
start_service() {
    sd_booted || die "systemd is not running here (no /run/systemd/system: a container or a chroot?): sensorkit is installed and enabled, but cannot be started now; on the Pi it starts at boot"
    if ! systemctl restart sensorkit.service; then
        systemctl status --no-pager sensorkit.service >&2 || true
        journalctl -u sensorkit.service -n 30 --no-pager >&2 || true
        die "sensorkit.service did not start (above: its status and last log lines); fix $ETC/agent.ini and run: sudo systemctl restart sensorkit"
    fi
}

run_probe() {
    # With the service stopped for a moment: the probe and the agent would compete for the
    # serial port and the DHT22's GPIO line. As the sensorkit user, to show what it can reach.
    local was_active=0
    service_active && was_active=1
    [ "$was_active" = 0 ] || systemctl stop sensorkit.service
    runuser -u sensorkit -- "$OPT/bin/sensorkit" probe -c "$ETC/agent.ini" || true
    [ "$was_active" = 0 ] || systemctl start sensorkit.service
    cat <<EOF

Next: edit $ETC/agent.ini (sudo nano $ETC/agent.ini):
  [kit]     project (your network's code), label, geolocation (lat,lon,alt); serial defaults
            to this Pi's CPU serial; together they name the database <project>_<serial>
  sensors   enable what probe found above, with the port, address and pin it printed
  [influx]  url of your network's server, username; the password in $PASSWORD_FILE
            (root-only; run sudo ./install.sh --pi again to hand it to the service) or
            password_file
then: sudo systemctl restart sensorkit; systemctl status sensorkit; sensorkit status
EOF
}

pi_install() {
    local model=""
    if model="$(pi_model)"; then
        if is_pi5 "$model"; then extra=pi5; else extra=pi; fi
        if [ "$extra" = pi5 ]; then
            say "$model: installing with the pi5 extra (rpi-lgpio: RPi.GPIO does not work on a Pi 5)"
        else
            say "$model: installing with the pi extra (RPi.GPIO)"
        fi
    elif [ "$force" = 1 ]; then
        extra=""
        say "not a Raspberry Pi ($model_file says no): installing anyway (--force), without the GPIO extras"
    else
        die "this is not a Raspberry Pi (no 'Raspberry Pi' in $model_file): nothing was installed. For the bench here: ./install.sh --bench; to install the service anyway: add --force"
    fi
    if [ "$print_config" = 1 ]; then
        kit_config
        exit 0
    fi
    need_root
    [ "$dry" = 0 ] || say "dry run: nothing is changed${root:+ (inspecting $root as /)}"
    packages=(python3-venv python3-dev gcc libc6-dev i2c-tools libgpiod2)
    step "OS packages" packages_present "apt-get install them" install_packages
    step "system user sensorkit" check_user "create it: useradd --system --user-group --home-dir $STATE --shell /usr/sbin/nologin sensorkit" make_user
    step "groups of sensorkit (${GROUPS_WANTED[*]})" check_groups "add sensorkit to the groups it is not in yet (usermod -aG)" add_groups
    if [ "$enable_i2c" = 1 ]; then
        step "I2C bus" check_i2c "turn it on: raspi-config nonint do_i2c 0" enable_i2c_bus
    fi
    step "virtualenv $OPT" check_venv "create it: $SYSTEM_PYTHON -m venv $OPT" make_venv
    venv_made=$last_changed
    step "sensorkit in $OPT" check_code "pip install $here${extra:+[$extra]} into $OPT and record $(source_stamp) in $OPT/.sensorkit-source" install_code
    step "command $LINK" check_link "link it to $OPT/bin/sensorkit" make_link
    step "config $ETC/agent.ini" check_config "write it from ./agent.ini with hardware backends and the console off (never overwriting one)" write_config
    step "config permissions" check_config_mode "set owner root, group sensorkit, mode 0640" fix_config_mode
    step "state directory $STATE" check_state "create it: owner sensorkit, mode 0700" make_state
    step "unit $UNIT" check_unit "install systemd/sensorkit.service there" install_unit
    units_changed=$last_changed
    step "credentials drop-in" check_dropin "$(dropin_does)" sync_dropin
    units_changed=$((units_changed | last_changed))
    step "systemd reload" check_reload_units "run systemctl daemon-reload" reload_units
    step "enable at boot" check_enabled "run systemctl enable sensorkit.service" enable_unit
    step "service" check_running "$(start_does)" start_service
    report "sensorkit probe" "run sensorkit probe -c $ETC/agent.ini as user sensorkit and say what to edit" run_probe
    if [ ! -e /dev/i2c-1 ] && [ "$enable_i2c" = 0 ]; then
        say "no /dev/i2c-1: the I2C bus is off; for the BME280 run again with --enable-i2c"
    fi
    finish
}

finish() {
    if [ "$dry" = 1 ]; then
        if [ "$changed" = 0 ]; then say "dry run: everything is already in place; a real run would change nothing"
        else say "dry run: nothing was changed; run without --dry-run to do the steps above"; fi
    elif [ "$changed" = 0 ]; then
        say "everything was already in place: nothing changed"
    else
        say "done"
    fi
}

# -- --uninstall ----------------------------------------------------------------------------

check_service_gone() { [ ! -e "$root$UNIT" ] && ! service_active && detail="no $UNIT"; }
remove_service() {
    if sd_booted; then
        systemctl disable --now sensorkit.service || true
    else
        systemctl disable sensorkit.service || true  # works on the files alone
    fi
    rm -f "$UNIT" "$DROPIN"
    rmdir --ignore-fail-on-non-empty "$(dirname "$DROPIN")" 2>/dev/null || true
    if sd_booted; then
        systemctl daemon-reload || true
        systemctl reset-failed sensorkit.service 2>/dev/null || true
    fi
}
check_link_gone() { ! check_link && detail="no $LINK into $OPT"; }
remove_link() { rm -f "$LINK"; }
check_code_gone() { [ ! -e "$root$OPT" ] && detail="no $OPT"; }
remove_code() { rm -rf "$OPT"; }
check_config_gone() { [ ! -e "$root$ETC" ] && detail="no $ETC"; }
remove_config() { rm -rf "$ETC"; }
check_state_gone() { [ ! -e "$root$STATE" ] && detail="no $STATE"; }
remove_state() { rm -rf "$STATE"; }
check_user_gone() { ! user_id sensorkit >/dev/null && detail="no user sensorkit"; }
remove_user() { userdel sensorkit; }

uninstall() {
    need_root
    [ "$dry" = 0 ] || say "dry run: nothing is changed${root:+ (inspecting $root as /)}"
    step "service" check_service_gone "stop and disable sensorkit.service, remove $UNIT and its drop-ins" remove_service
    step "command $LINK" check_link_gone "remove the link" remove_link
    step "code $OPT" check_code_gone "remove $OPT" remove_code
    if [ "$purge" = 1 ]; then
        step "config $ETC" check_config_gone "remove $ETC (agent.ini, the password file)" remove_config
        step "data $STATE" check_state_gone "remove $STATE (the queues: points not yet sent are lost)" remove_state
        step "system user sensorkit" check_user_gone "remove it: userdel sensorkit" remove_user
    else
        step_no=$((step_no + 1))
        printf '[%d] config %s and data %s: kept (--purge removes them and the user)\n' "$step_no" "$ETC" "$STATE"
    fi
    finish
}

# -- --server -------------------------------------------------------------------------------

INFLUX_CONF=/etc/influxdb/influxdb.conf

# toml_get SECTION KEY FILE: the active value of KEY in [SECTION] (as written), or fail
toml_get() {
    awk -v s="[$1]" -v k="$2" '
        /^[[:space:]]*\[/ { gsub(/[[:space:]]/, ""); in_s = ($0 == s); next }
        in_s && $0 ~ "^[[:space:]]*" k "[[:space:]]*=" {
            sub("^[[:space:]]*" k "[[:space:]]*=[[:space:]]*", ""); print; found = 1; exit }
        END { exit !found }' "$3"
}
# toml_set SECTION KEY VALUE FILE: make KEY = VALUE active in [SECTION], in place of its
# commented default (Debian's file has "# key = default" lines), else right after the header
toml_set() {
    local tmp
    tmp="$(mktemp)"
    awk -v s="[$1]" -v k="$2" -v v="$3" '
        function put() { print "  " k " = " v; done = 1 }
        /^[[:space:]]*\[/ {
            if (in_s && !done) put()
            h = $0; gsub(/[[:space:]]/, "", h); in_s = (h == s); print; next }
        in_s && !done && $0 ~ "^[[:space:]]*#?[[:space:]]*" k "[[:space:]]*=" { put(); next }
        in_s && done && $0 ~ "^[[:space:]]*" k "[[:space:]]*=" { next }
        { print }
        END { if (in_s && !done) put() }' "$4" >"$tmp"
    cat "$tmp" >"$4"  # keeps the file's owner and mode
    rm -f "$tmp"
}

server_settings=()  # "key=value" pairs wanted in [http]
check_server_conf() {
    local pair key
    [ -f "$root$INFLUX_CONF" ] || return 1
    for pair in "${server_settings[@]}"; do
        key="${pair%%=*}"
        [ "$(toml_get http "$key" "$root$INFLUX_CONF" || true)" = "${pair#*=}" ] || return 1
    done
    detail="[http] ${server_settings[*]}"
}
write_server_conf() {
    local pair
    cp -p "$INFLUX_CONF" "$INFLUX_CONF.before-sensorkit" 2>/dev/null || true
    for pair in "${server_settings[@]}"; do
        toml_set http "${pair%%=*}" "${pair#*=}" "$INFLUX_CONF"
    done
}

check_tls_files() {
    local f
    for f in "$tls_cert" "$tls_key"; do
        [ -r "$root$f" ] || die "--tls-cert/--tls-key: cannot read $f; give the paths of the PEM certificate and its key"
    done
    if [ "$dry" = 0 ] && ! runuser -u influxdb -- test -r "$tls_key"; then
        die "user influxdb cannot read $tls_key: chgrp influxdb $tls_key && chmod 0640 $tls_key"
    fi
}

influx_changed=0
check_influx_running() {
    systemctl is-active --quiet influxdb.service 2>/dev/null && [ "$influx_changed" = 0 ] \
        && detail="running; its config did not change"
}
influx_start_does() {
    if systemctl is-active --quiet influxdb.service 2>/dev/null; then
        printf 'restart influxdb.service (its config changed)'
    else printf 'enable and start influxdb.service'; fi
}
start_influx() {
    systemctl enable influxdb.service
    systemctl restart influxdb.service
    local _
    for _ in $(seq 50); do influx_ping "$server_url" && return 0; sleep 0.2; done
    die "influxd does not answer on $server_url after a restart: see journalctl -u influxdb"
}

# What an unauthenticated query tells about the server's users, by influxd 1.x's answers:
# "create admin user first" while there is none, 401 once there is one.
admin_state() {
    python3 - "$server_url" <<'EOF'
import json, ssl, sys, urllib.error, urllib.parse, urllib.request
url = sys.argv[1] + "/query?" + urllib.parse.urlencode({"q": "SHOW USERS"})
context = ssl._create_unverified_context()  # localhost; the certificate names the host
try:
    with urllib.request.urlopen(url, timeout=5, context=context) as answer:
        body = json.loads(answer.read())
    print("no-auth")  # answered without credentials: auth is off
except urllib.error.HTTPError as err:
    text = err.read().decode("utf-8", "replace")
    print("no-admin" if "create admin user first" in text else "has-users")
except OSError:
    print("down")
EOF
}
check_admin() {
    case "$(admin_state)" in
    has-users) detail="the server has users; admins are kept as they are" ;;
    no-auth) if [ "$dry" = 1 ]; then return 1; fi
        die "$server_url answers without authentication: auth-enabled did not take effect; check $INFLUX_CONF [http]" ;;
    down) if [ "$dry" = 1 ]; then return 1; fi
        die "$server_url does not answer: see journalctl -u influxdb" ;;
    *) return 1 ;;
    esac
}
create_admin() {
    local password="${SENSORKIT_ADMIN_PASSWORD:-}" again
    if [ -z "$password" ]; then
        [ -r /dev/tty ] || die "no terminal to ask for the admin password: set SENSORKIT_ADMIN_PASSWORD"
        read -r -s -p "password for the new InfluxDB admin '$admin_user': " password </dev/tty; echo >&2
        read -r -s -p "the same again: " again </dev/tty; echo >&2
        [ "$password" = "$again" ] || die "the two passwords differ: nothing was created; run again"
    fi
    [ "${#password}" -ge 8 ] || die "the admin password is shorter than 8 characters: nothing was created"
    # The password goes to python through its environment, never a command line (ps shows those).
    INFLUX_ADMIN_PASSWORD="$password" python3 - "$server_url" "$admin_user" <<'EOF'
import json, os, ssl, sys, urllib.error, urllib.parse, urllib.request
url, user = sys.argv[1], sys.argv[2]
password = os.environ["INFLUX_ADMIN_PASSWORD"].replace("\\", "\\\\").replace("'", "\\'")
statement = f"CREATE USER \"{user}\" WITH PASSWORD '{password}' WITH ALL PRIVILEGES"
data = urllib.parse.urlencode({"q": statement}).encode()
context = ssl._create_unverified_context()
try:
    with urllib.request.urlopen(url + "/query", data=data, timeout=10, context=context) as a:
        results = json.loads(a.read())["results"]
except (OSError, ValueError) as err:
    sys.exit(f"install.sh: creating the admin user at {url} failed: {err}")
errors = [r["error"] for r in results if "error" in r]
if errors:
    sys.exit(f"install.sh: the server refused to create admin {user!r}: {errors[0]}")
EOF
    say "created admin user '$admin_user' at $server_url"
}

check_provision_venv() { [ -x .venv/bin/sensorkit ] && detail="$here/.venv/bin/sensorkit"; }
make_provision_venv() { venv_setup ""; }

server_install() {
    need_root
    if [ "$dry" = 1 ]; then command -v python3 >/dev/null || die "python3 is needed to check the server"
    else need_python; fi
    if [ -n "$tls_cert$tls_key" ] && { [ -z "$tls_cert" ] || [ -z "$tls_key" ]; }; then
        die_usage "--tls-cert and --tls-key go together"
    fi
    case "$admin_user" in
    [A-Za-z_]*) [[ "$admin_user" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] \
        || die_usage "--admin-user $admin_user: letters, digits and _ only" ;;
    *) die_usage "--admin-user $admin_user: letters, digits and _ only, not starting with a digit" ;;
    esac
    local scheme=http
    [ -z "$tls_cert" ] || scheme=https
    server_url="${SENSORKIT_SERVER_URL:-$scheme://127.0.0.1:8086}"
    [ "$dry" = 0 ] || say "dry run: nothing is changed${root:+ (inspecting $root as /)}"
    packages=(influxdb influxdb-client python3-venv)
    step "OS packages" packages_present "apt-get install them" install_packages
    server_settings=("auth-enabled=true")
    if [ -n "$tls_cert" ]; then
        check_tls_files
        server_settings+=("https-enabled=true" "https-certificate=\"$tls_cert\"" "https-private-key=\"$tls_key\"")
    fi
    step "$INFLUX_CONF" check_server_conf "set in [http]: ${server_settings[*]} (a copy of the file before: $INFLUX_CONF.before-sensorkit)" write_server_conf
    influx_changed=$last_changed
    step "influxdb service" check_influx_running "$(influx_start_does)" start_influx
    step "admin user" check_admin "create admin user '$admin_user' (password from \$SENSORKIT_ADMIN_PASSWORD, else prompted)" create_admin
    step "sensorkit for provision" check_provision_venv "make $here/.venv with sensorkit (python3 -m venv; pip install -e .)" make_provision_venv
    cat <<EOF

Next, for each kit (from this folder; the admin password is prompted, or taken from
\$SENSORKIT_ADMIN_PASSWORD):
  .venv/bin/sensorkit provision --url $scheme://THIS-HOST:8086 --project P --serial S --label L
It creates the kit's database, a kit user that may only write it, retention and hourly and
daily means, and prints the kit's [influx] settings; --kits FILE.csv does many kits at once and
writes one agent.ini per kit. Open port 8086 to the kits only (a firewall), and with HTTPS give
each kit the CA certificate as [influx] ca_file.
EOF
    finish
}

# -- the modes ------------------------------------------------------------------------------

main() {
    parse_args "$@"
    check_args
    root="${SENSORKIT_ROOT:-}"
    root="${root%/}"
    if [ -n "$root" ] && [ "$dry" != 1 ]; then
        die "SENSORKIT_ROOT=$root works with --dry-run only (for tests); a real install goes to /"
    fi
    case "$mode" in
    test)
        need_python
        tools=()
        { command -v influxd >/dev/null && command -v influx >/dev/null; } || tools+=(influxdb influxdb-client)
        command -v shellcheck >/dev/null || tools+=(shellcheck)
        if [ "${#tools[@]}" -gt 0 ]; then
            apt_install "${tools[@]}" || die "the tests need ${tools[*]} (Debian packages); could not install them (need root or sudo)"
        fi
        if ! command -v systemd-analyze >/dev/null; then
            apt_install systemd || say "no systemd-analyze (Debian package systemd): the unit's verify and security tests will be skipped"
        fi
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
    bench)
        need_python
        venv_setup dev
        config="$here/agent.ini"
        if need_influxdb && start_local_influxd; then
            database="$(bench_database "$config")"
            say "running the agent: simulated sensors, console and InfluxDB output (Ctrl-C stops it)"
            say "in a second terminal, look at the data: influx -database $database -execute 'SELECT * FROM data'"
            say "and at the agent: .venv/bin/sensorkit status -c agent.ini (or: . .venv/bin/activate; sensorkit status)"
        else
            mkdir -p .bench
            sed '/^\[influx\]/,/^\[/ s/^enabled = yes$/enabled = no/' agent.ini > .bench/agent.ini
            config="$here/.bench/agent.ini"
            say "no InfluxDB here: running with console output only"
        fi
        .venv/bin/sensorkit run -c "$config"
        ;;
    pi) pi_install ;;
    server) server_install ;;
    uninstall) uninstall ;;
    esac
}

# Run when executed; when sourced (the tests call single functions) only define them.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    main "$@"
fi
