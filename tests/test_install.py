"""install.sh: --help, refusing to install where it should not, the Pi, server and uninstall
steps in order (--dry-run, with faked Pi 4 and Pi 5 model files), a second run on an
installed tree doing nothing, the kit's agent.ini, the server's config edit and admin user
against a real influxd; `bash -n` and shellcheck."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import tomllib
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from conftest import ROOT, _require_influxd
from influxd import free_port, influxd_binary

from agent.config import load

INSTALL = ROOT / "install.sh"
PI4 = "Raspberry Pi 4 Model B Rev 1.4"
PI5 = "Raspberry Pi 5 Model B Rev 1.0"
PI_STEPS = [
    "OS packages",
    "system user sensorkit",
    "groups of sensorkit (dialout i2c gpio)",
    "virtualenv /opt/sensorkit",
    "sensorkit in /opt/sensorkit",
    "command /usr/local/bin/sensorkit",
    "config /etc/sensorkit/agent.ini",
    "config permissions",
    "state directory /var/lib/sensorkit",
    "unit /etc/systemd/system/sensorkit.service",
    "credentials drop-in",
    "systemd reload",
    "enable at boot",
    "service",
    "sensorkit probe",
]
STEP = re.compile(r"^\[(\d+)\] (.+?): (already done|would|kept)(.*)$")


def run(*args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    environment = {
        k: v for k, v in os.environ.items() if not k.startswith(("SENSORKIT_", "NOTIFY_"))
    }
    environment.update(env or {})
    return subprocess.run(
        ["bash", str(INSTALL), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=environment,
        stdin=subprocess.DEVNULL,
    )


def steps(done: subprocess.CompletedProcess) -> list[tuple[str, str, str]]:
    """(title, verdict, rest) of each numbered step line, checking they count 1, 2, 3..."""
    out = []
    for line in done.stdout.splitlines():
        match = STEP.match(line)
        if match:
            assert int(match[1]) == len(out) + 1, done.stdout
            out.append((match[2], match[3], match[4]))
    return out


def model_file(tmp_path: Path, model: str) -> Path:
    path = tmp_path / "model"
    path.write_bytes(model.encode() + b"\0")  # as the kernel writes it: NUL-terminated
    return path


def pi_env(tmp_path: Path, model: str | None = PI4, root: Path | None = None) -> dict:
    env = {"SENSORKIT_DT_MODEL": str(model_file(tmp_path, model) if model else tmp_path / "no")}
    if root is not None:
        env["SENSORKIT_ROOT"] = str(root)
    return env


# -- usage ----------------------------------------------------------------------------------


def test_help_exits_0_and_describes_every_option():
    done = run("--help")
    assert done.returncode == 0 and done.stderr == ""
    script = INSTALL.read_text()
    parser = script[script.index("parse_args() {") : script.index("only_with() {")]
    options = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", parser)) | {"-h"}
    assert len(options) >= 15, options
    for option in options:
        assert re.search(rf"^\s+{re.escape(option)}\b", done.stdout, re.M) or (
            f" {option} " in done.stdout
        ), f"--help does not describe {option}"
    environment = set(re.findall(r"\$\{?(SENSORKIT_[A-Z_]+)", script))
    for name in environment:
        assert name in done.stdout, f"--help does not name {name}"


def test_bare_install_sh_installs_nothing_and_points_a_pi_at_the_pi_mode(tmp_path):
    done = run(env=pi_env(tmp_path, model=None))
    assert done.returncode == 2
    assert "usage: ./install.sh MODE" in done.stderr
    assert "no mode given: nothing was installed" in done.stderr
    assert done.stdout == ""
    on_pi = run(env=pi_env(tmp_path, PI4))
    assert on_pi.returncode == 2 and on_pi.stdout == ""
    assert f"this is a {PI4}: to install the kit here, run: sudo ./install.sh --pi" in (
        on_pi.stderr
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--pi", "--bench"], "choose one mode, not --pi and --bench"),
        (["--pi", "--frobnicate"], "unknown option: --frobnicate"),
        (["--bench", "--dry-run"], "--dry-run goes with --pi --server --uninstall, not --bench"),
        (["--server", "--purge"], "--purge goes with --uninstall, not --server"),
        (["--server", "--tls-cert"], "--tls-cert needs a value"),
        (["--server", "--dry-run", "--tls-cert", "/c.pem"], "--tls-cert and --tls-key go together"),
        (["--server", "--dry-run", "--admin-user", "x'; DROP"], "letters, digits and _ only"),
    ],
)
def test_bad_usage_exits_2_saying_what_is_wrong(tmp_path, args, message):
    done = run(*args, env=pi_env(tmp_path))
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert done.stdout == ""


def test_a_real_install_needs_root_and_a_fake_root_needs_dry_run(tmp_path):
    done = run("--pi", env=pi_env(tmp_path, root=tmp_path / "root"))
    assert done.returncode == 1
    assert "works with --dry-run only" in done.stderr and done.stdout == ""


# -- the Pi install, dry run ----------------------------------------------------------------


def test_off_a_pi_the_system_install_refuses_even_a_dry_run(tmp_path):
    for model in (None, "QEMU Standard PC"):
        done = run("--pi", "--dry-run", env=pi_env(tmp_path, model))
        assert done.returncode == 1
        assert "this is not a Raspberry Pi" in done.stderr
        assert "./install.sh --bench" in done.stderr and "--force" in done.stderr
        assert steps(done) == []


def test_off_a_pi_force_lists_the_steps_without_the_gpio_extras(tmp_path):
    done = run("--pi", "--dry-run", "--force", env=pi_env(tmp_path, None, tmp_path / "root"))
    assert done.returncode == 0, done.stderr
    assert [title for title, _, _ in steps(done)] == PI_STEPS
    assert "installing anyway (--force), without the GPIO extras" in done.stderr
    assert f"would pip install {ROOT} into /opt/sensorkit" in done.stdout


def fresh_pi_root(tmp_path: Path) -> Path:
    """A Raspberry Pi OS as flashed, as far as the installer looks: its users and groups."""
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/passwd").write_text(
        "root:x:0:0::/root:/bin/bash\npi:x:1000:1000::/home/pi:/bin/bash\n"
    )
    (root / "etc/group").write_text("root:x:0:\ndialout:x:20:pi\ni2c:x:998:pi\ngpio:x:997:pi\n")
    return root


@pytest.mark.parametrize(("model", "extra"), [(PI4, "pi"), (PI5, "pi5")])
def test_on_a_pi_a_dry_run_lists_every_step_in_order_and_changes_nothing(tmp_path, model, extra):
    root = fresh_pi_root(tmp_path)
    before = sorted(root.rglob("*"))
    done = run("--pi", "--dry-run", env=pi_env(tmp_path, model, root))
    assert done.returncode == 0, done.stderr
    listed = steps(done)
    assert [title for title, _, _ in listed] == PI_STEPS
    assert all(
        verdict == "would"
        for title, verdict, _ in listed
        if title
        not in (
            "credentials drop-in",  # no password file: nothing to do
        )
    )
    assert f"would pip install {ROOT}[{extra}] into /opt/sensorkit" in done.stdout
    assert f"{model}: installing with the {extra} extra" in done.stderr
    assert "would start sensorkit.service" in done.stdout
    assert "would run sensorkit probe" in done.stdout
    assert "nothing was changed" in done.stderr
    assert "(not yet in: dialout i2c gpio)" in done.stdout
    assert sorted(root.rglob("*")) == before  # nothing written


def test_enable_i2c_adds_the_raspi_config_step_after_the_groups(tmp_path):
    bin_dir = stub_commands(tmp_path, i2c_enabled=False)
    done = run(
        "--pi",
        "--dry-run",
        "--enable-i2c",
        env={**pi_env(tmp_path), "PATH": f"{bin_dir}:{os.environ['PATH']}"},
    )
    assert done.returncode == 0, done.stderr
    titles = [title for title, _, _ in steps(done)]
    assert titles[3] == "I2C bus" and titles[2].startswith("groups")
    assert "[4] I2C bus: would turn it on: raspi-config nonint do_i2c 0" in done.stdout


def test_the_pi5_extra_installs_rpi_lgpio_instead_of_rpi_gpio():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    names = {k: {re.split(r"[<>=;\[ ]", r)[0].lower() for r in v} for k, v in extras.items()}
    assert {"rpi.gpio", "adafruit-blinka"} <= names["pi"] and "rpi-lgpio" not in names["pi"]
    assert {"rpi-lgpio", "adafruit-blinka"} <= names["pi5"] and "rpi.gpio" not in names["pi5"]


def test_the_kit_config_has_hardware_backends_and_no_console(tmp_path):
    done = run("--pi", "--print-config", env=pi_env(tmp_path))
    assert done.returncode == 0, done.stderr
    path = tmp_path / "agent.ini"
    path.write_text(done.stdout)
    settings = load(path)
    assert {s.name: s.backend for s in settings.sensors} == {
        "dylos": "hardware",
        "dht22": "hardware",
        "bme280": "hardware",
    }
    assert not settings.console.enabled
    assert settings.kit.interval == 60
    shipped = (ROOT / "agent.ini").read_text().splitlines()
    changed = [
        new for old, new in zip(shipped, done.stdout.splitlines(), strict=True) if old != new
    ]
    assert sorted(changed) == sorted(
        ["backend = hardware"] * 3
        + ["enabled = no", "interval = 60", "label = garden", "description = sensorkit kit"]
    )


# -- a second run on an installed tree --------------------------------------------------------


def stub_commands(tmp_path: Path, active: bool = True, i2c_enabled: bool = True) -> Path:
    """The two things a directory tree cannot hold: whether a service runs (systemctl
    is-active) and the Pi's I2C setting (raspi-config nonint get_i2c)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    (bin_dir / "systemctl").write_text(
        "#!/bin/sh\n"
        f'[ "$1" = is-active ] && exit {0 if active else 3}\n'
        'echo "systemctl stub: only is-active in tests" >&2; exit 1\n'
    )
    (bin_dir / "raspi-config").write_text(
        f'#!/bin/sh\n[ "$1 $2" = "nonint get_i2c" ] && echo {0 if i2c_enabled else 1}\n'
    )
    for name in ("systemctl", "raspi-config"):
        (bin_dir / name).chmod(0o755)
    return bin_dir


def dpkg_status(root: Path, packages: list[str]) -> None:
    (root / "var/lib/dpkg").mkdir(parents=True, exist_ok=True)
    (root / "var/lib/dpkg/status").write_text(
        "".join(
            f"Package: {p}\nStatus: install ok installed\nMaintainer: x\nVersion: 1\n"
            f"Architecture: all\nDescription: x\n\n"
            for p in packages
        )
    )


SYSTEM_PYTHON = Path("/usr/bin/python3")


def system_python_version() -> str:
    """The service's Python: the system's. Without one the installer makes no virtualenv."""
    if not SYSTEM_PYTHON.exists():
        pytest.skip("no /usr/bin/python3 (Debian's python3) to build /opt/sensorkit from")
    done = subprocess.run([SYSTEM_PYTHON, "-V"], capture_output=True, text=True, check=True)
    return done.stdout.split()[1]


def installed_pi_root(tmp_path: Path, first: subprocess.CompletedProcess) -> Path:
    """What `sudo ./install.sh --pi` leaves, made by hand under a directory, from what the
    first dry run said it would do. Owners are this test's user, named root and sensorkit
    in the tree's own passwd and group files (so it works without root)."""
    root = tmp_path / "root"
    uid, gid = os.getuid(), os.getgid()
    dpkg_status(root, ["python3-venv", "python3-dev", "gcc", "libc6-dev", "i2c-tools", "libgpiod2"])
    etc = root / "etc"
    (etc / "sensorkit").mkdir(parents=True)
    (etc / "passwd").write_text(
        f"root:x:{uid}:{gid}::/root:/bin/sh\n"
        f"sensorkit:x:{uid}:{gid}::/var/lib/sensorkit:/usr/sbin/nologin\n"
    )
    (etc / "group").write_text(
        f"root:x:{gid}:\nsensorkit:x:{gid}:\ndialout:x:20:sensorkit\n"
        "i2c:x:998:pi,sensorkit\ngpio:x:997:sensorkit\n"
    )
    opt = root / "opt/sensorkit"
    (opt / "bin").mkdir(parents=True)
    (opt / "bin/python").symlink_to(SYSTEM_PYTHON)
    (opt / "pyvenv.cfg").write_text(f"home = /usr/bin\nversion = {system_python_version()}\n")
    stamp = re.search(r"record (extra=\S+ source=\S+) in", first.stdout)[1]
    (opt / ".sensorkit-source").write_text(stamp + "\n")
    (root / "usr/local/bin").mkdir(parents=True)
    (root / "usr/local/bin/sensorkit").symlink_to("/opt/sensorkit/bin/sensorkit")
    config = etc / "sensorkit/agent.ini"
    config.write_text("[kit]\nproject = Mine\n")  # the volunteer's edits: never overwritten
    config.chmod(0o640)
    state = root / "var/lib/sensorkit"
    state.mkdir(parents=True)
    state.chmod(0o700)
    units = etc / "systemd/system"
    (units / "multi-user.target.wants").mkdir(parents=True)
    shutil.copy(ROOT / "systemd/sensorkit.service", units / "sensorkit.service")
    (units / "multi-user.target.wants/sensorkit.service").symlink_to(
        "/etc/systemd/system/sensorkit.service"
    )
    return root


@pytest.mark.parametrize("model", [PI4, PI5])
def test_a_second_run_on_an_installed_pi_changes_nothing_and_says_so_per_step(tmp_path, model):
    root = tmp_path / "root"
    env = {
        **pi_env(tmp_path, model, root),
        "PATH": f"{stub_commands(tmp_path)}:{os.environ['PATH']}",
    }
    first = run("--pi", "--dry-run", "--enable-i2c", env=env)
    assert first.returncode == 0, first.stderr
    installed_pi_root(tmp_path, first)
    again = run("--pi", "--dry-run", "--enable-i2c", env=env)
    assert again.returncode == 0, again.stderr
    listed = steps(again)
    assert [t for t, _, _ in listed] == PI_STEPS[:3] + ["I2C bus"] + PI_STEPS[3:]
    for title, verdict, rest in listed:
        if title == "sensorkit probe":
            assert verdict == "would" and rest.endswith("(read-only)")  # it only looks
        else:
            assert verdict == "already done", (title, rest)
    assert "(/etc/sensorkit/agent.ini exists and is kept as it is)" in again.stdout
    assert "(running; nothing changed, so not restarted)" in again.stdout
    assert "a real run would change nothing" in again.stderr


def test_changed_code_is_reinstalled_and_the_service_restarted_and_nothing_else(tmp_path):
    root = tmp_path / "root"
    env = {**pi_env(tmp_path, PI4, root), "PATH": f"{stub_commands(tmp_path)}:{os.environ['PATH']}"}
    installed_pi_root(tmp_path, run("--pi", "--dry-run", env=env))
    (root / "opt/sensorkit/.sensorkit-source").write_text("extra=pi source=0123456789abcdef\n")
    done = run("--pi", "--dry-run", env=env)
    todo = [(t, r) for t, v, r in steps(done) if v == "would" and t != "sensorkit probe"]
    assert [t for t, _ in todo] == ["sensorkit in /opt/sensorkit", "service"]
    assert "restart sensorkit.service" in todo[1][1]


def test_a_virtualenv_of_another_python_is_made_anew_with_the_code(tmp_path):
    """An OS upgrade (another Python) or a venv made from root's pyenv: rebuilt, from
    /usr/bin/python3, and the code reinstalled into it."""
    root = tmp_path / "root"
    env = {**pi_env(tmp_path, PI4, root), "PATH": f"{stub_commands(tmp_path)}:{os.environ['PATH']}"}
    installed_pi_root(tmp_path, run("--pi", "--dry-run", env=env))
    (root / "opt/sensorkit/pyvenv.cfg").write_text("home = /root/.pyenv/versions/3.11.7/bin\n")
    done = run("--pi", "--dry-run", env=env)
    todo = [t for t, v, _ in steps(done) if v == "would" and t != "sensorkit probe"]
    assert todo == ["virtualenv /opt/sensorkit", "sensorkit in /opt/sensorkit", "service"]
    assert "would create it: /usr/bin/python3 -m venv /opt/sensorkit" in done.stdout


def test_a_password_file_brings_the_credentials_drop_in_and_a_root_only_mode(tmp_path):
    root = tmp_path / "root"
    env = {**pi_env(tmp_path, PI4, root), "PATH": f"{stub_commands(tmp_path)}:{os.environ['PATH']}"}
    installed_pi_root(tmp_path, run("--pi", "--dry-run", env=env))
    password = root / "etc/sensorkit/influx-password"
    password.write_text("kit-password\n")
    password.chmod(0o644)
    done = run("--pi", "--dry-run", env=env)
    todo = {t: r for t, v, r in steps(done) if v == "would" and t != "sensorkit probe"}
    assert set(todo) == {"credentials drop-in", "systemd reload", "service"}
    assert (
        "LoadCredential=influx-password:/etc/sensorkit/influx-password"
        in todo["credentials drop-in"]
        and "root-only (0600)" in todo["credentials drop-in"]
    )
    dropin = root / "etc/systemd/system/sensorkit.service.d/credentials.conf"
    dropin.parent.mkdir()
    shutil.copy(ROOT / "systemd/sensorkit.service.d/credentials.conf", dropin)
    password.chmod(0o600)
    again = run("--pi", "--dry-run", env=env)
    assert "a real run would change nothing" in again.stderr, again.stdout
    assert "kit-password" not in again.stdout + again.stderr
    password.unlink()  # the password moved back into agent.ini: the drop-in must go
    gone = run("--pi", "--dry-run", env=env)
    assert "[11] credentials drop-in: would remove" in gone.stdout


# -- --uninstall ------------------------------------------------------------------------------


def test_uninstall_removes_service_and_code_and_keeps_config_and_data(tmp_path):
    root = tmp_path / "root"
    env = {**pi_env(tmp_path, PI4, root), "PATH": f"{stub_commands(tmp_path)}:{os.environ['PATH']}"}
    installed_pi_root(tmp_path, run("--pi", "--dry-run", env=env))
    done = run("--uninstall", "--dry-run", env=env)
    assert done.returncode == 0, done.stderr
    assert [(t, v) for t, v, _ in steps(done)] == [
        ("service", "would"),
        ("command /usr/local/bin/sensorkit", "would"),
        ("code /opt/sensorkit", "would"),
        ("config /etc/sensorkit and data /var/lib/sensorkit", "kept"),
    ]
    purge = run("--uninstall", "--purge", "--dry-run", env=env)
    assert [(t, v) for t, v, _ in steps(purge)][3:] == [
        ("config /etc/sensorkit", "would"),
        ("data /var/lib/sensorkit", "would"),
        ("system user sensorkit", "would"),
    ]
    assert "points not yet sent are lost" in purge.stdout
    stopped = stub_commands(tmp_path / "stopped", active=False)
    nothing = run(
        "--uninstall",
        "--purge",
        "--dry-run",
        env={
            **env,
            "SENSORKIT_ROOT": str(tmp_path / "empty"),
            "PATH": f"{stopped}:{os.environ['PATH']}",
        },
    )
    assert {v for _, v, _ in steps(nothing)} == {"already done"}


# -- --server ---------------------------------------------------------------------------------

SERVER_STEPS = [
    "OS packages",
    "/etc/influxdb/influxdb.conf",
    "influxdb service",
    "admin user",
    "sensorkit for provision",
]


def test_server_dry_run_lists_its_steps_and_how_to_provision_kits(tmp_path):
    env = {
        "SENSORKIT_ROOT": str(tmp_path / "root"),
        "SENSORKIT_SERVER_URL": f"http://127.0.0.1:{free_port()}",
    }
    done = run("--server", "--dry-run", env=env)
    assert done.returncode == 0, done.stderr
    listed = steps(done)
    assert [t for t, _, _ in listed] == SERVER_STEPS
    assert listed[1][2] == (
        " set in [http]: auth-enabled=true (a copy of the file before: "
        "/etc/influxdb/influxdb.conf.before-sensorkit)"
    )
    assert "create admin user 'admin' (password from $SENSORKIT_ADMIN_PASSWORD, else prompted)" in (
        done.stdout
    )
    assert ".venv/bin/sensorkit provision --url http://THIS-HOST:8086 --project P" in done.stdout


def test_server_tls_paths_go_into_the_http_section(tmp_path):
    root = tmp_path / "root"
    (root / "etc/ssl").mkdir(parents=True)
    for name in ("kits.pem", "kits.key"):
        (root / "etc/ssl" / name).write_text("x")
    done = run(
        "--server",
        "--dry-run",
        "--tls-cert",
        "/etc/ssl/kits.pem",
        "--tls-key",
        "/etc/ssl/kits.key",
        env={"SENSORKIT_ROOT": str(root)},
    )
    assert done.returncode == 0, done.stderr
    assert (
        'auth-enabled=true https-enabled=true https-certificate="/etc/ssl/kits.pem" '
        'https-private-key="/etc/ssl/kits.key"'
    ) in done.stdout
    assert "provision --url https://THIS-HOST:8086" in done.stdout
    missing = run(
        "--server",
        "--dry-run",
        "--tls-cert",
        "/etc/ssl/nope.pem",
        "--tls-key",
        "/etc/ssl/kits.key",
        env={"SENSORKIT_ROOT": str(root)},
    )
    assert missing.returncode == 1 and "cannot read /etc/ssl/nope.pem" in missing.stderr


def test_a_second_server_run_against_an_installed_server_changes_nothing(tmp_path, auth_influx):
    root = tmp_path / "root"
    dpkg_status(root, ["influxdb", "influxdb-client", "python3-venv"])
    (root / "etc/influxdb").mkdir(parents=True)
    (root / "etc/influxdb/influxdb.conf").write_text("[meta]\n[http]\n  auth-enabled = true\n")
    env = {
        "SENSORKIT_ROOT": str(root),
        "SENSORKIT_SERVER_URL": auth_influx.url,
        "PATH": f"{stub_commands(tmp_path)}:{os.environ['PATH']}",
    }
    done = run("--server", "--dry-run", env=env)
    assert done.returncode == 0, done.stderr
    assert {(t, v) for t, v, _ in steps(done)} == {(t, "already done") for t in SERVER_STEPS}
    assert "the server has users" in done.stdout
    assert "a real run would change nothing" in done.stderr


def debian_influxdb_conf() -> str:
    path = Path("/etc/influxdb/influxdb.conf")  # shipped by Debian's influxdb package
    if not path.exists():
        if os.environ.get("CI"):
            pytest.fail("influxdb is installed in CI but /etc/influxdb/influxdb.conf is missing")
        pytest.skip("Debian's influxdb package (its /etc/influxdb/influxdb.conf) is not installed")
    return path.read_text()


def sourced(script: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run install.sh's own functions (sourced, so its main does not run)."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("SENSORKIT_")}
    environment.update(env or {})
    return subprocess.run(
        ["bash", "-c", f"source {INSTALL}\n{script}"],
        capture_output=True,
        text=True,
        timeout=60,
        env=environment,
        stdin=subprocess.DEVNULL,
    )


def test_the_config_edit_turns_auth_on_in_debians_own_file_once(tmp_path):
    conf = tmp_path / "influxdb.conf"
    original = debian_influxdb_conf()
    conf.write_text(original)
    edit = f"toml_set http auth-enabled true {conf}; toml_set http auth-enabled true {conf}"
    assert sourced(edit).returncode == 0
    text = conf.read_text()
    assert re.findall(r"^\s*#?\s*auth-enabled.*$", text, re.M) == ["  auth-enabled = true"]
    assert len(text.splitlines()) == len(original.splitlines())  # the commented line replaced
    http = text[text.index("\n[http]") : text.index("\n[", text.index("\n[http]") + 1)]
    assert "auth-enabled = true" in http
    assert sourced(f"toml_get http auth-enabled {conf}").stdout == "true\n"
    assert sourced(f"toml_get meta auth-enabled {conf}").returncode == 1


def test_the_edited_server_requires_auth_and_gets_its_admin_once(tmp_path):
    """Debian's influxdb.conf as install.sh edits it, served by a real influxd (dirs and
    ports moved by influxd's own environment overrides): no admin, then the admin is created
    from SENSORKIT_ADMIN_PASSWORD (quotes and backslashes included) and can log in."""
    _require_influxd()
    conf = tmp_path / "influxdb.conf"
    conf.write_text(debian_influxdb_conf())
    assert sourced(f"toml_set http auth-enabled true {conf}").returncode == 0
    port = free_port()
    env = {
        **os.environ,
        "INFLUXDB_META_DIR": str(tmp_path / "meta"),
        "INFLUXDB_DATA_DIR": str(tmp_path / "data"),
        "INFLUXDB_DATA_WAL_DIR": str(tmp_path / "wal"),
        "INFLUXDB_HTTP_BIND_ADDRESS": f"127.0.0.1:{port}",
        "INFLUXDB_BIND_ADDRESS": f"127.0.0.1:{free_port()}",
        "INFLUXDB_REPORTING_DISABLED": "true",
        "INFLUXDB_HTTP_LOG_ENABLED": "false",
    }
    with open(tmp_path / "influxd.log", "wb") as log:
        server = subprocess.Popen(
            [influxd_binary(), "-config", str(conf)], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    try:
        ping = sourced(
            f"for _ in $(seq 100); do influx_ping {url} && exit 0; sleep 0.1; done; exit 1"
        )
        assert ping.returncode == 0, (tmp_path / "influxd.log").read_text()
        assert sourced(f"server_url={url}; admin_state").stdout == "no-admin\n"
        password = "it's a \\ sp3cial pw"
        create = sourced(
            f"server_url={url}; admin_user=chief; create_admin",
            env={"SENSORKIT_ADMIN_PASSWORD": password},
        )
        assert create.returncode == 0, create.stderr
        assert password not in create.stdout + create.stderr
        assert f"created admin user 'chief' at {url}" in create.stderr
        assert sourced(f"server_url={url}; admin_state").stdout == "has-users\n"
        check = sourced(f'server_url={url}; dry=0; check_admin && echo "$detail"')
        assert check.stdout == "the server has users; admins are kept as they are\n"
        token = base64.b64encode(f"chief:{password}".encode()).decode()
        request = urllib.request.Request(
            f"{url}/query?" + urllib.parse.urlencode({"q": "SHOW USERS"}),
            headers={"Authorization": f"Basic {token}"},
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            users = json.loads(answer.read())["results"][0]["series"][0]["values"]
        assert users == [["chief", True]]
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{url}/query?q=SHOW+DATABASES", timeout=10)
        assert refused.value.code == 401
    finally:
        server.terminate()
        server.wait(timeout=20)


def test_a_short_admin_password_is_refused_before_anything_is_created(tmp_path):
    done = sourced(
        "server_url=http://127.0.0.1:9; create_admin", env={"SENSORKIT_ADMIN_PASSWORD": "short"}
    )
    assert done.returncode == 1
    assert "shorter than 8 characters: nothing was created" in done.stderr
    assert "short" not in done.stderr.replace("shorter", "")


# -- the script itself ------------------------------------------------------------------------


def test_install_sh_parses_with_bash_n():
    done = subprocess.run(["bash", "-n", str(INSTALL)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_install_sh_is_shellcheck_clean():
    if shutil.which("shellcheck") is None:
        if os.environ.get("CI"):
            pytest.fail("shellcheck is missing in CI; ./install.sh --test must install it")
        pytest.skip("shellcheck not installed (./install.sh --test installs it)")
    done = subprocess.run(["shellcheck", str(INSTALL)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
