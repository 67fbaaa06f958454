"""Reading telegram files incrementally: both forms in linear time and flat memory, faults
named by file and line, hostile input refused with one message, what is left out counted."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
import tracemalloc
from pathlib import Path

import pytest
from conftest import run_sensorkit, write_config

import agent.telegram
from agent.telegram import (
    Data,
    FileSummary,
    Ident,
    TelegramError,
    check_telegrams,
    parse_telegrams,
    read_telegrams,
    summarize_text,
)

ROOT = Path(__file__).resolve().parent.parent
TESTDATA = ROOT / "testdata" / "bdp-test_sense.json"
IDENT = {"project": "BdP", "serial": "big", "label": "alpha", "geolocation": "51.4,6.1,22"}


def record(i: int) -> dict:
    return {"time": 1_600_000_000 + i, "pm_25": 318.0 + i % 7, "pm_10": 62.5, "dtemp": 27.8,
            "drh": 29.3, "temp": 28.75, "rh": 25.0, "hpa": 712.0}  # fmt: skip


def write_jsonl(path: Path, n: int) -> Path:
    with open(path, "w") as out:
        out.write(json.dumps({"ident": IDENT}) + "\n")
        for i in range(n):
            out.write(json.dumps({"data": record(i)}) + "\n")
    return path


def write_object(path: Path, n: int, *, data_first: bool = False, indent: int | None = 1) -> Path:
    """The one-object form, pretty (a record over several lines) or all on one line."""
    sep = "\n" if indent is not None else ""
    with open(path, "w") as out:
        ident = f'"ident": {json.dumps(IDENT)}'
        out.write("{" + ("" if data_first else ident + "," + sep) + f'"data": [{sep}')
        for i in range(n):
            out.write(("," + sep if i else "") + json.dumps(record(i), indent=indent))
        out.write(f"{sep}]" + ("," + sep + ident if data_first else "") + "}" + sep)
    return path


def expected(n: int) -> list:
    return [Ident(**IDENT, time=record(0)["time"])] + [
        Data(time=r.pop("time"), values=tuple(r.items())) for r in map(record, range(n))
    ]


def refused(text: str, source: str = "f.json") -> str:
    with pytest.raises(TelegramError) as caught:
        parse_telegrams(text, source)
    return str(caught.value)


# -- the same telegrams, whatever the form -----------------------------------------------------


@pytest.mark.parametrize(
    "write",
    [
        write_jsonl,
        write_object,
        lambda p, n: write_object(p, n, indent=None),  # compact: one line of any length
        lambda p, n: write_object(p, n, data_first=True),  # json.dumps(sort_keys=True) order
        lambda p, n: write_object(p, n, data_first=True, indent=None),
    ],
    ids=["json-lines", "object", "object-one-line", "data-first", "data-first-one-line"],
)
@pytest.mark.parametrize("n", [3, 2500])  # 2500: more than the reader holds, and many chunks
def test_every_form_reads_to_the_same_telegrams_from_a_file_and_a_text(tmp_path, write, n):
    path = write(tmp_path / "kit.json", n)
    telegrams = list(read_telegrams(path))
    assert telegrams == expected(n)
    assert parse_telegrams(path.read_text(), "kit.json") == telegrams
    summary = check_telegrams(path, "kit.json")
    assert summary == FileSummary("kit.json", 1, n, ("BdP_big",))
    assert summary.describe() == f"kit.json: 1 ident, {n} data -> database BdP_big"


def test_data_before_the_ident_in_a_json_lines_record_belongs_to_that_ident():
    other = {**IDENT, "serial": "other"}
    text = (
        json.dumps({"ident": IDENT}) + "\n"
        + json.dumps({"data": [record(0)], "ident": other}) + "\n"
        + json.dumps({"data": record(1)}) + "\n"
    )  # fmt: skip
    ident, first_data_ident, data0, data1 = parse_telegrams(text, "k.jsonl")
    assert (ident.serial, ident.time) == ("big", None)  # no data of its own: sent-time stamp
    assert (first_data_ident.serial, first_data_ident.time) == ("other", record(0)["time"])
    assert (data0.time, data1.time) == (record(0)["time"], record(1)["time"])


def test_a_character_split_between_two_reads_is_decoded_whole(tmp_path):
    path = tmp_path / "split.jsonl"
    head = json.dumps({"ident": IDENT}) + "\n" + '{"data": {"time": 1, "t": "'
    filler = "x" * (agent.telegram._CHUNK - len(head.encode()) - 1)  # é straddles the read
    path.write_text(head + filler + 'é€😀"}}\n', encoding="utf-8")
    [_, data] = read_telegrams(path)
    assert dict(data.values)["t"] == filler + "é€😀"


def test_the_reader_yields_as_it_goes_so_callers_check_every_file_first(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", 5)
    with open(path, "a") as out:
        out.write('{"data": {"pm_25": 1}}\n')
    seen = []
    with pytest.raises(TelegramError, match=r"bad\.jsonl: line 7: data\.time: is required"):
        for telegram in read_telegrams(path, "bad.jsonl"):
            seen.append(telegram)
    assert len(seen) == 6  # what came before the fault; check_telegrams refuses at once:
    with pytest.raises(TelegramError, match=r"bad\.jsonl: line 7: data\.time"):
        check_telegrams(path, "bad.jsonl")


# -- where a fault is --------------------------------------------------------------------------


def test_faults_deep_in_a_big_one_object_file_name_their_line(tmp_path):
    path = write_object(tmp_path / "big.json", 30_000)
    lines = path.read_text().split("\n")
    target = next(i for i, text in enumerate(lines) if '"time": 1600025000' in text)
    lines[target] = lines[target].replace('"time": 1600025000', '"time": "soon"')
    path.write_text("\n".join(lines))
    with pytest.raises(TelegramError) as caught:
        check_telegrams(path)
    # the record starts on the line before its "time" key (indent=1 puts "{" alone)
    assert str(caught.value).startswith(f"{path}: line {target}: data[25000].time: is required")
    lines[target] = lines[target].replace('"soon"', "1600025000,,")
    path.write_text("\n".join(lines))
    with pytest.raises(TelegramError) as caught:
        check_telegrams(path)
    column = lines[target].index(",,") + 2
    assert str(caught.value).startswith(f"{path}: line {target + 1} column {column}: not valid")


def test_faults_deep_in_a_big_json_lines_file_name_their_line_with_crlf_endings(tmp_path):
    path = write_jsonl(tmp_path / "big.jsonl", 30_000)
    lines = path.read_text().split("\n")
    lines[25_001] = lines[25_001].replace('"pm_10": 62.5', '"pm_10": [62.5]')
    path.write_bytes("\r\n".join(lines).encode())
    with pytest.raises(TelegramError) as caught:
        check_telegrams(path, "big.jsonl")
    assert str(caught.value).startswith("big.jsonl: line 25002: data.pm_10: must be a number")


def test_a_json_lines_record_ends_at_its_line():
    text = json.dumps({"ident": IDENT}) + '\n{"data": {"time": 1,\n"a": 1}}\n'
    assert refused(text).startswith("f.json: line 2 column 21: not valid JSON (Expecting property")
    text = json.dumps({"ident": IDENT}) + '\n{"data": {"time": 1, "a": 1}} {"data": {}}\n'
    assert refused(text).startswith("f.json: line 2 column 31: not valid JSON (Extra data)")


def test_only_whitespace_may_follow_the_one_object():
    text = TESTDATA.read_text() + '\n{"data": {"time": 1, "a": 1}}\n'
    line = TESTDATA.read_text().count("\n") + 2
    assert refused(text).startswith(f"f.json: line {line}: only whitespace may follow the object")


def test_a_byte_that_is_not_utf8_is_named_by_line_and_column(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(json.dumps({"ident": IDENT}).encode() + b'\n{"data": {"t": "caf\xe9"}}\n')
    with pytest.raises(TelegramError) as caught:
        check_telegrams(path, "latin1.jsonl")
    assert str(caught.value) == (
        "latin1.jsonl: line 2 column 20: byte 0xe9 is not UTF-8 text; save the file as UTF-8"
    )


def test_a_missing_file_is_a_telegram_error(tmp_path):
    with pytest.raises(TelegramError, match=r"nope\.json: cannot read it: .*No such file"):
        check_telegrams(tmp_path / "nope.json", "nope.json")


# -- linear time, flat memory ------------------------------------------------------------------


def _cpu_seconds(path: Path, repeat: int = 3) -> float:
    """The best of a few runs in CPU time of this process: others' load does not count."""
    best = float("inf")
    for _ in range(repeat):
        start = time.process_time()
        for _ in read_telegrams(path):
            pass
        best = min(best, time.process_time() - start)
    return best


def test_the_one_object_form_reads_within_twice_the_time_of_json_lines(tmp_path):
    """Issue 12: 40k points took 25.7 s as one object against 0.49 s as JSON Lines."""
    n = 20_000
    lines = _cpu_seconds(write_jsonl(tmp_path / "k.jsonl", n))
    pretty = _cpu_seconds(write_object(tmp_path / "k.json", n))
    compact = _cpu_seconds(write_object(tmp_path / "c.json", n, indent=None))
    assert pretty < 2 * lines and compact < 2 * lines, (pretty, compact, lines)


def test_reading_time_grows_linearly_with_the_points(tmp_path):
    small = _cpu_seconds(write_object(tmp_path / "s.json", 10_000))
    large = _cpu_seconds(write_object(tmp_path / "l.json", 40_000))
    assert large < 6 * small, (small, large)  # linear: 4; quadratic: 16


def _peak_bytes(path: Path) -> int:
    tracemalloc.start()
    try:
        count = sum(1 for _ in read_telegrams(path))
        return tracemalloc.get_traced_memory()[1] if count else 0
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize(
    "write",
    [write_jsonl, lambda p, n: write_object(p, n, indent=None)],
    ids=["json-lines", "object-one-line"],
)
def test_memory_does_not_grow_with_the_file(tmp_path, write):
    small = write(tmp_path / "s.json", 4_000)
    large = write(tmp_path / "l.json", 30_000)
    assert large.stat().st_size > 3_000_000
    peak_small, peak_large = _peak_bytes(small), _peak_bytes(large)
    assert peak_large < 1_000_000, peak_large  # under 1 MB, for a file of over 3 MB
    assert peak_large < peak_small * 1.5 + 100_000, (peak_small, peak_large)


def test_data_before_the_ident_is_read_again_rather_than_held(tmp_path):
    large = write_object(tmp_path / "l.json", 15_000, data_first=True)
    assert _peak_bytes(large) < 4_000_000  # at most _HOLD records are held


def test_a_large_file_is_read_twice_in_flat_memory_in_a_process_of_its_own(tmp_path):
    """Issue 12's sizes: the validation pass and the sending pass over 200,000 points."""
    path = write_object(tmp_path / "200k.json", 200_000, indent=None)
    # VmHWM, not ru_maxrss: Linux keeps ru_maxrss across exec, so a child started from this
    # (large) test process would report the parent's size at fork.
    script = textwrap.dedent(f"""
        from agent.telegram import check_telegrams, read_telegrams
        summary = check_telegrams({str(path)!r})
        sent = sum(1 for _ in read_telegrams({str(path)!r}))
        status = open("/proc/self/status").read().split("VmHWM:")[1]
        print(summary.data, sent, int(status.split()[0]) // 1024)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=ROOT, timeout=300, check=True)  # fmt: skip
    data, sent, peak_mb = map(int, done.stdout.split())
    assert (data, sent) == (200_000, 200_001)
    assert path.stat().st_size > 20_000_000 and peak_mb < 50, peak_mb


# -- hostile input: one clear message ----------------------------------------------------------

KIT = '{"project": "p", "serial": "s"}'
DEEP = "[" * 100_000 + "]" * 100_000

HOSTILE = {
    "deep-data-item": (f'{{"ident": {KIT}, "data": [{DEEP}]}}',
                       "line 1: data[0]: is nested too deeply"),
    "deep-json-lines": (f'{{"ident": {KIT}}}\n{{"data": {DEEP}}}\n',
                        "line 2: data[0]: is nested too deeply"),
    "deep-ident": ('{"ident": ' + '{"a": ' * 100_000 + "1" + "}" * 100_001,
                   "line 1: ident: is nested too deeply"),
    "deep-top": (DEEP, 'line 1: expected an object with "ident" and/or "data"'),
    "long-integer": (f'{{"ident": {KIT}, "data": [{{"time": 1, "a": {"9" * 5000}}}]}}',
                     "line 1: data[0]: holds a number too long to read"),
    "long-integer-lines": (f'{{"ident": {KIT}}}\n{{"data": {{"time": 1, "a": {"9" * 5000}}}}}',
                           "line 2: data: holds a number too long to read"),
    "duplicate-field": (f'{{"ident": {KIT}, "data": [{{"time": 1, "a": 1, "a": 2}}]}}',
                        "line 1: data[0]: the key 'a' appears twice in one object"),
    "duplicate-time": (f'{{"ident": {KIT}}}\n{{"data": {{"time": 1, "a": 1, "time": 2}}}}',
                       "line 2: data: the key 'time' appears twice"),
    "duplicate-ident-key": ('{"ident": {"project": "p", "serial": "s", "serial": "t"}}',
                            "line 1: ident: the key 'serial' appears twice"),
    "duplicate-ident": (f'{{"ident": {KIT},\n "ident": {KIT}}}',
                        "line 2: the key 'ident' appears twice in one object"),
    "duplicate-data-lines": (f'{{"ident": {KIT}}}\n{{"data": {{"time": 1}}, "data": {{}}}}',
                             "line 2: the key 'data' appears twice"),
    "huge-record": (f'{{"ident": {KIT}, "data": [{{"time": 1, "a": "{"x" * 1_100_000}"}}]}}',
                    "line 1: data[0]: is longer than 1,048,576 characters"),
    "not-json": ("hello", "line 1 column 1: not valid JSON (Expecting value)"),
    "cut-short": (f'{{"ident": {KIT}, "data": [{{"time": 1',
                  "line 1 column 63: not valid JSON (Expecting ','"),
}  # fmt: skip


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_text_is_refused_with_file_line_and_reason(name):
    text, reason = HOSTILE[name]
    assert refused(text, "h.json").startswith(f"h.json: {reason}")


@pytest.mark.parametrize("name", ["deep-data-item", "long-integer", "duplicate-field",
                                  "huge-record", "deep-json-lines"])  # fmt: skip
def test_hostile_files_get_one_message_and_exit_2_from_publish(influx, tmp_path, name):
    text, reason = HOSTILE[name]
    source = tmp_path / f"{name}.json"
    source.write_text(text)
    ini = write_config(
        tmp_path / "agent.ini",
        f"[kit]\nproject = x\nstate_dir = {tmp_path / 'state'}\n[influx]\nurl = {influx.url}\n",
    )
    done = run_sensorkit("publish", "-c", str(ini), str(source), "--wait", "5")
    assert done.returncode == 2, done.stderr
    [line] = done.stderr.splitlines()
    assert line.startswith(f"sensorkit: {source}: {reason}")
    assert len(line) < 400
    assert "p_s" not in {r["name"] for r in influx.rows("SHOW DATABASES", "")}


# -- NaN, infinity, null -----------------------------------------------------------------------


def test_nan_and_infinite_values_are_left_out_counted_and_named():
    text = (
        f'{{"ident": {KIT}, "data": [\n'
        '{"time": 1, "a": 1.5},\n'
        '{"time": 2, "a": NaN, "b": 2},\n'
        '{"time": 3, "a": Infinity, "b": -Infinity},\n'
        '{"time": 4, "a": 1e309, "b": null}\n]}'
    )
    summary = summarize_text(text, "nan.json")
    assert (summary.non_finite, summary.first_non_finite) == (4, "line 3: data[1].a")
    assert (summary.empty, summary.first_empty) == (2, "line 4: data[2]")
    assert summary.notes() == [
        "nan.json: 4 values were NaN or infinite and are not sent (InfluxDB stores only finite "
        "numbers; first at line 3: data[1].a)",
        "nan.json: 2 data records hold no value to send and write no point (first at line 4: "
        "data[2])",
    ]
    values = [dict(t.values) for t in parse_telegrams(text, "nan.json")[1:]]
    assert values == [{"a": 1.5}, {"b": 2}, {}, {}]


def test_null_is_no_value_and_not_counted():
    text = f'{{"ident": {{**{KIT[1:-1]}, "note": null}}}}'.replace("**", "")
    ident = parse_telegrams(text, "n.json")[0]
    assert ident.extra == ()
    summary = summarize_text(f'{{"ident": {KIT}, "data": [{{"time": 1, "a": null, "b": 1}}]}}', "n")
    assert (summary.non_finite, summary.empty, summary.notes()) == (0, 0, [])


def test_a_file_with_nothing_left_out_has_no_notes():
    assert summarize_text(TESTDATA.read_text(), "t").notes() == []


# -- extra ident keys as info strings ----------------------------------------------------------


def test_extra_ident_keys_become_info_text_lists_joined_booleans_as_json_spells_them():
    ident = parse_telegrams(json.dumps({"ident": {
        "project": "p", "serial": "s", "ips": ["10.0.0.1", "::1"], "flags": [True, False, 3],
        "luftdaten": False, "count": 7, "ratio": 2.5, "empty": [], "missing": None,
    }}), "x")[0]  # fmt: skip
    assert dict(ident.extra) == {"ips": "10.0.0.1,::1", "flags": "true,false,3",
                                 "luftdaten": "false", "count": "7", "ratio": "2.5",
                                 "empty": ""}  # fmt: skip
