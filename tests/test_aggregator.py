"""Calibration, plausibility, robust window averages and the ident, pinned."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import pytest

from agent.aggregator import Aggregator, SensorFields, build_ident, calibrate, robust_mean
from agent.config import KitSettings
from drivers.reading import Field, Reading

DYLOS = SensorFields(
    "dylos",
    (
        Field("pm_25", "pcs/qf", "Dylos DC1100", 0, 99999),
        Field("pm_10", "pcs/qf", "Dylos DC1100", 0, 99999),
    ),
    {},
)
DHT = SensorFields(
    "dht22",
    (Field("dtemp", "C", "DHT22", -40, 80), Field("drh", "%", "DHT22", 0, 100)),
    {"dtemp": (-0.5, 1.0), "drh": (1.0, 0.9, 0.001)},
)
KIT = KitSettings("BdP", "k1", "garden", "51.4,6.1,22", "", 60, Path("/tmp"))


def test_calibration_polynomial_is_a0_plus_a1_x_plus_a2_x_squared():
    assert calibrate(10.0, (1.0, 0.9, 0.001)) == pytest.approx(1.0 + 9.0 + 0.1)
    assert calibrate(10.0, ()) == 10.0
    assert calibrate(10.0, (2.0,)) == 2.0


def test_calibration_is_applied_to_each_reading_before_averaging():
    agg = Aggregator([DHT])
    agg.add([Reading("dtemp", 20.0, 1), Reading("dtemp", 22.0, 2), Reading("drh", 50.0, 2)])
    data = agg.close_window(60)
    values = dict(data.values)
    assert values["dtemp"] == pytest.approx(20.5)
    assert values["drh"] == pytest.approx(1.0 + 45.0 + 2.5)


def test_robust_mean_leaves_out_a_spike_but_not_ordinary_spread():
    ordinary = [20.1, 20.3, 19.9, 20.2, 20.0, 20.4]
    assert robust_mean(ordinary) == pytest.approx(statistics.fmean(ordinary))
    spiked = ordinary + [85.0]
    assert robust_mean(spiked) == pytest.approx(statistics.fmean(ordinary))


def test_robust_mean_is_the_plain_mean_below_five_readings():
    values = [1.0, 1.0, 1.0, 100.0]
    assert robust_mean(values) == statistics.fmean(values)


def test_robust_mean_with_zero_mad_still_rejects_a_lone_outlier():
    values = [5.0] * 8 + [500.0]
    assert robust_mean(values) == 5.0
    assert robust_mean([5.0] * 6) == 5.0


def test_field_without_readings_is_absent_not_zero():
    agg = Aggregator([DYLOS, DHT])
    agg.add([Reading("pm_25", 300, 1), Reading("pm_10", 40, 1)])
    data = agg.close_window(60)
    assert [name for name, _ in data.values] == ["pm_25", "pm_10"]
    assert agg.close_window(120) is None


def test_implausible_reading_is_dropped_and_counted():
    agg = Aggregator([DHT])
    agg.add([Reading("drh", 130.0, 1), Reading("drh", 60.0, 1), Reading("dtemp", float("nan"), 1)])
    assert agg.implausible == {"drh": 1, "dtemp": 1}
    assert dict(agg.close_window(60).values) == {"drh": pytest.approx(1.0 + 54.0 + 3.6)}


def test_window_telegram_is_stamped_with_the_window_end_as_integer_seconds():
    agg = Aggregator([DYLOS])
    agg.add([Reading("pm_25", 1, 100.2)])
    assert agg.close_window(120).time == 120


def test_values_follow_config_order_whatever_order_sensors_come_up_in():
    agg = Aggregator(order=["dylos", "dht22"])
    agg.register(DHT)
    agg.register(DYLOS)
    agg.add(
        [
            Reading("drh", 50, 1),
            Reading("pm_10", 4, 1),
            Reading("dtemp", 20, 1),
            Reading("pm_25", 9, 1),
        ]
    )
    assert [n for n, _ in agg.close_window(60).values] == ["pm_25", "pm_10", "dtemp", "drh"]
    ident = build_ident(KIT, agg.sensors)
    assert ident.fields == ("time", "pm_25", "pm_10", "dtemp", "drh")
    assert ident.units == ("s", "pcs/qf", "pcs/qf", "C", "%")
    assert ident.types == ("time", "Dylos DC1100", "Dylos DC1100", "DHT22", "DHT22")
    assert (ident.project, ident.serial, ident.label) == ("BdP", "k1", "garden")


def test_a_calibration_that_yields_inf_drops_the_reading_counts_it_and_says_so_once(caplog):
    huge = SensorFields("dylos", DYLOS.fields, {"pm_25": (1e308, 1e308)}, "kit.ini [dylos]")
    agg = Aggregator([huge])
    for t in range(6):  # robust_mean's outlier path (5+ readings) was where it raised
        agg.add([Reading("pm_25", 515.0, t), Reading("pm_10", 21.0, t)])
    assert agg.not_finite == {"pm_25": 6}
    data = agg.close_window(60)
    assert dict(data.values) == {"pm_10": 21.0}  # the other field still goes out
    [warning] = [r.getMessage() for r in caplog.records if r.name == "sensorkit.aggregator"]
    assert "kit.ini [dylos] calibration.pm_25 = 1e+308 1e+308" in warning and "inf" in warning
    assert agg.dropped(["pm_25", "pm_10"]) == (0, 6)


def test_a_calibration_that_yields_minus_inf_is_dropped_too():
    agg = Aggregator([SensorFields("dht22", DHT.fields, {"drh": (0.0, -1e308, -1e308)})])
    agg.add([Reading("drh", 50.0, 1), Reading("drh", 0.0, 2), Reading("dtemp", 20.0, 2)])
    assert agg.not_finite == {"drh": 1}  # 50 gives -inf; 0 gives a0 = 0
    values = dict(agg.close_window(60).values)
    assert values == {"dtemp": 20.0, "drh": 0.0} and all(map(math.isfinite, values.values()))


def test_a_window_mean_that_overflows_is_never_sent(caplog):
    agg = Aggregator([SensorFields("dylos", DYLOS.fields, {"pm_25": (0.0, 1.7e303)})])
    for t in range(6):
        agg.add([Reading("pm_25", 99999.0, t), Reading("pm_10", 21.0, t)])  # 1.7e308 each
    assert agg.not_finite == {}  # each value is finite; their sum is not
    data = agg.close_window(60)
    assert dict(data.values) == {"pm_10": 21.0}
    assert agg.unsent_means == {"pm_25": 1}
    agg.add([Reading("pm_25", 99999.0, 61), Reading("pm_25", 99999.0, 62)])
    assert agg.close_window(120) is None and agg.unsent_means == {"pm_25": 2}
    said = [r for r in caplog.records if "not a finite number" in r.getMessage()]
    assert len(said) == 1
