"""The ``sensorkit`` command line (also ``python -m agent``).

Exit codes: 0 ok; 1 something did not succeed (points only queued, refused or lost; a server
failure); 2 bad usage, a bad setting or bad input; 130 interrupted (Ctrl-C, SIGTERM).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from agent import __version__
from agent.config import ConfigError, Settings, find_config, load
from agent.errors import SensorkitError
from agent.progress import Progress
from agent.telegram import FileSummary, TelegramError, check_telegrams, read_telegrams

log = logging.getLogger("sensorkit")

CHUNK = 500  # points appended to the queue at once by `publish`
INTERRUPTED = 130


def _settings(args: argparse.Namespace) -> Settings:
    return load(find_config(args.config))


class _Stop:
    """SIGINT and SIGTERM set a flag that long work looks at, instead of a traceback."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signal = ""

    def install(self, on_stop=None) -> None:
        def handler(signum: int, _frame: object) -> None:
            self.signal = signal.Signals(signum).name
            self.event.set()
            if on_stop is not None:
                on_stop(self.signal)

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)


def cmd_run(args: argparse.Namespace) -> int:
    from agent.outputs import open_outputs
    from agent.runner import Agent

    settings = _settings(args)
    outputs = open_outputs(settings, "influx", database=settings.influx.database)
    agent = Agent(settings, outputs)

    def stop(name: str) -> None:
        log.info("got %s; finishing the current window and stopping", name)
        agent.stop.set()

    _Stop().install(stop)
    if args.duration:
        timer = threading.Timer(args.duration, agent.stop.set)
        timer.daemon = True
        timer.start()
    log.info(
        "sensorkit %s: kit %s_%s, window %d s, outputs: %s",
        __version__,
        settings.kit.project,
        settings.kit.serial,
        settings.kit.interval,
        ", ".join(o.name for o in outputs) or "none",
    )
    return agent.run()


# -- publish -----------------------------------------------------------------------------------


@dataclass
class _File:
    """One input of ``publish``: where it is read from, and what the first pass found."""

    source: str
    path: Path
    summary: FileSummary | None = None
    queued: int = 0  # telegrams queued by the second pass

    @property
    def telegrams(self) -> int:
        return self.summary.idents + self.summary.data if self.summary else 0


def _inputs(names: list[str], spool_dir: Path) -> list[_File]:
    """The files to publish; standard input is copied to a file first, so it can be read
    twice (checked whole, then sent) with memory flat."""
    files = []
    for name in names:
        if name == "-":
            spool_dir.mkdir(parents=True, exist_ok=True)
            fd, spooled = tempfile.mkstemp(prefix="publish-stdin-", suffix=".json", dir=spool_dir)
            with os.fdopen(fd, "wb") as out:
                while chunk := sys.stdin.buffer.read(1 << 20):
                    out.write(chunk)
            files.append(_File("<stdin>", Path(spooled)))
        else:
            path = Path(name)
            if not path.is_file():
                raise TelegramError(f"{name}: cannot read it: no such file")
            files.append(_File(name, path))
    return files


def _check(files: list[_File], stop: _Stop, bucket: str = "") -> None:
    """The first pass: every telegram of every file checked before anything is sent.

    ``bucket``: the one bucket an ``api = v2`` output writes every point to.
    """
    for item in files:
        if stop.event.is_set():
            return
        try:
            item.summary = check_telegrams(item.path, item.source)
        except OSError as err:
            raise TelegramError(f"{item.source}: cannot read it: {err.strerror}") from None
    for item in files:  # said once all are known good: a bad file refuses the whole call
        assert item.summary is not None
        summary = item.summary
        line = summary.describe()
        if bucket:
            line = line.split(" -> ")[0] + f" -> bucket {bucket!r}"
        for text in (line, *summary.notes()):
            print(text, file=sys.stderr)
    kits = sorted({db for item in files if item.summary for db in item.summary.databases})
    if bucket and len(kits) > 1:
        log.warning(
            "%d kits (%s) all go to bucket %r ([influx] api = v2 writes one bucket); their "
            "data points are told apart by the label tag alone: publish each kit with a "
            "config of its own naming its own bucket",
            len(kits),
            ", ".join(kits),
            bucket,
        )


def cmd_publish(args: argparse.Namespace) -> int:
    from agent.outputs import Queued, open_outputs

    settings = _settings(args)
    stop = _Stop()
    stop.install()
    files = _inputs(args.files, settings.kit.state_dir)
    try:
        v2 = settings.influx.enabled and settings.influx.api == "v2"
        _check(files, stop, settings.influx.bucket if v2 else "")
        if stop.event.is_set():
            print(f"sensorkit: interrupted ({stop.signal}); nothing was sent", file=sys.stderr)
            return INTERRUPTED
        outputs = open_outputs(settings, "publish")
        if not outputs:
            raise ConfigError(f"{settings.path}: no output is enabled ([influx] or [console])")
        queued = [o for o in outputs if isinstance(o, Queued)]
        before = {o.name: o.stats().queue.delivered for o in queued}
        for output in queued:
            output.start()
        stalled = ""
        try:
            stalled = _stream(files, outputs, args.wait, stop)
            if not stop.event.is_set():
                for output in queued:
                    _drain(output, args.wait, stop)
        finally:
            finals = {o.name: o.stats() for o in queued}
            for output in outputs:
                output.close()
    finally:
        for item in files:
            if item.source == "<stdin>":
                item.path.unlink(missing_ok=True)
    ok = _report(settings, outputs, finals, before, files, stalled)
    if stop.event.is_set():
        print(
            f"sensorkit: interrupted ({stop.signal}); what was queued stays in "
            f"{settings.kit.state_dir} for the next `sensorkit publish`",
            file=sys.stderr,
        )
        return INTERRUPTED
    return 0 if ok else 1


def _stream(files: list[_File], outputs: list, wait: float, stop: _Stop) -> str:
    """The second pass: telegrams to every output, queued in chunks with backpressure.

    Returns why reading stopped early ("" when every file was read): the server took no
    points for ``wait`` seconds while the queue was at its high-water mark.
    """
    from agent.outputs import Queued

    plain = [o for o in outputs if not isinstance(o, Queued)]
    queued = [o for o in outputs if isinstance(o, Queued)]
    pending: dict[str, list[tuple[str, str]]] = {o.name: [] for o in queued}
    sizes = {o.name: 0 for o in queued}  # bytes pending: a chunk never crowds the queue
    for item in files:
        unflushed = 0  # telegrams of this file read but not yet queued
        for telegram in read_telegrams(item.path, item.source):
            if stop.event.is_set():
                return ""
            for output in plain:
                output.send(telegram)
            unflushed += 1
            full = False
            for output in queued:
                points = output.encode(telegram)
                pending[output.name] += points
                sizes[output.name] += sum(len(line) + 64 for _, line in points)
                full = full or len(pending[output.name]) >= CHUNK
                full = full or sizes[output.name] >= _high_water(output) // 2
            if full:
                stalled = _flush(queued, pending, wait, stop)
                if stalled:
                    return stalled
                sizes = dict.fromkeys(sizes, 0)
                item.queued += unflushed
                unflushed = 0
        stalled = _flush(queued, pending, wait, stop)
        if stalled:
            return stalled
        sizes = dict.fromkeys(sizes, 0)
        item.queued += unflushed
    return ""


def _flush(queued: list, pending: dict, wait: float, stop: _Stop) -> str:
    """Queue what is pending once there is room; "" when done, else why not."""
    for output in queued:
        points = pending[output.name]
        if not points:
            continue
        stalled = _room(output, wait, stop)
        if stalled:
            return stalled
        output.accept(points)
        points.clear()
    return ""


def _high_water(output) -> int:
    """The most ``publish`` lets a queue hold: a quarter of its cap, at most 16 MB."""
    return min(output.capacity // 4, 16_000_000)


def _room(output, wait: float, stop: _Stop) -> str:
    """Wait while the queue is above its high-water mark, so publish never pushes its own
    points out of the queue; "" once there is room, else why not."""
    high = _high_water(output)
    since = None
    while output.queued_bytes() > high:
        if stop.event.is_set():
            return "interrupted"
        if output.failing():
            since = since or time.monotonic()
            if time.monotonic() - since > wait:
                return f"the server took no points for {wait:g} s"
        else:
            since = None
        stop.event.wait(0.05)
    return ""


def _drain(output, wait: float, stop: _Stop) -> None:
    pending = output.stats().queue.queued
    progress = Progress(f"delivering to {output.name}", pending)
    deadline = time.monotonic() + wait
    while not stop.event.is_set():
        remaining = deadline - time.monotonic()
        if output.wait_drained(min(0.5, max(0.0, remaining)), progress.remaining):
            break
        if remaining <= 0:
            break
    progress.remaining(output.stats().queue.queued)
    progress.finish()


def _report(settings, outputs, finals, before, files, stalled: str) -> bool:
    """The summary of a publish on stderr; True when everything reached every output."""
    ok = True
    for output in outputs:
        stats = finals.get(output.name)
        if stats is None:
            print(
                f"{output.name}: {output.status().get('sent', 0)} telegrams written",
                file=sys.stderr,
            )
            continue
        queue = stats.queue
        line = (
            f"{output.name} {stats.url}: {queue.delivered - before[output.name]} points delivered"
        )
        if stats.lost:
            line += (
                f", {stats.lost} LOST: the disk refused to queue them (they are still in "
                "the files: publish them again once the disk has room)"
            )
            ok = False
        if queue.quarantined:
            line += (
                f", {queue.quarantined} quarantined: the server refused them (see "
                "`sensorkit quarantine list`)"
            )
            ok = False
        print(line, file=sys.stderr)
        if queue.queued:
            print(
                f"{output.name}: {queue.queued} points are still queued"
                f"{'' if queue.in_ram else ' safely'} in "
                f"{settings.kit.state_dir}; run `sensorkit publish` again to deliver them"
                + ("" if stats.last_error else " (the server was still taking them)"),
                file=sys.stderr,
            )
            if queue.in_ram:
                print(
                    f"{output.name}: {queue.in_ram} of them are only in RAM: the disk refused "
                    f"them ({settings.kit.state_dir} full?); they are lost at a reboot: free "
                    "some space and run `sensorkit publish` again before that",
                    file=sys.stderr,
                )
            ok = False
    if stalled:
        for item in files:
            total = item.telegrams
            if item.queued < total:
                print(
                    f"{item.source}: {total - item.queued} of {total} telegrams were NOT "
                    f"queued ({stalled}); nothing is lost: run `sensorkit publish "
                    f"{item.source}` again once the server takes points",
                    file=sys.stderr,
                )
        ok = False
    return ok


# -- subscribe ---------------------------------------------------------------------------------


def parse_since(text: str, now: float | None = None) -> int:
    """``--since``: epoch seconds (``1700000000``), ISO-8601 (``2024-05-01``,
    ``2024-05-01T12:00:00+02:00``; UTC when no zone is given) or an age (``90s``, ``15m``,
    ``2h``, ``7d``: that long before now). UsageError when it is none of these."""
    from datetime import UTC, datetime

    from agent.errors import UsageError

    text = text.strip()
    now = time.time() if now is None else now
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    try:
        if text.isdigit():
            return int(text)
        if text[:-1].isdigit() and text[-1:].lower() in units:
            return max(0, int(now) - int(text[:-1]) * units[text[-1].lower()])
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        moment = None
    if moment is None:
        raise UsageError(
            f"--since {text!r}: not a time; allowed: epoch seconds (1700000000), ISO-8601 "
            "(2024-05-01 or 2024-05-01T12:00:00+02:00, UTC without a zone) or an age "
            "(90s, 15m, 2h, 7d, 2w)"
        )
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0, int(moment.timestamp()))


def cmd_subscribe(args: argparse.Namespace) -> int:
    from agent.delivery import Delivery
    from agent.influx import InfluxClient
    from agent.outputs import delivery_settings, influx_sink
    from agent.relay import ConsoleRelay, InfluxRelay
    from agent.series import SeriesEncoder
    from agent.subscriber import Subscriber, committed_offset

    settings = _settings(args)
    s = settings.subscriber
    since = parse_since(args.since) if args.since is not None else None
    stop = _Stop()
    stop.install()
    state_dir = settings.kit.state_dir
    relays: list = []
    try:
        for name in s.outputs:
            if name == "console":
                path = settings.console.file
                relays.append(ConsoleRelay(path, committed_offset(state_dir, path)))
            else:
                if not settings.influx.enabled:
                    raise ConfigError(
                        f"{settings.path} [subscriber] outputs: influx needs [influx] enabled "
                        "(the server to relay to); allowed: console, or enable [influx]"
                    )
                delivery = Delivery(
                    "influx",
                    influx_sink(settings),
                    state_dir,
                    "subscribe",
                    SeriesEncoder().encode,
                    delivery_settings(settings),
                )
                relays.append(InfluxRelay(delivery, stop.event, args.wait))
    except OSError as err:
        for relay in relays:
            relay.close()
        raise ConfigError(
            f"{settings.path}: cannot open the subscriber's outputs ({err.strerror or err}); "
            "allowed: a [console] file in a folder that exists, a state_dir this user may write"
        ) from None
    client = InfluxClient(s.url, s.username, s.password, timeout=60.0, token=s.token)
    client.section = "subscriber"
    subscriber = Subscriber(s, state_dir, client, relays, stop.event, since)
    ok = True
    try:
        if args.once:
            outcome = subscriber.run_once()
            ok = not outcome.failed
            print(f"subscribe: {outcome.points} data points read", file=sys.stderr)
            for relay in relays:
                if isinstance(relay, InfluxRelay):
                    ok = _drain_relay(relay, args.wait, stop) and ok
        else:
            subscriber.follow()
    finally:
        client.close()
        for relay in relays:
            relay.close()
    if stop.event.is_set():
        print(
            f"sensorkit: interrupted ({stop.signal}); the cursors in {state_dir} say where "
            "the next subscribe goes on",
            file=sys.stderr,
        )
        return INTERRUPTED
    return 0 if ok else 1


def _drain_relay(relay, wait: float, stop: _Stop) -> bool:
    """Give the relay's queue ``wait`` seconds to reach the destination; True when empty."""
    _drain(relay.delivery, wait, stop)
    left = relay.delivery.stats().queue.queued
    if left:
        print(
            f"subscribe: {left} points are still queued safely for {relay.delivery.sink.url}; "
            "the next `sensorkit subscribe` delivers them",
            file=sys.stderr,
        )
    return not left


# -- status, quarantine, probe -----------------------------------------------------------------


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
    from agent.buffer import read_quarantine, release_quarantined
    from agent.status import queue_names

    settings = _settings(args)
    state_dir = settings.kit.state_dir
    names = [args.queue] if args.queue else queue_names(state_dir)
    held = {name: read_quarantine(state_dir, name) for name in names}
    if args.action == "list":
        for name, points in held.items():
            for p in points:
                print(f"{name} #{p.id} database {p.db}: {p.reason}\n    {p.line}")
        summary = ", ".join(f"{len(points)} in {name}" for name, points in held.items())
        print(f"quarantined points in {state_dir}: {summary or 'none'}", file=sys.stderr)
        return 0
    if args.action == "export":
        for points in held.values():
            for p in points:
                print(p.line)
        return 0
    return _resend(settings, held, release_quarantined)


def _resend(settings: Settings, held: dict, release) -> int:
    """Send quarantined points again, one at a time; the classifier says which went."""
    from agent.classify import Verdict, classify
    from agent.outputs import influx_sink

    sink = influx_sink(settings)
    total = resent_all = 0
    try:
        for name, points in held.items():
            resent: list[int] = []
            stopped = False
            for point in points:
                if stopped:
                    break
                reply = sink.write(point.db, point.line.encode())
                verdict = classify(reply)
                if verdict is Verdict.DELIVERED:
                    resent.append(point.id)
                    continue
                print(f"{name} #{point.id} still refused: {reply}", file=sys.stderr)
                stopped = verdict not in (Verdict.QUARANTINE, Verdict.SPLIT)
            release(settings.kit.state_dir, name, resent)
            total += len(points)
            resent_all += len(resent)
    finally:
        sink.close()
    print(f"re-sent {resent_all} of {total} quarantined points", file=sys.stderr)
    return 0 if resent_all == total else 1


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
        "--wait",
        type=float,
        default=60.0,
        help="seconds to wait for a server that takes no points (default 60)",
    )
    pub.set_defaults(func=cmd_publish)
    subscribe = command(
        "subscribe", "read kits' telegrams back from an InfluxDB server, each once, and relay them"
    )
    subscribe.add_argument(
        "--once", action="store_true", help="read what the server holds now, then stop"
    )
    subscribe.add_argument(
        "--since",
        metavar="TIME",
        help="start every database at TIME instead of its cursor: epoch seconds, ISO-8601 "
        "(UTC without a zone) or an age such as 2h or 7d",
    )
    subscribe.add_argument(
        "--wait",
        type=float,
        default=60.0,
        help="seconds --once waits for an influx output's destination to take points (60)",
    )
    subscribe.set_defaults(func=cmd_subscribe)
    status = command("status", "queue depth, deliveries, errors, drops and sensor health")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=cmd_status)
    quarantine = command("quarantine", "list, export or re-send points the server refused")
    quarantine.add_argument("action", choices=("list", "export", "resend"))
    quarantine.add_argument(
        "--queue", help="only this queue (influx: the agent's, publish: sensorkit publish's)"
    )
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
    from agent import systemd

    systemd.setup_logging(args.verbose)
    try:
        return args.func(args)
    except SensorkitError as err:
        print(f"sensorkit: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("sensorkit: interrupted", file=sys.stderr)
        return INTERRUPTED
    except BrokenPipeError:  # `sensorkit ... | head`: the reader went away
        with contextlib.suppress(OSError):
            sys.stderr.close()
        return 1
