"""Telegrams recorded by others (MySense, ``../shared/fixtures/external``): published with
``sensorkit publish`` into a real influxd and read back exactly, or refused whole."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_sensorkit, write_config

ROOT = Path(__file__).resolve().parent.parent
EXTERNAL = ROOT.parent / "shared" / "fixtures" / "external"
pytestmark = pytest.mark.skipif(
    not EXTERNAL.is_dir(), reason=f"{EXTERNAL} is absent (other people's recordings stay outside)"
)
CONFORMING = ["mysense-output-test-data.json", "mysense-mydb-test-data.json"]
NONCONFORMING = sorted(p.name for p in EXTERNAL.glob("nonconforming-*.json"))


@pytest.fixture
def server(influx):
    for row in influx.rows("SHOW DATABASES", ""):
        if row["name"] != "_internal":
            influx.query(f'DROP DATABASE "{row["name"]}"')
    return influx


@pytest.fixture
def ini(tmp_path, server) -> str:
    return str(
        write_config(
            tmp_path / "agent.ini",
            f"[kit]\nproject = Other\nserial = kit0\nstate_dir = {tmp_path / 'state'}\n"
            f"[influx]\nurl = {server.url}\n[console]\nenabled = no\n",
        )
    )


def databases(server) -> set[str]:
    return {r["name"] for r in server.rows("SHOW DATABASES", "")} - {"_internal"}


# -- what the file says, read with json alone (the contract, not the parser) ---------------


def groups(path: Path) -> list[tuple[dict, list[dict]]]:
    """Each ident with the data records that belong to it, in file order."""
    text = path.read_text(encoding="utf-8")
    try:
        records = [json.loads(text)]
    except json.JSONDecodeError:  # JSON Lines
        records = [json.loads(line) for line in text.splitlines() if line.strip()]
    out: list[tuple[dict, list[dict]]] = []
    for record in records:
        if "ident" in record:
            out.append((record["ident"], []))
        data = record.get("data", [])
        out[-1][1].extend(data if isinstance(data, list) else [data])
    return out


def info_text(value: object) -> str:
    """The telegram contract: ident values as info strings, lists joined with ','."""
    if isinstance(value, list):
        return ",".join(info_text(item) for item in value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if isinstance(value, str) else json.dumps(value)


def expected_rows(path: Path) -> dict[str, dict[str, list[dict]]]:
    """database -> measurement -> rows as ``SELECT *`` returns them (time order)."""
    out: dict[str, dict[str, list[dict]]] = {}
    for ident, records in groups(path):
        database = out.setdefault(f"{ident['project']}_{ident['serial']}", {"info": [], "data": []})
        info = {"time": ident.get("time", records[0]["time"])}
        for key, value in ident.items():
            if key != "time" and value is not None:
                info[key] = info_text(value)
        database["info"].append(info)
        for i, record in enumerate(records):
            row = {k: v for k, v in record.items() if v is not None}
            row["geolocation"] = record.get("geolocation") or ident.get("geolocation")
            row.update(label=ident.get("label"), new="1" if i == 0 else "0")
            database["data"].append(row)
    for measurements in out.values():
        for name, rows in measurements.items():
            # a column exists when some point holds it (a tag no series has is no column)
            columns = {key for row in rows for key, value in row.items() if value is not None}
            measurements[name] = sorted(
                ({c: row.get(c) for c in columns} for row in rows), key=lambda r: r["time"]
            )
    return out


def stored_rows(server, database: str, measurement: str) -> list[dict]:
    rows = server.rows(f"SELECT * FROM {measurement}", database)
    # a tag a series lacks comes back as "" in SELECT *: the point has no such tag
    return [{k: (None if v == "" else v) for k, v in row.items()} for row in rows]


# -- MySense's own test telegrams ------------------------------------------------------------


@pytest.mark.parametrize("name", CONFORMING)
def test_mysense_test_telegrams_publish_and_read_back_exactly(server, ini, name):
    path = EXTERNAL / name
    done = run_sensorkit("publish", "-c", ini, str(path), "--wait", "20")
    assert done.returncode == 0, done.stderr
    assert "quarantined" not in done.stderr and "NaN" not in done.stderr
    expected = expected_rows(path)
    assert databases(server) == set(expected)
    for database, measurements in expected.items():
        for measurement, rows in measurements.items():
            assert stored_rows(server, database, measurement) == rows, (database, measurement)
        fields = server.rows("SHOW FIELD KEYS FROM data", database)
        measured = {k for row in measurements["data"] for k in row} - {
            "time", "label", "geolocation", "new"
        }  # fmt: skip
        assert {r["fieldKey"]: r["fieldType"] for r in fields} == dict.fromkeys(measured, "float")
        info_fields = server.rows("SHOW FIELD KEYS FROM info", database)
        assert {r["fieldType"] for r in info_fields} == {"string"}


def test_mysense_lists_are_joined_with_commas_in_info(server, ini):
    """The point of issue 7.2, spelled out: extern_ip and intern_ip are lists in the ident."""
    path = EXTERNAL / "mysense-output-test-data.json"
    assert run_sensorkit("publish", "-c", ini, str(path), "--wait", "20").returncode == 0
    [info] = server.rows("SELECT extern_ip, intern_ip, version FROM info", "BdP_test_sense")
    assert info["extern_ip"] == "83.161.151.250"
    assert info["intern_ip"] == (
        "192.168.178.49,2001:980:ac6a:1:83c2:7b8d:90b7:8750,2001:980:ac6a:1:17bf:6b65:17d2:dd7a"
    )
    assert info["version"] == "0.2.28"
    # the third record's "null": null is no value: no field of that name exists
    keys = {r["fieldKey"] for r in server.rows("SHOW FIELD KEYS FROM data", "BdP_test_sense")}
    assert "null" not in keys


def test_mysense_idents_without_label_or_geolocation_write_series_without_those_tags(
    server, ini
):
    path = EXTERNAL / "mysense-mydb-test-data.json"
    assert run_sensorkit("publish", "-c", ini, str(path), "--wait", "20").returncode == 0
    assert server.series("VW2017_XXXXXXX") == [
        "data,geolocation=?,new=1",
        "data,new=1",
        "info",
    ]


# -- telegrams whose fields, units and types are not parallel --------------------------------


@pytest.mark.parametrize("name", NONCONFORMING)
def test_nonconforming_telegrams_are_refused_whole_with_one_message(server, ini, tmp_path, name):
    path = EXTERNAL / name
    good = tmp_path / "good.jsonl"
    good.write_text(
        '{"ident": {"project": "Good", "serial": "kit"}}\n{"data": {"time": 5, "a": 1}}\n'
    )
    done = run_sensorkit("publish", "-c", ini, str(good), str(path), "--wait", "20")
    assert done.returncode == 2
    [line] = done.stderr.splitlines()
    assert line.startswith(f"sensorkit: {path}: line 2: ident: fields, units and types are ")
    assert "must be equally long" in line and "types" in line
    assert databases(server) == set()  # no point of it, nor of the good file beside it


def test_the_nonconforming_files_are_the_ones_the_readme_describes():
    assert NONCONFORMING == [
        "nonconforming-mysense-influx-doc-sample.json",
        "nonconforming-mysense-influxsub-comment.json",
        "nonconforming-mysense-output-test-data-pii.json",
        "nonconforming-mysense-output-test-data-v1.json",
    ]
