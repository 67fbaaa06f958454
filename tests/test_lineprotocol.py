"""Line protocol: escaping per the 1.x spec, proven by round trips through a real influxd and
the real ``influx`` CLI; what 1.x cannot carry is refused when the file or config is read."""

from __future__ import annotations

import itertools
import json
import math
import unicodedata
from pathlib import Path

import pytest
from conftest import run_sensorkit as run_cli
from conftest import write_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.config import ConfigError, load
from agent.influx import InfluxClient
from agent.lineprotocol import (
    check_key,
    check_tag_value,
    check_text,
    encode_point,
    escape_key,
    escape_measurement,
    format_field,
    quote_string,
)
from agent.series import SeriesEncoder, data_point, info_point
from agent.sinks import InfluxV1Sink
from agent.telegram import MAX_TIME, Data, Ident, TelegramError, parse_telegrams

ROOT = Path(__file__).resolve().parent.parent

# Text a person might type, and text chosen to break naive escaping.
HOSTILE_TAGS = [
    "alpha test",
    "a,b,c",
    "a=b",
    'say "hi"',
    "back\\slash",
    "\\leading backslash",
    "double \\\\backslash",
    "Grüße aus Köln ÄÖÜß",
    "北京 測試 テスト",
    "emoji 😀🌍🔥",
    ' mix ,= "\\x" ',
    "  spaces  ",
    "it's #1; 100%",
    "tab\there",
]
HOSTILE_TEXT = HOSTILE_TAGS + [
    "trailing backslash\\",
    "\\",
    "\\\\",
    "a\\ b\\,c\\=d",
    '"',
    '""',
    'a\\"b',
    '\\"',
    "",
    "x" * 2000,
]


def config(tmp_path: Path, server, extra: str = "") -> Path:
    return write_config(
        tmp_path / "agent.ini",
        f"[kit]\nproject = Ignored\nserial = ignored\nstate_dir = {tmp_path / 'state'}\n"
        f"[influx]\nurl = {server.url}\n[console]\nenabled = no\n{extra}",
    )


def cli_rows(server, query: str, db: str) -> list[dict]:
    """Rows as the ``influx`` CLI shows them (``-format json``): column -> value."""
    answer = json.loads(server.influx_cli(query, db))
    rows = []
    for result in answer["results"]:
        assert "error" not in result, result
        for series in result.get("series", []):
            for values in series["values"]:
                rows.append(dict(zip(series["columns"], values, strict=True)))
    return rows


# -- escaping rules (units) ----------------------------------------------------------------


def test_tag_keys_tag_values_and_field_keys_escape_comma_equals_and_space_only():
    assert escape_key("a b,c=d") == r"a\ b\,c\=d"
    assert escape_key('q"uote') == 'q"uote'
    assert escape_key("back\\slash") == "back\\slash"
    assert escape_key("ü 😀") == "ü\\ 😀"
    assert escape_key("tab\there") == "tab\there"


def test_measurement_names_escape_comma_and_space_but_not_equals():
    assert escape_measurement("a b,c=d") == r"a\ b\,c=d"


def test_string_fields_are_quoted_with_backslash_and_quote_escaped():
    assert quote_string("plain") == '"plain"'
    assert quote_string('say "hi"') == r'"say \"hi\""'
    assert quote_string("end\\") == '"end\\\\"'
    assert quote_string('a\\"b') == '"a\\\\\\"b"'
    assert quote_string("a,b=c d") == '"a,b=c d"'


def test_numbers_are_always_floats_and_nan_or_infinity_are_never_formatted():
    assert format_field(318) == "318.0"
    assert format_field(318.5) == "318.5"
    assert format_field(-0) == "0.0"
    assert format_field(10**20) == "1e+20"
    assert format_field(True) == "true" and format_field(False) == "false"
    assert format_field("318") == '"318"'
    for bad in (math.nan, math.inf, -math.inf, 10**400):
        assert format_field(bad) is None


def test_encode_point_sorts_tags_drops_empty_tags_and_unsendable_fields():
    line = encode_point("data", {"new": "1", "label": "a b", "geolocation": ""},
                        {"x": 1, "nan": math.nan, "s": "t"}, 1494777772)  # fmt: skip
    assert line == 'data,label=a\\ b,new=1 x=1.0,s="t" 1494777772'
    assert encode_point("data", {"label": "a"}, {"nan": math.nan, "inf": math.inf}, 5) is None


def test_the_testdata_encodes_to_the_expected_lines():
    telegrams = parse_telegrams((ROOT / "testdata" / "bdp-test_sense.json").read_text(), "t")
    ident, first, second, _ = telegrams
    assert info_point(ident, 1494777772) == (
        'info,label=alphaTest project="BdP",serial="test_sense",'
        'geolocation="51.420635,6.1356117,22.9",fields="time,pm_25,pm_10,dtemp,drh,temp,rh,hpa",'
        'units="s,pcs/qf,pcs/qf,C,%,C,%,hPa",types="time,Dylos DC1100,Dylos DC1100,DHT22,DHT22,'
        'BME280,BME280,BME280" 1494777772'
    )
    assert data_point(ident, first, new=True) == (
        r"data,geolocation=51.420635\,6.1356117\,22.9,label=alphaTest,new=1 "
        "pm_25=318.0,pm_10=62.0,dtemp=27.8,drh=29.3,temp=28.75,rh=25.0,hpa=712.0 1494777772"
    )
    assert data_point(ident, second, new=False).startswith(
        r"data,geolocation=51.433\,6.22\,13,label=alphaTest,new=0 "
    )


def test_series_encoder_marks_new_once_per_ident_and_stamps_info():
    ident = Ident(project="p", serial="s", label="l")
    encoder = SeriesEncoder(clock=lambda: 1700000000.9)
    with pytest.raises(ValueError):
        encoder.encode(Data(time=1, values=(("a", 1),)))
    [(db, info)] = encoder.encode(ident)
    assert db == "p_s" and info.endswith(" 1700000000")
    assert encoder.encode(Data(time=2, values=(("a", math.nan),))) == []  # nothing to send
    [(_, first)] = encoder.encode(Data(time=3, values=(("a", 1),)))
    [(_, second)] = encoder.encode(Data(time=4, values=(("a", 1),)))
    assert ",new=1 " in first and ",new=0 " in second
    [(_, again)] = encoder.encode(Ident(project="p", serial="s", label="l", time=99))
    assert again.endswith(" 99")
    [(_, third)] = encoder.encode(Data(time=5, values=(("a", 1),)))
    assert ",new=1 " in third
    assert SeriesEncoder(database="mine").encode(ident)[0][0] == "mine"


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("ends\\", "ends with a backslash"),
        ("\\", "ends with a backslash"),
        ("a\\ b", "backslash before ' '"),
        ("a\\,b", "backslash before ','"),
        ("a\\=b", "backslash before '='"),
        ("two\nlines", "line break"),
        ("cr\rhere", "line break"),
    ],
)
def test_what_a_tag_value_cannot_carry_is_named(value, problem):
    assert problem in check_tag_value(value)
    assert problem in check_key(value)


@pytest.mark.parametrize("value", ["", "a b", "a\\b", "\\a", 'a"b', "😀", "a\\\\b", "=,"])
def test_what_a_tag_value_can_carry_passes(value):
    assert check_tag_value(value) is None


def test_field_keys_refuse_more_than_tag_values():
    assert "is empty" in check_key("")
    assert "reserved" in check_key("time")
    assert "control character" in check_key("a\x00b")
    assert "backslash before '\"'" in check_key('a\\"b')  # the server reads it back as a"b
    assert check_tag_value('a\\"b') is None  # a tag value keeps it
    assert check_key("pm_25") is None and check_key("µg m³") is None


def test_text_only_refuses_line_breaks():
    assert check_text("trailing\\") is None
    assert check_text('a\\ "b",c=d') is None
    assert "line break" in check_text("a\nb")


# -- what cannot be carried is refused when the file or config is read ---------------------


@pytest.mark.parametrize(
    ("where", "value"),
    [
        ("label", "kit\\"),
        ("label", "kit\\ 2"),
        ("label", "kit\n2"),
        ("geolocation", "51.4\\,6.1"),
        ("description", "two\nlines"),
    ],
)
def test_a_file_that_1x_cannot_carry_is_refused_with_a_clear_message(where, value):
    text = json.dumps({"ident": {"project": "p", "serial": "s", where: value},
                       "data": [{"time": 1, "x": 1}]})  # fmt: skip
    with pytest.raises(TelegramError) as caught:
        parse_telegrams(text, "kit.json")
    message = str(caught.value)
    assert message.startswith("kit.json: line 1: ident.")
    assert where in message and repr(value) in message


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        ("label", "kit\\", "ends with a backslash"),
        ("label", "kit\\,2", "backslash before ','"),
        ("geolocation", "51.4\\ ", "ends with a backslash"),
    ],
)
def test_a_config_that_1x_cannot_carry_is_refused_with_a_clear_message(
    tmp_path, key, value, problem
):
    path = write_config(tmp_path / "agent.ini", f"[kit]\nproject = p\n{key} = {value}\n")
    with pytest.raises(ConfigError) as caught:
        load(path)
    message = str(caught.value)
    assert message.startswith(f"{path} [kit] {key}: {value.strip()!r} ")
    assert problem in message and "; allowed: " in message


def test_a_config_description_with_a_newline_is_refused(tmp_path):
    # configparser joins an indented continuation line with a newline
    path = write_config(tmp_path / "agent.ini", "[kit]\nproject = p\ndescription = one\n  two\n")
    with pytest.raises(ConfigError, match=r"\[kit\] description: 'one\\ntwo' contains a line"):
        load(path)


def test_the_refusals_are_needed_the_server_breaks_on_them(influx):
    """Evidence for the rules: influxd 1.6 rejects what check_tag_value/check_key refuse."""
    client = InfluxClient(influx.url, compress=False)
    client.create_database("evidence")
    sink = InfluxV1Sink(client)
    for line in (
        "m,t=end\\ f=1 1",  # a tag value ending in a backslash
        "m a\\\\ b=1 1",  # a field key with a backslash before a space
        "m time=1 1",  # a field named time
        "m =1 1",  # an empty field key
        f"m f=1 {MAX_TIME + 1}",  # a second past what int64 nanoseconds hold
    ):
        assert sink.write("evidence", line.encode()).status == 400, line
    assert sink.write("evidence", f"m f=1 {MAX_TIME}".encode()).status == 204  # the last to fit
    client.close()


# -- round trips through the real server and the real CLI ----------------------------------


def test_hostile_text_round_trips_through_publish_and_the_influx_cli(influx, tmp_path):
    lines = []
    expected_info, expected_data = [], []
    for i, (label, text) in enumerate(zip(itertools.cycle(HOSTILE_TAGS), HOSTILE_TEXT)):
        geo = HOSTILE_TAGS[(i + 3) % len(HOSTILE_TAGS)]
        override = HOSTILE_TAGS[(i + 5) % len(HOSTILE_TAGS)] if i % 2 else ""
        ident = {"project": "hostile", "serial": "kit", "label": label, "geolocation": geo,
                 "description": text, "note": text[::-1]}  # fmt: skip
        data = {"time": 1600000000 + i, "txt": text, "pm_25": i}
        if override:
            data["geolocation"] = override
        lines += [json.dumps({"ident": ident}, ensure_ascii=False), json.dumps({"data": data})]
        expected_info.append({"time": 1600000000 + i, "label": label, "geolocation": geo,
                              "description": text or None,  # an empty one is not sent
                              "note": text[::-1], "project": "hostile",
                              "serial": "kit"})  # fmt: skip
        expected_data.append({"time": 1600000000 + i, "label": label, "new": "1",
                              "geolocation": override or geo, "txt": text, "pm_25": i})  # fmt: skip
    source = tmp_path / "hostile.jsonl"
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")

    done = run_cli("publish", "-c", str(config(tmp_path, influx)), str(source), "--wait", "20")
    assert done.returncode == 0, done.stderr
    assert "quarantined" not in done.stderr

    info = cli_rows(influx, "SELECT * FROM info", "hostile_kit")
    columns = ["time", "label", "geolocation", "description", "note", "project", "serial"]
    assert [{k: row[k] for k in columns} for row in info] == expected_info
    data = cli_rows(influx, "SELECT * FROM data", "hostile_kit")
    columns = ["time", "label", "new", "geolocation", "txt", "pm_25"]
    assert [{k: row[k] for k in columns} for row in data] == expected_data
    tag_values = cli_rows(influx, 'SHOW TAG VALUES FROM data WITH KEY = "label"', "hostile_kit")
    assert sorted(r["value"] for r in tag_values) == sorted(set(HOSTILE_TAGS))
    # The server's own series keys are our escaping, character for character.
    keys = {
        f"data,geolocation={escape_key(row['geolocation'])},label={escape_key(row['label'])},new=1"
        for row in expected_data
    } | {f"info,label={escape_key(label)}" for label in HOSTILE_TAGS}
    assert set(influx.series("hostile_kit")) == keys


_HOSTILE_CHARS = st.sampled_from(list(" ,=\"'\\#;%\tüßÄ日本😀\u00a0\u2028\u0085\x00\x1f{}[]"))
_ANY_CHAR = st.characters(exclude_categories=("Cs",), exclude_characters="\n\r")
_TEXT = st.text(st.one_of(_HOSTILE_CHARS, _ANY_CHAR), max_size=15)
# Tag values refuse control characters other than TAB (pinned in test_limits.py), so their
# alphabet leaves them out rather than filtering whole strings away.
_TAG_CHARS = st.one_of(_HOSTILE_CHARS, _ANY_CHAR).filter(
    lambda c: c == "\t" or unicodedata.category(c) != "Cc"
)
_TAG = st.text(_TAG_CHARS, max_size=15).filter(lambda v: v != "" and check_tag_value(v) is None)
_KEY = _TEXT.filter(
    lambda v: (
        check_key(v) is None
        and not v.startswith("_")
        and v not in ("label", "new", "geolocation", "x")
    )
)
_KIT = st.tuples(_TAG, _TAG, _TEXT, _TEXT, st.one_of(st.just(""), _TAG), _KEY)
_databases = itertools.count()


@settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(kits=st.lists(_KIT, min_size=1, max_size=6))
def test_property_any_carryable_text_reads_back_unchanged_in_the_influx_cli(influx, kits):
    """JSON file text -> parser -> line protocol -> influxd -> ``influx`` CLI: all equal."""
    db = f"prop{next(_databases)}"
    records = []
    for i, (label, geo, description, text, override, key) in enumerate(kits):
        data = {"time": 1000 + i, "x": i, key: text}
        if override:
            data["geolocation"] = override
        records.append({"ident": {"project": "p", "serial": "s", "label": label,
                                  "geolocation": geo, "description": description}})  # fmt: skip
        records.append({"data": data})
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    encoder = SeriesEncoder(database=db)
    lines = [line for t in parse_telegrams(text, "prop.jsonl") for _, line in encoder.encode(t)]
    client = InfluxClient(influx.url)
    client.create_database(db)
    assert InfluxV1Sink(client).write(db, "\n".join(lines).encode()).status == 204
    client.close()

    info = cli_rows(influx, "SELECT * FROM info", db)
    data = cli_rows(influx, "SELECT * FROM data", db)
    assert [
        (r["time"], r["label"], r["geolocation"], r.get("description") or "") for r in info
    ] == [(1000 + i, k[0], k[1], k[2]) for i, k in enumerate(kits)]
    assert len(data) == len(kits)
    for i, (row, kit) in enumerate(zip(data, kits, strict=True)):
        label, geo, _, text, override, key = kit
        assert (row["time"], row["label"], row["geolocation"], row["new"], row["x"]) == (
            1000 + i, label, override or geo, "1", i)  # fmt: skip
        assert row[key] == text
    influx.query(f'DROP DATABASE "{db}"')


# -- floats: the field type never changes; NaN and infinity never sent ---------------------


def test_whole_numbers_are_written_as_floats_so_the_field_type_never_changes(influx, tmp_path):
    ident = {"project": "floats", "serial": "kit"}
    first = tmp_path / "first.jsonl"
    first.write_text(json.dumps({"ident": ident, "data": [{"time": 100, "pm_25": 318}]}))
    second = tmp_path / "second.jsonl"
    second.write_text(json.dumps({"ident": ident, "data": [{"time": 160, "pm_25": 318.5}]}))
    ini = str(config(tmp_path, influx))
    for path in (first, second):
        done = run_cli("publish", "-c", ini, str(path), "--wait", "20")
        assert done.returncode == 0, done.stderr
        assert "quarantined" not in done.stderr  # no point refused (a 400) ...
        assert "answered 400" not in done.stderr and "400:" not in done.stderr  # ... said any way
    rows = influx.rows("SELECT pm_25 FROM data", "floats_kit")
    assert [(r["time"], r["pm_25"]) for r in rows] == [(100, 318), (160, 318.5)]
    keys = influx.rows("SHOW FIELD KEYS FROM data", "floats_kit")
    assert {r["fieldKey"]: r["fieldType"] for r in keys} == {"pm_25": "float"}


def test_an_integer_field_would_have_been_a_permanent_400(influx):
    """Why: had 318 gone as an integer, 318.5 would be refused forever."""
    client = InfluxClient(influx.url)
    client.create_database("ints")
    sink = InfluxV1Sink(client)
    assert sink.write("ints", b"data pm_25=318i 100").status == 204
    refused = sink.write("ints", b"data pm_25=318.5 160")
    assert refused.status == 400 and "conflict" in refused.message
    client.close()


def test_nan_and_infinity_are_never_sent(influx, tmp_path):
    source = tmp_path / "nan.json"
    source.write_text(
        '{"ident": {"project": "nan", "serial": "kit"}, "data": ['
        '{"time": 100, "a": NaN, "b": Infinity},'
        '{"time": 160, "a": 1.5, "b": -Infinity},'
        '{"time": 220, "a": 2, "b": 3}]}'
    )
    done = run_cli("publish", "-c", str(config(tmp_path, influx)), str(source), "--wait", "20")
    assert done.returncode == 0, done.stderr
    assert "quarantined" not in done.stderr
    rows = influx.rows("SELECT * FROM data", "nan_kit")
    # the first record had nothing sendable: no point, and the next point is the new one
    assert [(r["time"], r["a"], r["b"], r["new"]) for r in rows] == [
        (160, 1.5, None, "1"),
        (220, 2, 3, "0"),
    ]
