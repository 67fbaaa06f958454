"""The Dylos DC1100 driver, end to end through the simulated device's pty and through loop://."""

from __future__ import annotations

import logging
import os
import re
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from realdata import fixture, fixture_params

from drivers import dylos as dylos_module
from drivers.dylos import MAX_LINE, Dylos, list_serial_ports, open_dylos, parse_line
from drivers.reading import OptionError, Reading, SensorError
from drivers.sim.dylos import Particles, SimulatedDylos
from drivers.sim.weather import Weather

FAST = 60_000.0  # speedup: one device line per millisecond
Pair = tuple[float, float]
CAPTURE = "dylos-dc1100-capture.txt"  # in ../shared/fixtures: 400 lines from a real DC1100


def capture_pairs() -> list[tuple[int, int]]:
    """The real DC1100 capture, parsed here independently of the driver and the simulator."""
    lines = fixture(CAPTURE).read_bytes().split(b"\r\n")
    assert lines[-1] == b""  # CRLF after every line, including the last
    return [(int(s), int(lg)) for s, lg in (line.split(b",") for line in lines[:-1])]


def pairs_of(readings: list[Reading], names: tuple[str, str] = ("pm_25", "pm_10")) -> list[Pair]:
    """Group readings into (small, large) pairs, checking names, order, types and timestamps."""
    assert len(readings) % 2 == 0
    pairs = []
    for small, large in zip(readings[::2], readings[1::2], strict=True):
        assert (small.field, large.field) == names
        assert type(small.value) is float and type(large.value) is float
        assert small.time == large.time
        pairs.append((small.value, large.value))
    return pairs


def collect(driver: Dylos, count: int, limit: float = 10.0) -> list[Pair]:
    """Read until ``count`` pairs arrived (or fail after ``limit`` seconds)."""
    pairs: list[Pair] = []
    end = time.monotonic() + limit
    while len(pairs) < count:
        assert time.monotonic() < end, f"only {len(pairs)} of {count} pairs in {limit} s"
        pairs += pairs_of(driver.read())
    return pairs


def is_run_of(pairs: list[Pair], source: list[tuple[int, int]], cyclic: bool = False) -> bool:
    """True when ``pairs`` occur, consecutively and in order, in ``source`` (looping if cyclic)."""
    n = len(source)
    starts = range(n) if cyclic else range(n - len(pairs) + 1)
    return any(
        all(pairs[i] == source[(start + i) % n] for i in range(len(pairs))) for start in starts
    )


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "sensorkit.dylos" and r.levelno == logging.WARNING
    ]


@pytest.fixture
def closing() -> Iterator[Callable]:
    """Register drivers and simulators to be closed after the test, whatever happens."""
    things: list = []
    yield lambda thing: things.append(thing) or thing
    for thing in reversed(things):
        thing.close() if isinstance(thing, Dylos) else thing.stop()


@pytest.fixture
def loop(closing: Callable) -> Dylos:
    """A driver on loop://: bytes written into its own port come back to it."""
    return closing(Dylos("loop://", read_timeout=0.05))


def feed(driver: Dylos, data: bytes) -> list[Pair]:
    assert driver.serial is not None
    driver.serial.write(data)
    return pairs_of(driver.read())


# --- the real capture through the simulated port -------------------------------------------


def test_real_capture_through_simulated_port_gives_its_pairs_in_order_as_floats(closing):
    capture = str(fixture(CAPTURE))
    driver = closing(open_dylos("simulated", replay=capture, speedup=FAST, read_timeout=0.2))
    assert driver.name == "dylos" and driver.poll_interval == 0
    assert [(f.name, f.unit, f.type) for f in driver.fields] == [
        ("pm_25", "pcs/qf", "Dylos DC1100"),
        ("pm_10", "pcs/qf", "Dylos DC1100"),
    ]
    pairs = collect(driver, 450)  # more than the 400 lines: it loops to the start
    assert is_run_of(pairs, capture_pairs(), cyclic=True)


def test_real_capture_replayed_end_to_end_gives_exactly_its_400_pairs(closing):
    sim = closing(SimulatedDylos(fixture(CAPTURE), speedup=FAST).start())
    driver = closing(Dylos(sim.url, read_timeout=0.2))
    pairs = collect(driver, 400)[:400]
    capture = capture_pairs()
    start = capture.index(tuple(int(v) for v in pairs[0]))  # the first line after opening
    assert pairs == capture[start:] + capture[:start]  # every pair once, in order, nothing else
    assert driver.garbage_lines == 0 and driver.implausible == 0


def test_simulator_writes_the_capture_and_records_exactly_what_the_driver_reads(closing):
    sim = closing(SimulatedDylos(fixture(CAPTURE), speedup=FAST).start())
    driver = closing(Dylos(sim.url, field_names=("small", "large"), read_timeout=0.2))
    readings = []
    while len(readings) < 2 * 50:
        readings += driver.read()
    pairs = pairs_of(readings, ("small", "large"))
    assert is_run_of(pairs, sim.written)
    assert is_run_of(sim.written, capture_pairs(), cyclic=True)


def test_replay_sends_the_file_byte_for_byte_through_the_pty(closing, tmp_path):
    replay = tmp_path / "replay.txt"
    replay.write_bytes(b"1,2\r\n 3 ,4,77,88\r\n\r\n5,6\n")  # odd spacing, 4 fields, bare LF
    sim = closing(SimulatedDylos(replay, speedup=FAST).start())
    with open(sim.url, "rb", buffering=0) as port:
        received = b""
        while len(received) < 3 * len(replay.read_bytes()):
            received += os.read(port.fileno(), 4096)
    assert received.startswith(replay.read_bytes() * 3)


# --- real lines from other kits (../shared/fixtures/external) -------------------------------

PLAIN = re.compile(rb"(\d+),(\d+)")
TEXT_BEFORE = re.compile(rb".*\S[\s,]+(\d+)\s*,\s*(\d+)\s*")
MARKER = b"99999,99999"  # a plain line the files do not hold: ends each line's results


def allowed(line: bytes, got: list[tuple[int, int]]) -> bool:
    """external/README.md's rule: a plain N,M line gives exactly (N, M); a line with a date
    or other text before its last two numbers is refused or gives those two; any other line
    is refused. Nothing ever gives other numbers."""
    text = line.strip()
    if plain := PLAIN.fullmatch(text):
        return got == [(int(plain[1]), int(plain[2]))]
    if before := TEXT_BEFORE.fullmatch(text):
        return got in ([], [(int(before[1]), int(before[2]))])
    return got == []


def test_the_rule_itself_tells_good_from_bad():
    assert allowed(b"515,21", [(515, 21)]) and not allowed(b"515,21", [])
    assert allowed(b"02/27/17 10:52,1879,54", []) and allowed(b"x,1879,54", [(1879, 54)])
    assert not allowed(b"02/27/17 10:52,1879,54", [(2, 27)])
    assert allowed(b"Date/Time, Small, Large", []) and not allowed(b"Unit: DC1100", [(1100, 0)])


@pytest.mark.parametrize("path", fixture_params("external/dylos-*.txt"))
def test_every_real_line_obeys_the_rule_through_the_parser(path: Path):
    lines = path.read_bytes().split(b"\n")
    assert lines.pop() == b""  # LF-terminated text
    assert MARKER not in lines
    for line in lines:
        try:
            got = [pair] if (pair := parse_line(line)) is not None else []
        except ValueError:
            got = []
        got = [p for p in got if max(p) <= dylos_module.DISPLAY_MAX]  # refused whole otherwise
        assert allowed(line, got), (line, got)


@pytest.mark.parametrize("path", fixture_params("external/dylos-*.txt"))
def test_every_real_line_obeys_the_rule_through_the_pty_with_cr_lf(path: Path, closing):
    lines = path.read_bytes().split(b"\n")[:-1]
    sim = closing(SimulatedDylos())
    sim.replug()  # plugged in, but not started: only what the test injects goes out
    driver = closing(Dylos(sim.url, read_timeout=0.5))
    assert sim.inject(b"0,0\r\n")  # the first line after opening is discarded
    for line in lines:
        assert sim.inject(line + b"\r\n" + MARKER + b"\r\n")
        got: list[Pair] = []
        while not got or got[-1] != (99999.0, 99999.0):
            readings = driver.read()
            assert readings, f"no marker after {line!r}"
            got += pairs_of(readings)
        pairs = [(int(s), int(lg)) for s, lg in got[:-1]]
        assert allowed(line, pairs), (line, pairs)
    refused = [line for line in lines if line.strip() and not PLAIN.fullmatch(line.strip())]
    assert driver.garbage_lines + driver.implausible // 2 == len(refused)  # each one counted


# --- lines made up from the weather ---------------------------------------------------------

LINE = re.compile(rb"(\d+),(\d+)\r\n")


def test_default_simulator_sends_dc1100_lines_made_up_from_the_weather(closing):
    sim = closing(SimulatedDylos(speedup=FAST).start())
    with open(sim.url, "rb", buffering=0) as port:
        received = b""
        while received.count(b"\n") < 200:
            received += os.read(port.fileno(), 4096)
    lines = received.split(b"\n")[:200]
    matches = [LINE.fullmatch(line + b"\n") for line in lines]
    assert all(matches), [line for line, m in zip(lines, matches, strict=True) if not m][:3]
    pairs = [(int(m[1]), int(m[2])) for m in matches if m]
    assert pairs == sim.written[:200]
    assert all(small >= large >= 0 for small, large in pairs)
    assert all(100 <= small <= 5000 and 1 <= large <= 500 for small, large in pairs)
    assert len(set(pairs)) > 150  # noise: lines differ


def test_made_up_counts_are_a_function_of_time_and_seed():
    times = [1_700_000_000 + 61.5 * i for i in range(50)]

    def counts(seed: int) -> list[tuple[int, int]]:
        particles = Particles(Weather(seed=seed))
        return [particles.at(t) for t in times]

    assert counts(7) == counts(7)
    assert counts(7) != counts(8)


def test_two_simulators_with_one_seed_and_clock_send_the_same_lines(closing):
    def first_lines(seed: int) -> list[tuple[int, int]]:
        clock = iter(1_700_000_000 + 60.0 * i for i in range(10_000))
        weather = Weather(seed=seed)
        sim = closing(SimulatedDylos(weather=weather, clock=lambda: next(clock), speedup=FAST))
        sim.start()
        driver = closing(Dylos(sim.url, read_timeout=0.2))
        collect(driver, 30)
        sim.stop()
        return sim.written[:30]

    assert first_lines(3) == first_lines(3)
    assert first_lines(3) != first_lines(4)


def test_made_up_counts_rise_with_humidity_and_at_night():
    day = 1_700_006_400  # a UNIX time at 00:00 (local solar time of the weather model)
    assert day % 86400 == 0
    particles = Particles(Weather(seed=1))

    def mean_small(hour: float, weather: Weather | None = None) -> float:
        model = Particles(weather) if weather else particles
        values = [model.at(day + hour * 3600 + 7 * i)[0] for i in range(200)]
        return sum(values) / len(values)

    assert mean_small(4) > 1.8 * mean_small(16)  # humid night vs dry afternoon
    humid, dry = Weather(humidity=90, humidity_swing=0), Weather(humidity=50, humidity_swing=0)
    assert mean_small(12, humid) > 2 * mean_small(12, dry)  # same hour, more water


def test_made_up_counts_have_the_magnitudes_of_a_real_capture():
    particles = Particles(Weather(seed=2))
    pairs = [particles.at(1_700_000_000 + 97.3 * i) for i in range(3000)]  # about 3.4 days
    small = sorted(p[0] for p in pairs)
    large = sorted(p[1] for p in pairs)
    assert 100 <= small[0] and small[-1] <= 5000 and small[len(small) // 2] >= 300
    assert 1 <= large[0] and large[-1] <= 500 and 10 <= large[len(large) // 2] <= 200
    assert all(s >= lg for s, lg in pairs)


def test_field_names_come_from_the_factory(closing):
    driver = closing(open_dylos("simulated", speedup=FAST, field_names=("dust_s", "dust_l")))
    assert [f.name for f in driver.fields] == ["dust_s", "dust_l"]
    assert {r.field for r in driver.read()} <= {"dust_s", "dust_l"}


# --- fault injection through the simulator -------------------------------------------------


def test_partial_writes_are_reassembled(closing):
    sim = closing(SimulatedDylos(speedup=FAST, chunked=True, chunk_gap=0.0002).start())
    driver = closing(Dylos(sim.url, read_timeout=0.2))
    pairs = collect(driver, 40)
    assert is_run_of(pairs, sim.written)
    assert driver.garbage_lines == 0


def test_garbage_lines_from_the_port_are_ignored_counted_and_warned(closing, caplog):
    sim = closing(SimulatedDylos(speedup=FAST, garbage_every=3).start())
    driver = closing(Dylos(sim.url, read_timeout=0.2))
    pairs = collect(driver, 30)
    assert is_run_of(pairs, sim.written)  # garbage costs no good line
    # 29 gaps between the pairs hold 9 or 10 garbage lines; at most 2 more around the ends
    assert 9 <= driver.garbage_lines <= 12
    warned = warnings_of(caplog)
    assert warned and all(sim.url in w and "garbage line b'" in w for w in warned)


def test_four_field_lines_from_the_port_take_the_first_two(closing):
    sim = closing(SimulatedDylos(speedup=FAST, four_fields=True).start())
    driver = closing(Dylos(sim.url, read_timeout=0.2))
    pairs = collect(driver, 20)
    assert is_run_of(pairs, sim.written)
    assert driver.garbage_lines == 0


def test_unplug_warns_once_reconnects_and_readings_resume(closing, caplog):
    caplog.set_level(logging.INFO, logger="sensorkit.dylos")
    sim = closing(SimulatedDylos(speedup=FAST).start())
    driver = closing(Dylos(sim.url, read_timeout=0.1, retry_base=0.01, retry_cap=0.04))
    assert is_run_of(collect(driver, 10), sim.written)
    sim.unplug()
    for _ in range(5):  # several reads, many retries while the device is away
        start = time.monotonic()
        assert driver.read() == []
        assert time.monotonic() - start >= 0.09  # waits; does not spin the CPU
    assert not driver.connected and driver.last_error
    assert "does not exist" in driver.last_error  # the latest retry's reason
    sim.replug()
    assert is_run_of(collect(driver, 10), sim.written)
    assert driver.connected
    warned = warnings_of(caplog)
    assert len(warned) == 1 and "went away" in warned[0] and sim.url in warned[0]
    back = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert back == [f"Dylos on {sim.url} is back; reading again"]


def test_unplug_for_a_while_comes_back_by_itself(closing):
    sim = closing(SimulatedDylos(speedup=FAST).start())
    driver = closing(Dylos(sim.url, read_timeout=0.1, retry_base=0.01, retry_cap=0.04))
    collect(driver, 5)
    sim.unplug(seconds=0.3)
    assert driver.read() == [] and not driver.connected
    assert is_run_of(collect(driver, 5), sim.written)


def test_missing_port_gives_one_clear_message_and_is_picked_up_when_plugged_in(
    closing, caplog, tmp_path
):
    caplog.set_level(logging.INFO, logger="sensorkit.dylos")
    port = str(tmp_path / "ttyUSB9")
    driver = closing(Dylos(port, read_timeout=0.05, retry_base=0.01, retry_cap=0.02))
    for _ in range(4):
        assert driver.read() == []
    message = f"agent.ini [dylos] port: {port} does not exist; plugged in? see `sensorkit probe`"
    assert driver.last_error == message and not driver.connected
    warned = warnings_of(caplog)
    assert len(warned) == 1 and warned[0].startswith(message)
    sim = closing(SimulatedDylos(speedup=FAST).start())
    os.symlink(sim.url, port)  # "plug in" the device at the configured path
    assert is_run_of(collect(driver, 5), sim.written)
    assert len(warnings_of(caplog)) == 1


# --- parsing, byte by byte through loop:// -------------------------------------------------


def test_loop_url_parses_bytes_written_into_the_same_port(loop):
    assert feed(loop, b"9,9\r\n515,21\r\n") == [(515.0, 21.0)]
    assert feed(loop, b"318,62\r\n") == [(318.0, 62.0)]
    assert loop.connected and loop.last_error is None
    readings = feed(loop, b"1,2\r\n3,4\r\n")
    assert readings == [(1.0, 2.0), (3.0, 4.0)]


def test_socket_url_reads_a_tcp_serial_server(closing):
    with socket.create_server(("127.0.0.1", 0)) as server:
        host, port = server.getsockname()
        server.settimeout(0.2)
        driver = closing(Dylos(f"socket://{host}:{port}", read_timeout=0.2, retry_base=0.05))
        deadline = time.monotonic() + 20
        while True:  # the driver connects when opened, or (a busy machine) on a later read()
            try:
                conn, _ = server.accept()
                break
            except TimeoutError:
                assert time.monotonic() < deadline, f"never connected: {driver.last_error}"
                driver.read()
        with conn:
            conn.sendall(b"5,21\r\n515,21\r\n")
            assert collect(driver, 1) == [(515.0, 21.0)]


def test_readings_are_timestamped_when_their_line_completes(loop):
    feed(loop, b"0,0\r\n")
    assert loop.serial is not None
    loop.serial.write(b"515,2")
    assert loop.read() == []
    before = time.time()
    loop.serial.write(b"1\r\n")
    readings = loop.read()
    assert [r.value for r in readings] == [515.0, 21.0]
    assert before <= readings[0].time <= time.time()


def test_first_line_after_open_is_discarded(loop):
    assert feed(loop, b"7,1\r\n") == []  # complete, but it covers less than a minute
    assert feed(loop, b"8,2\r\n") == [(8.0, 2.0)]


def test_partial_line_at_open_is_discarded_even_when_it_parses(loop):
    assert feed(loop, b"5,21\r\n515,21\r\n") == [(515.0, 21.0)]  # "5,21" was the tail of "515,21"


def test_bytes_split_anywhere_are_reassembled(closing):
    loop = closing(Dylos("loop://", read_timeout=0.005))  # a read without a line waits this long
    feed(loop, b"0,0\r\n")
    stream = b"515,21\r\n647,32\r\n620,25\r\n"
    pairs: list[Pair] = []
    for i in range(len(stream)):
        pairs += feed(loop, stream[i : i + 1])
    assert pairs == [(515.0, 21.0), (647.0, 32.0), (620.0, 25.0)]


def test_blank_lines_are_ignored_silently(loop, caplog):
    assert feed(loop, b"0,0\r\n\r\n\n  \r\n515,21\r\n\r\n") == [(515.0, 21.0)]
    assert loop.garbage_lines == 0 and warnings_of(caplog) == []


def test_blank_line_at_open_is_not_the_discarded_first_line(loop):
    assert feed(loop, b"\r\n7,1\r\n8,2\r\n") == [(8.0, 2.0)]


def test_garbage_lines_are_ignored_counted_and_warned_with_the_line_and_port(loop, caplog):
    garbage = [b"ERR", b"412", b"-5,3", b"\x00\xff\xfe", b"5,", b"1.5,2", b"a,b,c,d"]
    data = b"0,0\r\n" + b"".join(g + b"\r\n" for g in garbage) + b"515,21\r\n"
    assert feed(loop, data) == [(515.0, 21.0)]
    assert loop.garbage_lines == len(garbage)
    warned = warnings_of(caplog)
    assert len(warned) == len(garbage)
    for bad, message in zip(garbage, warned, strict=True):
        assert repr(bad) in message and "loop://" in message


def test_a_line_with_a_count_beyond_the_display_is_refused_whole_and_counted(loop, caplog):
    data = b"0,0\r\n100000,5\r\n515,21\r\n5,100000\r\n99999,99999\r\n"
    assert feed(loop, data) == [(515.0, 21.0), (99999.0, 99999.0)]  # neither 5 nor 100000 kept
    assert loop.implausible == 4  # both values of each refused line
    assert loop.garbage_lines == 0
    warned = warnings_of(caplog)
    assert len(warned) == 2  # one per kind: the small count, the large count
    assert "b'100000,5'" in warned[0] and "the small count" in warned[0] and "loop://" in warned[0]
    assert "b'5,100000'" in warned[1] and "the large count" in warned[1]
    assert all("neither count is kept" in w for w in warned)


def test_refused_lines_are_said_once_per_kind_but_all_counted(loop, caplog):
    feed(loop, b"0,0\r\n" + b"100000,5\r\n" * 30 + b"123456,654321\r\n" * 3)
    assert loop.implausible == 2 * 33
    warned = warnings_of(caplog)
    assert len(warned) == 2 and "the small and large counts are" in warned[1]


def test_a_refused_line_in_mass_mode_gives_no_mass_either(closing):
    loop = closing(Dylos("loop://", read_timeout=0.05, mass=True))
    assert feed(loop, b"0,0\r\n100000,5\r\n") == []
    assert loop.implausible == 2


def test_garbage_warnings_are_throttled_but_all_counted(loop, caplog):
    feed(loop, b"0,0\r\n" + b"ERR\r\n" * 250)
    assert loop.garbage_lines == 250
    assert len(warnings_of(caplog)) == 12  # the first 10, then the 100th and the 200th


def test_four_field_lines_take_the_first_two(loop):
    assert feed(loop, b"0,0\r\n515,21,3,1\r\n318,62,x,y\r\n") == [(515.0, 21.0), (318.0, 62.0)]
    assert loop.garbage_lines == 0


def test_overlong_line_without_newline_is_discarded(closing, caplog):
    loop = closing(Dylos("loop://", read_timeout=0.005))
    feed(loop, b"0,0\r\n")
    assert loop.serial is not None
    for _ in range(40):  # 40 kB without a line end: one garbage line, a bounded buffer
        loop.serial.write(b"1" * 1000)
        assert loop.read() == []
        assert len(loop._buffer) <= MAX_LINE
    # the rest of the overlong line, up to its end, is garbage too: "11,2" must not parse
    assert feed(loop, b"11,2\r\n515,21\r\n") == [(515.0, 21.0)]
    assert loop.garbage_lines == 1
    assert (
        len(warnings_of(caplog)) == 1 and f"longer than {MAX_LINE} bytes" in warnings_of(caplog)[0]
    )


def test_overlong_line_arriving_whole_is_discarded(loop):
    assert feed(loop, b"0,0\r\n" + b"1" * 300 + b",2\r\n515,21\r\n") == [(515.0, 21.0)]
    assert loop.garbage_lines == 1


def test_parse_line_takes_two_non_negative_integers():
    assert parse_line(b"515,21\r") == (515, 21)
    assert parse_line(b" 515 , 21 ,3,1") == (515, 21)
    assert parse_line(b"\r") is None
    for bad in (b"515", b"-1,2", b"1,+2", b"1.0,2", b"\xd9\xa3,1", b",", b"x,1"):
        with pytest.raises(ValueError):
            parse_line(bad)


# --- factory, lifecycle, probe -------------------------------------------------------------


def test_unknown_backend_names_the_key_and_the_allowed_values():
    with pytest.raises(ValueError, match=r"\[dylos\] backend: 'usb' is not one of: hardware"):
        open_dylos("usb")
    with pytest.raises(OptionError, match=r"^kit\.ini \[dylos\] backend"):  # a SensorError
        open_dylos("usb", config_file="kit.ini")


def test_bad_replay_file_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="does-not-exist"):
        open_dylos("simulated", replay=str(tmp_path / "does-not-exist.txt"))
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"515,21\r\nhello\r\n")
    with pytest.raises(ValueError, match=r"bad.txt line 2"):
        open_dylos("simulated", replay=str(bad))


def test_replay_file_is_played_instead_of_the_made_up_lines(closing, tmp_path):
    replay = tmp_path / "replay.txt"
    replay.write_bytes(b"1,2\r\n3,4\r\n5,6\r\n")
    driver = closing(open_dylos("simulated", replay=str(replay), speedup=FAST))
    assert is_run_of(collect(driver, 10), [(1, 2), (3, 4), (5, 6)], cyclic=True)


def test_hardware_backend_opens_the_port_url(closing):
    driver = closing(open_dylos("hardware", port="loop://", read_timeout=0.05))
    assert driver.connected and feed(driver, b"0,0\r\n1,2\r\n") == [(1.0, 2.0)]


def test_close_stops_the_simulator_and_read_after_close_is_an_error():
    driver = open_dylos("simulated", speedup=FAST)
    port = driver.port
    assert os.path.exists(port)
    driver.close()
    driver.close()
    assert not os.path.lexists(port) and not driver.connected
    with pytest.raises(SensorError, match="after close"):
        driver.read()


def test_list_serial_ports_names_stable_links_first_without_duplicates(monkeypatch, tmp_path):
    usb0, ama0 = tmp_path / "ttyUSB0", tmp_path / "ttyAMA0"
    usb0.touch()
    ama0.touch()
    link = tmp_path / "usb-Prolific_USB-Serial-if00-port0"
    link.symlink_to(usb0)
    monkeypatch.setattr(dylos_module.glob, "glob", lambda pattern: [str(link)])
    comports = [SimpleNamespace(device=str(ama0)), SimpleNamespace(device=str(usb0))]
    monkeypatch.setattr(dylos_module.serial.tools.list_ports, "comports", lambda: comports)
    assert list_serial_ports() == [str(link), str(ama0)]


def test_list_serial_ports_runs_on_this_machine():
    ports = list_serial_ports()
    assert isinstance(ports, list) and all(isinstance(p, str) for p in ports)


def test_real_dc1100_capture_is_400_crlf_lines():
    data = Path(fixture(CAPTURE)).read_bytes()
    assert data.count(b"\r\n") == data.count(b"\n") == 400 == len(capture_pairs())
