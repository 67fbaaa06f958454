"""The ``sensorkit`` command line (also ``python -m agent``). Exit codes: 0 ok, 2 bad usage or
bad config or bad input, 1 any other failure."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from pathlib import Path

from agent import __version__
from agent.buffer import QueueBusy, read_quarantine, release_quarantined
from agent.config import ConfigError, Settings, find_config, load
from agent.influx import InfluxError
from agent.progress import Progress
from agent.telegram import Ident, Telegram, TelegramError, parse_telegrams

log = logging.getLogger("sensorkit")


def _settings(args: argparse.Namespace) -> Settings:
    return load(find_config(args.config))


def cmd_run(args: argparse.Namespace) -> int:
    from agent.outputs import open_outputs
    from agent.runner import Agent

    settings = _settings(args)
    outputs = open_outputs(settings, "influx", database=settings.influx.database)
    agent = Agent(settings, outputs)

    def stop(signum: int, _frame: object) -> None:
        log.info("got %s; finishing the current window and stopping", signal.Signals(signum).name)
        agent.stop.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if args.duration:
        threading.Timer(args.duration, agent.stop.set).start()
    log.info(
        "sensorkit %s: kit %s_%s, window %d s, outputs: %s",
        __version__,
        settings.kit.project,
        settings.kit.serial,
        settings.kit.interval,
        ", ".join(o.name for o in outputs) or "none",
    )
    return agent.run()


def _read_files(names: list[str]) -> list[tuple[str, list[Telegram]]]:
    """Every file parsed before anything is sent: one bad file refuses them all."""
    parsed = []
    for name in names:
        if name == "-":
            text, source = sys.stdin.read(), "<stdin>"
        else:
            try:
                text, source = Path(name).read_text(encoding="utf-8"), name
            except (OSError, UnicodeDecodeError) as err:
                raise TelegramError(f"{name}: cannot read it: {err}") from None
        parsed.append((source, parse_telegrams(text, source)))
    return parsed


def cmd_publish(args: argparse.Namespace) -> int:
    from agent.outputs import open_outputs

    settings = _settings(args)
    files = _read_files(args.files)
    outputs = open_outputs(settings, "publish")
    if not outputs:
        raise ConfigError(f"{settings.path}: no output is enabled ([influx] or [console])")
    before = {o.name: o.status().get("delivered", 0) for o in outputs}
    total = 0
    for source, telegrams in files:
        idents = [t for t in telegrams if isinstance(t, Ident)]
        databases = sorted({i.database for i in idents})
        print(
            f"{source}: {len(idents)} ident, {len(telegrams) - len(idents)} data "
            f"-> database {', '.join(databases)}",
            file=sys.stderr,
        )
        for telegram in telegrams:
            for output in outputs:
                output.send(telegram)
            total += 1
    ok = True
    try:
        for output in outputs:
            output.start()
            pending = output.status().get("queued")
            if not isinstance(pending, int):
                continue
            progress = Progress(f"delivering to {output.name}", pending)
            ok = output.wait_drained(args.wait, progress.remaining) and ok
            progress.remaining(output.status()["queued"])
            progress.finish()
    finally:
        summaries = [(o.name, o.status()) for o in outputs]
        for output in outputs:
            output.close()
    for name, status in summaries:
        if "queued" not in status:
            print(f"{name}: {status.get('sent', 0)} telegrams written", file=sys.stderr)
            continue
        queued = status["queued"]
        delivered = status["delivered"] - before[name]
        line = f"{name} {status.get('url')}: {delivered} points delivered"
        if status.get("lost"):
            line += f", {status['lost']} LOST: the disk refused to queue them"
            ok = False
        if status.get("quarantined"):
            line += f", {status['quarantined']} quarantined (see `sensorkit quarantine list`)"
        print(line, file=sys.stderr)
        if queued:
            print(
                f"{name}: {queued} points are still queued safely in "
                f"{settings.kit.state_dir}; run `sensorkit publish` again to deliver them"
                + ("" if status.get("last_error") else " (the server was still taking them)"),
                file=sys.stderr,
            )
            ok = False
    return 0 if ok else 1


def cmd_status(args: argparse.Namespace) -> int:
    from agent.status import collect, format_status

    settings = _settings(args)
    status = collect(settings.kit.state_dir)
    if args.json:
        print(json.dumps(status, indent=2, default=str))
    else:
        print(format_status(status))
    return 0


def cmd_quarantine(args: argparse.Namespace) -> int:
    settings = _settings(args)
    state_dir = settings.kit.state_dir
    points = read_quarantine(state_dir, args.queue)
    if args.action == "list":
        for p in points:
            print(f"#{p.id} database {p.db}: {p.reason}\n    {p.line}")
        print(f"{len(points)} quarantined points in {state_dir}/{args.queue}", file=sys.stderr)
        return 0
    if args.action == "export":
        for p in points:
            print(p.line)
        return 0
    from agent.outputs import influx_client

    client = influx_client(settings)
    resent = []
    for db in sorted({p.db for p in points}):
        batch = [p for p in points if p.db == db]
        for point in batch:
            try:
                client.write(db, point.line.encode())
            except InfluxError as err:
                print(f"#{point.id} still refused: {err}", file=sys.stderr)
                if err.retryable or err.status in (401, 403):
                    break
                continue
            resent.append(point.id)
    release_quarantined(state_dir, args.queue, resent)
    print(f"re-sent {len(resent)} of {len(points)} quarantined points", file=sys.stderr)
    return 0 if len(resent) == len(points) else 1


def cmd_provision(args: argparse.Namespace) -> int:
    from agent.provision import main as provision

    return provision(args)


def cmd_probe(args: argparse.Namespace) -> int:
    from agent.probe import probe

    print(probe(_settings(args)))
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="sensorkit", description="Raspberry Pi air-quality kit agent (see README.md)"
    )
    top.add_argument("--version", action="version", version=f"sensorkit {__version__}")
    top.add_argument("-v", "--verbose", action="store_true", help="log debug detail")
    sub = top.add_subparsers(dest="command", required=True)

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument(
            "-c",
            "--config",
            help="agent.ini to use (default: $SENSORKIT_CONFIG, "
            "/etc/sensorkit/agent.ini, ./agent.ini)",
        )
        return p

    run = command("run", "poll the sensors, build telegrams and publish them")
    run.add_argument("--duration", type=float, default=0, help="stop after this many seconds")
    run.set_defaults(func=cmd_run)
    pub = command("publish", "send telegrams from JSON files (- = stdin) through the outputs")
    pub.add_argument("files", nargs="*", metavar="FILE")
    pub.add_argument(
        "--wait", type=float, default=60.0, help="seconds to wait for delivery (default 60)"
    )
    pub.set_defaults(func=cmd_publish)
    status = command("status", "queue depth, deliveries, errors, drops and sensor health")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=cmd_status)
    quarantine = command("quarantine", "list, export or re-send points the server refused")
    quarantine.add_argument("action", choices=("list", "export", "resend"))
    quarantine.add_argument("--queue", default="influx", choices=("influx", "publish"))
    quarantine.set_defaults(func=cmd_quarantine)
    probe = command("probe", "detect connected sensors and say what to put in agent.ini")
    probe.set_defaults(func=cmd_probe)
    from agent.provision import add_arguments as provision_arguments

    provision = sub.add_parser(
        "provision",
        help="set up kits on an InfluxDB server: database, user, grant, retention, means",
        description="set up kits on an InfluxDB 1.x server: database, user, grant, "
        "retention and means (see README.md, Running the server)",
    )
    provision_arguments(provision)
    provision.set_defaults(func=cmd_provision)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return args.func(args)
    except (ConfigError, TelegramError) as err:
        print(f"sensorkit: {err}", file=sys.stderr)
        return 2
    except (QueueBusy, InfluxError) as err:
        print(f"sensorkit: {err}", file=sys.stderr)
        return 1
