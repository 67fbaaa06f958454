"""What InfluxDB 1.x cannot store is refused when a file or agent.ini is read: the limits in
agent/lineprotocol.py, each checked against a real influxd, and one rule for database names."""

from __future__ import annotations

import json
import unicodedata

import pytest
from conftest import run_sensorkit, write_config

from agent.config import ConfigError, load
from agent.influx import InfluxClient
from agent.lineprotocol import (
    MAX_KEY_BYTES,
    MAX_NAME_BYTES,
    MAX_STRING_BYTES,
    SERVER_KEY_BYTES,
    check_database_name,
    check_point_key,
    check_tag_value,
    check_text,
    point_key_bytes,
    quote_string,
)
from agent.sinks import InfluxV1Sink
from agent.telegram import TelegramError, parse_telegrams


def quoted(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def server_creates(server, name: str) -> bool:
    """Whether influxd's CREATE DATABASE takes ``name`` (dropping it again)."""
    try:
        server.query(f"CREATE DATABASE {quoted(name)}")
    except (RuntimeError, OSError):
        return False
    server.query(f"DROP DATABASE {quoted(name)}")
    return True


# One character of each kind, in names of their own and inside others.
_CHARACTERS = [chr(c) for c in range(0x20)] + [chr(c) for c in range(0x20, 0x7F)] + [
    "\x7f", "\x85", "\x9f", "\u00a0", "\u00ad", "\u00e9", "\u0301", "\u1680", "\u2000",
    "\u200b", "\u200d", "\u2028", "\u2029", "\u202e", "\u3000", "\ue000", "\ufeff", "\u0378",
    "\U0001f600", "\u4e2d",
]  # fmt: skip
_NAMES = (
    [f"a{c}b" for c in _CHARACTERS]
    + _CHARACTERS
    + ["", ".", "..", "...", ".a", "a.", "_", "x" * MAX_NAME_BYTES, "x" * (MAX_NAME_BYTES + 1)]
    + ["ü" * (MAX_NAME_BYTES // 2), "ü" * (MAX_NAME_BYTES // 2 + 1), "😀" * 63, "😀" * 64]
)
_OUR_OWN = (" ", '"')  # influxd takes these; sensorkit keeps them out


def test_database_names_are_refused_exactly_where_create_database_refuses_them(influx):
    disagree = []
    for name in _NAMES:
        ours = check_database_name(name) is None
        theirs = server_creates(influx, name)
        own_rule = any(c in name for c in _OUR_OWN)
        if ours != (theirs and not own_rule):
            disagree.append((name, ours, theirs))
    assert disagree == []
    # and the rule is not vacuous: the server takes some and refuses others
    assert server_creates(influx, "BdP_test_sense") and not server_creates(influx, "a\tb")
    assert server_creates(influx, "a b") and "sensorkit keeps" in check_database_name("a b")


_BAD_NAMES = [
    ("test sense", "holds ' '"),
    ('te"st', "holds '\"'"),
    ("a/b", "holds '/'"),
    ("a\\b", "holds '\\\\'"),
    ("tab\there", "unprintable character U+0009"),
    ("nul\x00", "unprintable character U+0000"),
    ("nb\u00a0sp", "unprintable character U+00A0"),
    ("..", "is '.' or '..'"),
    ("x" * 300, "is 300 bytes long"),
]


@pytest.mark.parametrize(("name", "problem"), _BAD_NAMES)
@pytest.mark.parametrize("key", ["project", "serial"])
def test_one_rule_for_project_and_serial_in_telegrams(key, name, problem):
    ident = {"project": "BdP", "serial": "kit", key: name}
    with pytest.raises(TelegramError) as caught:
        parse_telegrams(json.dumps({"ident": ident}), "k.json")
    message = str(caught.value)
    assert message.startswith(f"k.json: line 1: ident.{key}: ")
    assert "names the database" in message and problem in message


@pytest.mark.parametrize(("name", "problem"), [p for p in _BAD_NAMES if p[0].strip() == p[0]])
@pytest.mark.parametrize("key", ["project", "serial"])
def test_the_same_rule_for_project_and_serial_in_agent_ini(tmp_path, key, name, problem):
    values = {"project": "BdP", "serial": "kit", key: name}
    text = f"[kit]\nproject = {values['project']}\nserial = {values['serial']}\n"
    path = write_config(tmp_path / "agent.ini", text)
    with pytest.raises(ConfigError) as caught:
        load(path)
    message = str(caught.value)
    assert message.startswith(f"{path} [kit] {key}: ")
    assert problem in message and "; allowed: printable text without spaces" in message


def test_project_and_serial_together_must_fit_a_database_name(tmp_path):
    project, serial = "p" * 200, "s" * 60  # each fine, the database too long
    assert check_database_name(project) is None and check_database_name(serial) is None
    with pytest.raises(TelegramError, match=r"ident\.serial: the database .* is 261 bytes"):
        parse_telegrams(json.dumps({"ident": {"project": project, "serial": serial}}), "k")
    path = write_config(tmp_path / "agent.ini", f"[kit]\nproject = {project}\nserial = {serial}\n")
    with pytest.raises(ConfigError, match=r"\[kit\] serial: the database .* is 261 bytes"):
        load(path)


def test_a_project_with_a_tab_never_reaches_the_server(influx, tmp_path):
    """Issue 12: it passed validation, then CREATE DATABASE failed at the head of the queue."""
    source = tmp_path / "tab.jsonl"
    source.write_text(
        json.dumps({"ident": {"project": "Bd\tP", "serial": "kit"}})
        + "\n"
        + json.dumps({"data": {"time": 1, "a": 1}})
        + "\n"
    )
    ini = write_config(
        tmp_path / "agent.ini",
        f"[kit]\nproject = x\nstate_dir = {tmp_path / 'state'}\n[influx]\nurl = {influx.url}\n",
    )
    done = run_sensorkit("publish", "-c", str(ini), str(source), "--wait", "5")
    assert done.returncode == 2
    [line] = done.stderr.splitlines()
    assert f"{source}: line 1: ident.project: 'Bd\\tP' names the database" in line
    assert not server_creates(influx, "Bd\tP_kit")  # what would have failed forever


# -- the series key ----------------------------------------------------------------------------


def test_influxd_refuses_a_point_whose_series_key_and_field_name_pass_65535_bytes(influx):
    client = InfluxClient(influx.url, compress=False)
    client.create_database("keys")
    sink = InfluxV1Sink(client)
    tags = {"label": "x" * 100}
    room = SERVER_KEY_BYTES - point_key_bytes("data", tags, "")
    full = sink.write("keys", f"data,label={'x' * 100} {'f' * room}=1 1".encode())
    assert full.status == 204  # exactly full
    over = sink.write("keys", f"data,label={'x' * 100} {'f' * (room + 1)}=1 1".encode())
    assert over.status == 400
    assert "max key length exceeded" in over.message
    # what sensorkit lets through is well inside: a point at its own limit is stored
    label = "y" * (MAX_KEY_BYTES - point_key_bytes("data", {"label": "", "new": "1"}, "a") - 7)
    tags = {"label": label, "new": "1"}
    assert point_key_bytes("data", tags, "a") <= MAX_KEY_BYTES < SERVER_KEY_BYTES
    assert check_point_key("data", tags, "a") is None
    assert sink.write("keys", f"data,label={label},new=1 a=1 2".encode()).status == 204
    assert influx.rows("SELECT count(a) FROM data", "keys")[0]["count"] == 1
    assert check_point_key("data", {"label": label + "yy", "new": "1"}, "a") is not None
    client.close()


def test_the_series_key_counts_escaped_utf8_bytes():
    plain = point_key_bytes("data", {"label": "ab"}, "f")
    assert plain == len("data,label=ab") + len("#!~#") + 1
    assert point_key_bytes("data", {"label": "a b"}, "f") == plain + 2  # "a\ b"
    assert point_key_bytes("data", {"label": "äb"}, "f") == plain + 1  # two bytes for ä
    assert point_key_bytes("data", {"label": "", "geolocation": ""}, "f") == len("data#!~#f")


def test_a_70000_character_label_is_refused_in_a_file_and_in_agent_ini(influx, tmp_path):
    label = "L" * 70_000
    source = tmp_path / "long.json"
    source.write_text(json.dumps({"ident": {"project": "long", "serial": "kit", "label": label},
                                  "data": [{"time": 1, "a": 1}]}))  # fmt: skip
    ini = write_config(
        tmp_path / "agent.ini",
        f"[kit]\nproject = x\nstate_dir = {tmp_path / 'state'}\n[influx]\nurl = {influx.url}\n",
    )
    done = run_sensorkit("publish", "-c", str(ini), str(source), "--wait", "5")
    assert done.returncode == 2
    [line] = done.stderr.splitlines()
    assert f"{source}: line 1: ident.label: " in line and "(70,000 characters)" in line
    assert len(line) < 400  # the label is not echoed whole
    assert "long_kit" not in {r["name"] for r in influx.rows("SHOW DATABASES", "")}
    # a label short enough for strings but not for a series key
    label = "L" * 40_000
    with pytest.raises(TelegramError, match=r"ident\.label: .*series key and field name"):
        parse_telegrams(json.dumps({"ident": {"project": "p", "serial": "s", "label": label}}), "k")
    path = write_config(tmp_path / "kit.ini", f"[kit]\nproject = p\nlabel = {label}\n")
    with pytest.raises(ConfigError) as caught:
        load(path)
    message = str(caught.value)
    assert message.startswith(f"{path} [kit] label: 40,000 characters: it makes the data")
    assert len(message) < 400


def test_a_geolocation_override_too_long_for_a_series_key_is_refused_at_its_record():
    records = [{"time": 1, "a": 1}, {"time": 2, "a": 1, "geolocation": "g" * 40_000}]
    text = json.dumps({"ident": {"project": "p", "serial": "s"}, "data": records}, indent=1)
    with pytest.raises(TelegramError) as caught:
        parse_telegrams(text, "geo.json")
    assert str(caught.value).startswith("geo.json: line 11: data[1]: this record makes the data")


def test_a_long_field_name_counts_in_the_series_key():
    key = "k" * (MAX_KEY_BYTES - 40)
    ok = {"ident": {"project": "p", "serial": "s"}, "data": [{"time": 1, key: 1}]}
    assert parse_telegrams(json.dumps(ok), "k")[1].values == ((key, 1),)
    ok["ident"]["label"] = "l" * 100
    with pytest.raises(TelegramError, match=r"data\[0\]: this record makes the data series"):
        parse_telegrams(json.dumps(ok), "k")


# -- strings -------------------------------------------------------------------------------------


def test_influxd_stores_a_string_field_of_the_documented_64_kib_whole(influx):
    client = InfluxClient(influx.url, compress=False)
    client.create_database("strings")
    text = "é" * (MAX_STRING_BYTES // 2)  # MAX_STRING_BYTES bytes of UTF-8
    assert check_text(text) is None and check_text(text + "e") is not None
    reply = InfluxV1Sink(client).write("strings", f"m s={quote_string(text)} 1".encode())
    assert reply.status == 204
    assert influx.rows("SELECT s FROM m", "strings")[0]["s"] == text
    client.close()


def test_a_string_over_64_kib_is_refused_in_data_and_ident():
    long = "s" * (MAX_STRING_BYTES + 1)
    kit = {"project": "p", "serial": "s"}
    for record in ({"ident": {**kit, "description": long}},
                   {"ident": kit, "data": [{"time": 1, "t": long}]}):  # fmt: skip
        with pytest.raises(TelegramError, match=r"is 65,537 bytes long; InfluxDB 1\.x keeps"):
            parse_telegrams(json.dumps(record), "k")


def test_a_lone_surrogate_is_refused_not_a_traceback_at_send_time():
    text = '{"ident": {"project": "p", "serial": "s"}, "data": [{"time": 1, "t": "\\udc80"}]}'
    with pytest.raises(TelegramError, match=r"line 1: data\[0\]\.t: .* lone UTF-16 surrogate"):
        parse_telegrams(text, "k")


# -- control characters in tag values -----------------------------------------------------------

_CONTROLS = [chr(c) for c in (*range(0x20), *range(0x7F, 0xA0)) if chr(c) not in "\t\n\r"]


def test_every_control_character_but_tab_is_refused_in_a_tag_value():
    for char in _CONTROLS:
        assert unicodedata.category(char) == "Cc"
        assert "contains a control character" in check_tag_value(f"a{char}b"), repr(char)
    assert check_tag_value("a\tb") is None
    assert check_tag_value("a\u200bb\u2028c") is None  # not control characters


@pytest.mark.parametrize("char", ["\x00", "\x1b", "\x7f", "\x85"])
def test_control_characters_in_labels_and_geolocations_are_refused_in_files(char):
    for record in (
        {"ident": {"project": "p", "serial": "s", "label": f"kit{char}1"}},
        {"ident": {"project": "p", "serial": "s", "geolocation": f"1,2{char}"}},
        {"ident": {"project": "p", "serial": "s"}, "data": [{"time": 1, "geolocation": f"{char}"}]},
    ):
        with pytest.raises(TelegramError, match=r"contains a control character \(U\+00"):
            parse_telegrams(json.dumps(record), "k")


@pytest.mark.parametrize("char", ["\x01", "\x1b", "\x7f", "\x85"])
def test_control_characters_in_the_kit_label_are_refused_in_agent_ini(tmp_path, char):
    path = tmp_path / "agent.ini"
    path.write_text(f"[kit]\nproject = p\nlabel = kit{char}1\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load(path)
    message = str(caught.value)
    assert message.startswith(f"{path} [kit] label: ") and "control character" in message
    assert "allowed: printable text on one line" in message
