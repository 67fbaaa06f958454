"""``sensorkit publish``: telegram files land in a real InfluxDB exactly as sent."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
from conftest import run_sensorkit as run_cli
from conftest import write_config

ROOT = Path(__file__).resolve().parent.parent
TESTDATA = ROOT / "testdata" / "bdp-test_sense.json"
DB = "BdP_test_sense"
SENT = json.loads(TESTDATA.read_text())
GEO = "51.420635,6.1356117,22.9"


@pytest.fixture
def server(influx):
    """The module's server with no kit databases left from an earlier test."""
    for row in influx.rows("SHOW DATABASES", ""):
        if row["name"] != "_internal":
            influx.query(f'DROP DATABASE "{row["name"]}"')
    return influx


@pytest.fixture
def ini(tmp_path, server) -> str:
    """A config whose [kit] names another kit: publish must not care."""
    return str(
        write_config(
            tmp_path / "agent.ini",
            f"[kit]\nproject = Other\nserial = kit0\nlabel = other\n"
            f"state_dir = {tmp_path / 'state'}\n"
            f"[influx]\nurl = {server.url}\n[console]\nenabled = no\n",
        )
    )


def databases(server) -> set[str]:
    return {r["name"] for r in server.rows("SHOW DATABASES", "")} - {"_internal"}


def publish(ini: str, *files: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return run_cli("publish", "-c", ini, *files, "--wait", "20", stdin=stdin)


def jsonl(ident: dict, data: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in [{"ident": ident}] + [{"data": d} for d in data])


def test_publish_testdata_gives_exactly_the_expected_series(server, ini):
    done = publish(ini, str(TESTDATA))
    assert done.returncode == 0, done.stderr
    assert server.series(DB) == sorted(
        [
            r"data,geolocation=51.420635\,6.1356117\,22.9,label=alphaTest,new=0",
            r"data,geolocation=51.420635\,6.1356117\,22.9,label=alphaTest,new=1",
            r"data,geolocation=51.433\,6.22\,13,label=alphaTest,new=0",
            "info,label=alphaTest",
        ]
    )
    # the database is the file's own <project>_<serial>, whatever [kit] says
    assert databases(server) == {DB}


def test_every_data_field_reads_back_as_sent_with_its_time_and_new_tag(server, ini):
    assert publish(ini, str(TESTDATA)).returncode == 0
    rows = server.rows("SELECT * FROM data", DB)
    expected = []
    for i, record in enumerate(SENT["data"]):
        row = {k: v for k, v in record.items() if k != "geolocation"}
        row.update(geolocation=record.get("geolocation", GEO), label="alphaTest",
                   new="1" if i == 0 else "0")  # fmt: skip
        expected.append(row)
    assert rows == expected
    assert [r["time"] for r in rows] == [1494777772, 1494777831, 1494777880]
    # every measured value is a float, whole numbers included
    field_types = {r["fieldKey"]: r["fieldType"] for r in server.rows("SHOW FIELD KEYS", DB)}
    measured = ["pm_25", "pm_10", "dtemp", "drh", "temp", "rh", "hpa"]
    assert {k: field_types[k] for k in measured} == dict.fromkeys(measured, "float")
    # and the CLI a person uses shows the same numbers
    cli = json.loads(server.influx_cli("SELECT pm_25, rh, temp FROM data", DB))
    values = cli["results"][0]["series"][0]["values"]
    assert values == [[1494777772, 318, 25, 28.75], [1494777831, 318, 26, 27],
                      [1494777880, 318, 28, 27.5]]  # fmt: skip


def test_the_info_point_carries_the_ident_at_the_first_records_time(server, ini):
    assert publish(ini, str(TESTDATA)).returncode == 0
    [info] = server.rows("SELECT * FROM info", DB)
    ident = SENT["ident"]
    assert info == {
        "time": SENT["data"][0]["time"],
        "label": "alphaTest",
        "project": "BdP",
        "serial": "test_sense",
        "geolocation": GEO,
        "fields": ",".join(ident["fields"]),
        "units": ",".join(ident["units"]),
        "types": ",".join(ident["types"]),
    }


def test_the_summary_and_exit_code_say_how_many_went_where(server, ini):
    done = publish(ini, str(TESTDATA))
    assert done.returncode == 0
    assert f"{TESTDATA}: 1 ident, 3 data -> database {DB}" in done.stderr
    assert f"influx {server.url}: 4 points delivered" in done.stderr
    assert "still queued" not in done.stderr


def test_json_lines_and_stdin_work_too(server, ini, tmp_path):
    lines = tmp_path / "kit.jsonl"
    lines.write_text(jsonl(SENT["ident"], SENT["data"]))
    done = publish(ini, str(lines))
    assert done.returncode == 0, done.stderr
    first = server.rows("SELECT * FROM data", DB)
    assert len(first) == 3
    server.query(f'DROP DATABASE "{DB}"')

    done = publish(ini, "-", stdin=lines.read_text())
    assert done.returncode == 0, done.stderr
    assert f"<stdin>: 1 ident, 3 data -> database {DB}" in done.stderr
    assert server.rows("SELECT * FROM data", DB) == first
    assert len(server.series(DB)) == 4

    server.query(f'DROP DATABASE "{DB}"')
    done = publish(ini, "-", stdin=TESTDATA.read_text())  # the object form on stdin
    assert done.returncode == 0, done.stderr
    assert server.rows("SELECT * FROM data", DB) == first


def test_two_files_with_different_idents_go_to_two_databases(server, ini, tmp_path):
    other = tmp_path / "other.jsonl"
    other.write_text(
        jsonl(
            {"project": "NL", "serial": "kit2", "label": "beta"},
            [{"time": 1600000000, "pm_25": 5}, {"time": 1600000060, "pm_25": 6}],
        )  # fmt: skip
    )
    done = publish(ini, str(TESTDATA), str(other))
    assert done.returncode == 0, done.stderr
    assert databases(server) == {DB, "NL_kit2"}
    assert f"{other}: 1 ident, 2 data -> database NL_kit2" in done.stderr
    assert f"{TESTDATA}: 1 ident, 3 data -> database {DB}" in done.stderr
    assert "7 points delivered" in done.stderr  # 4 + 3, info points included
    assert server.series("NL_kit2") == ["data,label=beta,new=0", "data,label=beta,new=1",
                                        "info,label=beta"]  # fmt: skip
    assert len(server.rows("SELECT * FROM data", DB)) == 3


def _bad_json(path: Path) -> tuple[str, str]:
    lines = jsonl({"project": "Bad", "serial": "kit"}, [{"time": 1, "a": 1}] * 3).splitlines()
    lines[2] = lines[2][:-1]  # line 3 loses its closing brace
    path.write_text("\n".join(lines) + "\n")
    return "line 3 column", "not valid JSON"


def _missing_time(path: Path) -> tuple[str, str]:
    path.write_text(jsonl({"project": "Bad", "serial": "kit"},
                          [{"time": 1, "a": 1}, {"time": 2, "a": 2}, {"a": 3}]))  # fmt: skip
    return "line 4: data.time", "is required as integer UNIX seconds"


def _missing_time_object_form(path: Path) -> tuple[str, str]:
    records = [{"time": 1, "a": 1}, {"a": 2}]
    body = ",\n".join(json.dumps(r) for r in records)
    path.write_text('{"ident": {"project": "Bad", "serial": "kit"},\n "data": [\n' + body + "]}")
    return "line 4: data[1].time", "is required as integer UNIX seconds"


def _data_first(path: Path) -> tuple[str, str]:
    path.write_text(
        json.dumps({"data": {"time": 1, "a": 1}}) + "\n"
        + json.dumps({"ident": {"project": "Bad", "serial": "kit"}}) + "\n"
    )  # fmt: skip
    return "line 1: data", "comes before any ident"


@pytest.mark.parametrize("make", [_bad_json, _missing_time, _missing_time_object_form,
                                  _data_first])  # fmt: skip
def test_a_malformed_file_is_refused_whole_and_nothing_of_the_call_is_sent(
    server, ini, tmp_path, make
):
    good = tmp_path / "good.jsonl"
    good.write_text(jsonl({"project": "Good", "serial": "kit"}, [{"time": 5, "a": 1}]))
    bad = tmp_path / "bad.json"
    where, reason = make(bad)
    done = publish(ini, str(TESTDATA), str(bad), str(good))
    assert done.returncode == 2
    assert f"{bad}: {where}" in done.stderr
    assert reason in done.stderr
    assert done.stderr.count("\n") == 1, done.stderr  # one clear message, nothing else
    assert databases(server) == set()
    # nothing was left queued for a later call to send either
    later = tmp_path / "later.jsonl"
    later.write_text(jsonl({"project": "Later", "serial": "kit"}, [{"time": 5, "a": 1}]))
    done = publish(ini, str(later))
    assert done.returncode == 0, done.stderr
    assert databases(server) == {"Later_kit"}
    assert "2 points delivered" in done.stderr


def test_a_missing_file_is_refused_with_exit_2_and_nothing_sent(server, ini, tmp_path):
    done = publish(ini, str(TESTDATA), str(tmp_path / "nope.json"))
    assert done.returncode == 2
    assert "nope.json: cannot read it" in done.stderr
    assert databases(server) == set()


def test_publishing_the_same_file_twice_stores_no_duplicates(server, ini, tmp_path):
    assert publish(ini, str(TESTDATA)).returncode == 0
    before = server.rows("SELECT * FROM /.*/", DB)
    # the same call again in another second, and once more from a fresh queue
    time.sleep(1.05 - time.time() % 1)
    assert publish(ini, str(TESTDATA)).returncode == 0
    fresh = write_config(
        tmp_path / "fresh.ini",
        Path(ini).read_text().replace(str(tmp_path / "state"), str(tmp_path / "state2")),
    )
    assert publish(str(fresh), str(TESTDATA)).returncode == 0
    assert server.rows("SELECT * FROM /.*/", DB) == before
    counts = server.rows("SELECT count(pm_25) FROM data", DB)
    assert counts[0]["count"] == 3
    assert len(server.rows("SELECT * FROM info", DB)) == 1
    assert len(server.series(DB)) == 4


def test_the_summary_counts_only_this_calls_points(server, ini):
    assert publish(ini, str(TESTDATA)).returncode == 0
    done = publish(ini, str(TESTDATA))
    assert f"influx {server.url}: 4 points delivered" in done.stderr


def test_console_output_prints_the_telegrams_as_json_lines(server, tmp_path):
    ini = write_config(
        tmp_path / "console.ini",
        f"[kit]\nproject = x\nstate_dir = {tmp_path / 'state'}\n"
        f"[influx]\nenabled = no\nurl = {server.url}\n[console]\nenabled = yes\n",
    )
    done = publish(str(ini), str(TESTDATA))
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert lines[0]["ident"]["label"] == "alphaTest"
    assert [line["data"] for line in lines[1:]] == SENT["data"]
    assert databases(server) == set()


def test_the_json_lines_example_in_testdata_stores_the_same_points_as_the_object_form(
    server, ini
):
    assert publish(ini, str(TESTDATA)).returncode == 0
    first = [server.rows(f"SELECT * FROM {m}", DB) for m in ("info", "data")]
    server.query(f'DROP DATABASE "{DB}"')
    done = publish(ini, str(TESTDATA.with_suffix(".jsonl")))
    assert done.returncode == 0, done.stderr
    assert [server.rows(f"SELECT * FROM {m}", DB) for m in ("info", "data")] == first
    assert len(first[1]) == 3
