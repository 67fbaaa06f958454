"""Simulated DHT22: 40-bit pulse trains, bad checksums included, for adafruit_dht to decode.

The driver keeps the real ``adafruit_dht.DHT22``; only its pulse capture is replaced, so the
library's own bit decoding, checksum and plausibility checks run on the bench.
"""

from __future__ import annotations

import array
import contextlib
import io
import random
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable

from drivers.sim.weather import Weather

# Blinka prints "GENERIC_X86 is not fully supported" on a PC; the bench never touches a pin.
with contextlib.redirect_stdout(io.StringIO()):
    import adafruit_dht

LOW_US = 50  # the low that starts every bit
ZERO_US = 27  # high of a 0 bit (26-28 us)
ONE_US = 70  # high of a 1 bit
FAULTS = ("ok", "checksum", "short", "absent")


def encode_frame(temperature: float, humidity: float) -> bytes:
    """The 5 bytes a DHT22 sends: humidity*10, sign+|temperature*10|, then the checksum."""
    rh = round(humidity * 10)
    t = round(temperature * 10)
    if not 0 <= rh <= 0xFFFF or abs(t) > 0x7FFF:
        raise ValueError(
            f"DHT22 frame cannot hold {temperature} C / {humidity} %: "
            "humidity*10 must fit 16 bits, |temperature*10| 15 bits"
        )
    t_word = (0x8000 | -t) if t < 0 else t
    data = bytes([rh >> 8, rh & 0xFF, t_word >> 8, t_word & 0xFF])
    return data + bytes([sum(data) & 0xFF])


def _bits(frame: bytes) -> list[int]:
    """The frame's bits, most significant first, as the sensor sends them."""
    return [(byte >> (7 - i)) & 1 for byte in frame for i in range(8)]


def _pulses(bits: list[int], rng: random.Random | None) -> array.array:
    """Alternating low/high durations (us): a ~50 us low then the bit's high, then a final low.

    This is the 81-pulse window adafruit_dht keeps; the sensor's 80 us low/high response
    preamble comes before it and falls outside that window.
    """

    def us(nominal: int, spread: int) -> int:
        return nominal if rng is None else nominal + rng.randint(-spread, spread)

    pulses = array.array("H")
    for bit in bits:
        pulses.append(us(LOW_US, 4))
        pulses.append(us(ONE_US, 4) if bit else us(ZERO_US, 3))
    pulses.append(us(LOW_US, 4))
    return pulses


def encode_pulses(
    temperature: float, humidity: float, *, rng: random.Random | None = None
) -> array.array:
    """The pulse train a DHT22 reading ``temperature`` C and ``humidity`` % produces.

    Pure without ``rng``; with it, each duration gets a few microseconds of jitter.
    """
    return _pulses(_bits(encode_frame(temperature, humidity)), rng)


class SimulatedDHT22(adafruit_dht.DHT22):
    """adafruit_dht's DHT22 whose pulse capture returns simulated trains of the weather now.

    ``seed`` makes faults and jitter repeatable (faults on their own stream, so they do not
    depend on the values); ``script`` lists the faults of the next captures ("ok", "checksum",
    "short", "absent") before the random rates apply; ``source`` overrides the weather.
    """

    def __init__(
        self,
        pin: int = 4,
        *,
        weather: Weather | None = None,
        checksum_error_rate: float = 0.0,
        short_train_rate: float = 0.0,
        absent: bool = False,
        seed: int | None = None,
        now: Callable[[], float] = time.time,
        source: Callable[[float], tuple[float, float]] | None = None,
        script: Iterable[str] = (),
    ) -> None:
        for label, rate in (
            ("checksum_error_rate", checksum_error_rate),
            ("short_train_rate", short_train_rate),
        ):
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"simulated DHT22: {label} = {rate} must be between 0 and 1")
        self._script = deque(script)
        if unknown := set(self._script) - set(FAULTS):
            raise ValueError(f"simulated DHT22: unknown faults {sorted(unknown)}; use {FAULTS}")
        super().__init__(pin, use_pulseio=False)  # type: ignore[arg-type]  # no Pin on a bench
        self.weather = weather or Weather()
        self.checksum_error_rate = checksum_error_rate
        self.short_train_rate = short_train_rate
        self.absent = absent
        self.now = now
        self.source = source
        self.rng = random.Random(seed)  # faults: the same sequence whatever the weather
        self.jitter = random.Random(None if seed is None else f"jitter-{seed}")
        self.captures = 0  # pulse trains handed to the library
        self.injected: Counter[str] = Counter()  # faults per kind, "ok" included
        self.closed = False

    def values(self) -> tuple[float, float]:
        """Temperature (C) and relative humidity (%) the sensor sees right now."""
        t = self.now()
        return self.source(t) if self.source else self.weather.at(t)[:2]

    def _next_fault(self) -> str:
        if self._script:
            return self._script.popleft()
        if self.absent:
            return "absent"
        if self.rng.random() < self.short_train_rate:
            return "short"
        if self.rng.random() < self.checksum_error_rate:
            return "checksum"
        return "ok"

    def pulse_train(self) -> array.array:
        """One capture: a full train, or one spoilt by the next fault."""
        self.captures += 1
        fault = self._next_fault()
        self.injected[fault] += 1
        if fault == "absent":  # a line nobody drives: at most a few glitches
            return array.array(
                "H", (self.rng.randint(1, 30) for _ in range(self.rng.randint(0, 3)))
            )
        bits = _bits(encode_frame(*self.values()))
        if fault == "checksum":
            bits[self.rng.randrange(32)] ^= 1  # any single data-bit flip breaks the sum
        pulses = _pulses(bits, self.jitter)
        if fault == "short":
            return pulses[: self.rng.randint(40, 79)]
        return pulses

    def _get_pulses_bitbang(self) -> array.array:
        return self.pulse_train()

    def _get_pulses_pulseio(self) -> array.array:
        return self.pulse_train()

    def exit(self) -> None:
        """Record the close, then let the library clean up as on hardware."""
        self.closed = True
        super().exit()
