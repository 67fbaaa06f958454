"""Telegrams: both JSON forms of docs/design.md, refusals naming file, line and reason."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from agent.telegram import (
    MAX_TIME,
    Data,
    Ident,
    TelegramError,
    data_from_json,
    ident_from_json,
    parse_telegrams,
    to_json_line,
)

ROOT = Path(__file__).resolve().parent.parent
TESTDATA = ROOT / "testdata" / "bdp-test_sense.json"

IDENT = {
    "project": "BdP",
    "serial": "test_sense",
    "label": "alphaTest",
    "geolocation": "51.420635,6.1356117,22.9",
    "fields": ["time", "pm_25", "pm_10", "dtemp", "drh", "temp", "rh", "hpa"],
    "units": ["s", "pcs/qf", "pcs/qf", "C", "%", "C", "%", "hPa"],
    "types": ["time", "Dylos DC1100", "Dylos DC1100", "DHT22", "DHT22", "BME280", "BME280",
              "BME280"],
}  # fmt: skip
DATA = [
    {"time": 1494777772, "pm_25": 318, "pm_10": 62, "dtemp": 27.8, "drh": 29.3, "temp": 28.75,
     "rh": 25, "hpa": 712},
    {"time": 1494777831, "pm_25": 318, "pm_10": 63, "dtemp": 27.8, "drh": 29.5, "temp": 27,
     "rh": 26, "hpa": 714, "geolocation": "51.433,6.22,13"},
    {"time": 1494777880, "pm_25": 318, "pm_10": 64, "dtemp": 27.8, "drh": 29.6, "temp": 27.5,
     "rh": 28, "hpa": 715},
]  # fmt: skip


def jsonl(*records: dict) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def refused(text: str, source: str = "kit.json") -> str:
    with pytest.raises(TelegramError) as caught:
        parse_telegrams(text, source)
    return str(caught.value)


# -- both forms ---------------------------------------------------------------------------


def test_object_form_of_the_testdata_gives_one_ident_and_three_data_records():
    telegrams = parse_telegrams(TESTDATA.read_text(), str(TESTDATA))
    assert [type(t) for t in telegrams] == [Ident, Data, Data, Data]
    ident = telegrams[0]
    assert (ident.project, ident.serial, ident.label) == ("BdP", "test_sense", "alphaTest")
    assert ident.geolocation == "51.420635,6.1356117,22.9"
    assert ident.fields == tuple(IDENT["fields"])
    assert ident.units == tuple(IDENT["units"])
    assert ident.types == tuple(IDENT["types"])
    assert ident.database == "BdP_test_sense"
    first = telegrams[1]
    assert first.time == 1494777772
    assert dict(first.values) == {k: v for k, v in DATA[0].items() if k != "time"}
    assert list(dict(first.values)) == ["pm_25", "pm_10", "dtemp", "drh", "temp", "rh", "hpa"]
    assert first.geolocation == ""
    assert telegrams[2].geolocation == "51.433,6.22,13"
    assert "geolocation" not in dict(telegrams[2].values)


def test_json_lines_form_gives_the_same_telegrams_as_the_object_form():
    whole = parse_telegrams(json.dumps({"ident": IDENT, "data": DATA}), "a.json")
    lines = parse_telegrams(jsonl({"ident": IDENT}, *({"data": d} for d in DATA)), "a.jsonl")
    assert lines == whole


def test_an_ident_without_time_takes_its_first_data_records_time():
    telegrams = parse_telegrams(json.dumps({"ident": IDENT, "data": DATA}), "a.json")
    assert telegrams[0].time == DATA[0]["time"]
    # an ident with no data after it has no time (it is stamped when it is sent)
    alone = parse_telegrams(json.dumps({"ident": IDENT}), "a.json")
    assert alone[0].time is None
    # an explicit time wins
    own = parse_telegrams(json.dumps({"ident": {**IDENT, "time": 1400000000}, "data": DATA}), "x")
    assert own[0].time == 1400000000
    assert "time" not in dict(own[0].extra)


def test_json_lines_data_belongs_to_the_last_ident_before_it():
    other = {**IDENT, "serial": "other", "label": "beta"}
    text = jsonl(
        {"ident": IDENT},
        {"data": DATA[0]},
        {"ident": other},
        {"data": DATA[1]},
        {"data": [DATA[2]]},
    )
    telegrams = parse_telegrams(text, "k.jsonl")
    kinds = [(type(t).__name__, getattr(t, "serial", None)) for t in telegrams]
    assert kinds == [("Ident", "test_sense"), ("Data", None), ("Ident", "other"),
                     ("Data", None), ("Data", None)]  # fmt: skip
    assert telegrams[2].time == DATA[1]["time"]


def test_json_lines_accepts_blank_lines_a_combined_line_and_a_byte_order_mark():
    text = (
        "\ufeff"
        + json.dumps({"ident": IDENT, "data": DATA[:1]})
        + "\n\n"
        + jsonl({"data": DATA[1]})
    )
    telegrams = parse_telegrams(text, "k.jsonl")
    assert [type(t) for t in telegrams] == [Ident, Data, Data]


def test_nan_and_infinity_are_left_out_of_the_record_never_sent():
    text = '{"ident": {"project": "p", "serial": "s"}, "data": [{"time": 5, "a": NaN, ' \
           '"b": Infinity, "c": -Infinity, "d": 1.5}]}'  # fmt: skip
    data = parse_telegrams(text, "x")[1]
    assert dict(data.values) == {"d": 1.5}


def test_to_json_line_round_trips_through_the_parser():
    telegrams = parse_telegrams(TESTDATA.read_text(), "t")
    text = "".join(to_json_line(t) + "\n" for t in telegrams)
    assert parse_telegrams(text, "again") == telegrams
    assert json.loads(to_json_line(telegrams[2]))["data"]["geolocation"] == "51.433,6.22,13"


def test_ident_keeps_version_and_extra_keys_as_strings():
    ident = ident_from_json({**IDENT, "version": 2.1, "firmware": 7, "note": "kit, #3"})
    assert ident.version == "2.1"
    assert dict(ident.extra) == {"firmware": "7", "note": "kit, #3"}


# -- frozen dataclasses -------------------------------------------------------------------


def test_telegrams_are_frozen_and_hashable():
    ident = ident_from_json(IDENT)
    data = data_from_json(DATA[0])
    for telegram, attribute in ((ident, "label"), (data, "time")):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(telegram, attribute, "changed")
        assert hash(telegram) == hash(dataclasses.replace(telegram))
    assert isinstance(ident.fields, tuple) and isinstance(data.values, tuple)
    assert dataclasses.is_dataclass(ident) and ident.__dataclass_params__.frozen
    assert data.__dataclass_params__.frozen


# -- refusals: file, line and reason --------------------------------------------------------


def test_bad_json_in_json_lines_names_file_and_line():
    text = jsonl({"ident": IDENT}, {"data": DATA[0]}) + '{"data": {"time": 1,}}\n'
    message = refused(text, "kits/a.jsonl")
    assert message.startswith("kits/a.jsonl: line 3 ")
    assert "not valid JSON" in message


def test_bad_json_in_the_object_form_names_file_and_line():
    text = TESTDATA.read_text().replace('"pm_10": 63,', '"pm_10": 63,,')
    message = refused(text, "bdp.json")
    assert message.startswith("bdp.json: line 13 ")
    assert "not valid JSON" in message


def test_data_record_missing_time_names_file_line_and_reason_in_both_forms():
    broken = [dict(d) for d in DATA]
    del broken[1]["time"]
    message = refused(jsonl({"ident": IDENT}, *({"data": d} for d in broken)), "a.jsonl")
    assert message.startswith("a.jsonl: line 3: data.time: is required")
    assert "integer UNIX seconds" in message
    pretty = json.dumps({"ident": IDENT, "data": broken}, indent=2)
    records = [i + 1 for i, text in enumerate(pretty.splitlines()) if text == "    {"]
    assert len(records) == 3  # the data records start these lines
    message = refused(pretty, "b.json")
    second = records[1]
    assert message.startswith(f"b.json: line {second}: data[1].time: is required")


def test_data_before_any_ident_is_refused_with_its_line():
    message = refused(jsonl({"data": DATA[0]}, {"ident": IDENT}), "early.jsonl")
    assert message.startswith("early.jsonl: line 1: data: comes before any ident")
    message = refused(json.dumps({"data": DATA}), "early.json")
    assert message.startswith("early.json: line 1: data: comes before any ident")


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        ({"time": 1.5, "a": 1}, "data.time: is required as integer UNIX seconds"),
        ({"time": "1494777772", "a": 1}, "data.time: is required as integer UNIX seconds"),
        ({"time": True, "a": 1}, "data.time: is required as integer UNIX seconds"),
        ({"time": -1, "a": 1}, "data.time: is required as integer UNIX seconds"),
        ({"time": MAX_TIME + 1, "a": 1}, "data.time: is required as integer UNIX seconds"),
        ({"time": 1, "a": [1, 2]}, "data.a: must be a number, string or boolean"),
        ({"time": 1, "a": {"b": 1}}, "data.a: must be a number, string or boolean"),
        ({"time": 1, "a": 10**400}, "data.a: " + str(10**400) + " is too large for a float"),
        ({"time": 1, "a": "two\nlines"}, "data.a: 'two\\nlines' contains a line break"),
        ({"time": 1, "label": 1}, "data.label: is a tag of the data series"),
        ({"time": 1, "new": 1}, "data.new: is a tag of the data series"),
        ({"time": 1, "": 1}, "data: field name '' is empty"),
        ({"time": 1, "a\\ b": 1}, "field name 'a\\\\ b' has a backslash before ' '"),
        ({"time": 1, "a\\": 1}, "field name 'a\\\\' ends with a backslash"),
        ({"time": 1, "a\x00": 1}, "contains a control character"),
        ({"time": 1, "_x": 1}, "reserves field names starting with '_'"),
        ({"time": 1, "a": 1, "geolocation": "1,2\\"}, "geolocation: '1,2\\\\' ends with a"),
        ({"time": 1, "a": 1, "geolocation": 5}, "geolocation: must be a string"),
    ],
)
def test_bad_data_records_are_refused_with_line_and_reason(record, reason):
    message = refused(jsonl({"ident": IDENT}, {"data": record}), "r.jsonl")
    assert message.startswith("r.jsonl: line 2: data")
    assert reason in message


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"serial": None}, "ident.serial: is required"),
        ({"project": ""}, "ident.project: is required"),
        ({"project": "a/b"}, "names the database"),
        ({"serial": 'a"b'}, "names the database"),
        ({"serial": 17}, "ident.serial: must be a string"),
        ({"label": "alpha\\"}, "ident.label: 'alpha\\\\' ends with a backslash"),
        ({"label": "al\\,pha"}, "has a backslash before ','"),
        ({"geolocation": "1\\=2"}, "has a backslash before '='"),
        ({"label": "line\nbreak"}, "contains a line break"),
        ({"description": "line\rbreak"}, "ident.description: 'line\\rbreak' contains a line"),
        ({"units": ["s", "C"]}, "parallel lists and must be equally long"),
        ({"types": "Dylos"}, "ident.types: must be a list of strings"),
        ({"units": ["s", "pcs,qf", "pcs/qf", "C", "%", "C", "%", "hPa"]}, "has a comma"),
        ({"firmware": {"v": 1}}, "extra ident keys must be strings, numbers, booleans or lists"),
        ({"firmware": [[1]]}, "ident.firmware[0]: a list in an ident may hold strings, numbers"),
        ({"firmware": [1, None]}, "ident.firmware[1]: a list in an ident may hold strings"),
        ({"ips": ["a,b"]}, "ident.ips[0]: 'a,b' has a comma"),
        ({"firmware": float("nan")}, "ident.firmware: nan is not a number an ident can hold"),
        ({"a\\ b": "x"}, "field name 'a\\\\ b' has a backslash before ' '"),
        ({"time": 1.5}, "ident.time: is required as integer UNIX seconds"),
    ],
)
def test_bad_idents_are_refused_with_line_and_reason(change, reason):
    ident = {k: v for k, v in {**IDENT, **change}.items() if v is not None}
    message = refused(jsonl({"ident": ident}, {"data": DATA[0]}), "i.jsonl")
    assert message.startswith("i.jsonl: line 1: ident")
    assert reason in message


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "is empty"),
        ("   \n\n", "is empty"),
        ("[1, 2]", 'expected an object with "ident" and/or "data"'),
        ('{"ident": {"project": "p", "serial": "s"}, "extra": 1}', "unknown keys ['extra']"),
        ('{"identity": {}}', 'expected an object with "ident" and/or "data"'),
        ('{"ident": "BdP"}', "ident: must be a JSON object, got str"),
        ('{"ident": {"project": "p", "serial": "s"}, "data": [5]}', "data[0]: must be a JSON"),
    ],
)
def test_malformed_files_are_refused_with_the_file_name(text, reason):
    message = refused(text, "f.json")
    assert message.startswith("f.json: ")
    assert reason in message


def test_one_bad_record_refuses_the_whole_file():
    """Nothing is returned when any record is bad, however many good ones come first."""
    good = [{"data": {**DATA[0], "time": DATA[0]["time"] + i}} for i in range(50)]
    text = jsonl({"ident": IDENT}, *good, {"data": {"pm_25": 1}})
    with pytest.raises(TelegramError, match=r"^many\.jsonl: line 52: data\.time"):
        parse_telegrams(text, "many.jsonl")


def test_ident_and_data_parse_from_decoded_json_directly():
    assert ident_from_json({"project": "p", "serial": "s"}).database == "p_s"
    data = data_from_json({"time": 3.0, "ok": True, "txt": "a b", "n": None})
    assert data.time == 3 and isinstance(data.time, int)
    assert dict(data.values) == {"ok": True, "txt": "a b"}


def test_json_lines_split_only_at_newlines_not_at_unicode_line_separators():
    """JSON writes U+2028, U+0085 and friends unescaped; they are text, not line ends."""
    text = "".join(
        to_json_line(t) + "\n"
        for t in (
            Ident(project="p", serial="s", description="a\u2028b\u0085c\x1cd\x0be"),
            Data(time=1, values=(("note", "x\u2029y\x0cz"),)),
        )
    )
    ident, data = parse_telegrams(text, "sep.jsonl")
    assert ident.description == "a\u2028b\u0085c\x1cd\x0be"
    assert dict(data.values) == {"note": "x\u2029y\x0cz"}
