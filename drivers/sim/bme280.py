"""A simulated I2C bus carrying a simulated BME280, so the real Adafruit driver code runs.

The chip is simulated at the register level (datasheet BST-BME280-DS002, section 5): chip id,
soft reset, ctrl/status/config registers, burst reads with auto-increment, and forced-mode
conversions whose raw ADC values are found by inverting the datasheet's integer compensation
for the chip's calibration, so that compensating them gives the weather model's values back.
"""

from __future__ import annotations

import errno
import os
import random
import struct
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from drivers.sim.weather import Weather

CHIP_ID = 0xD0
RESET = 0xE0
CTRL_HUM = 0xF2
STATUS = 0xF3
CTRL_MEAS = 0xF4
CONFIG = 0xF5
DATA = 0xF7  # press_msb..hum_lsb, 0xF7..0xFE
RESET_WORD = 0xB6
STATUS_MEASURING = 0x08
# Data register contents after power-on or soft reset, and for a skipped measurement.
DATA_RESET = bytes([0x80, 0x00, 0x00, 0x80, 0x00, 0x00, 0x80, 0x00])

SIM_CALIBRATION: dict[int, bytes] = {
    0x88: bytes.fromhex("C0 6C 90 67 32 00 00 91 8E D6 D0 0B 90 1A C4 FF F9 FF 0C 30 90 CF 88 13"),
    0xA1: bytes.fromhex("4B"),
    0xE1: bytes.fromhex("6A 01 00 13 8C 02 1E"),
}
"""The simulated chip's trimming parameters, made up for the simulator (no chip or dump).

dig_T1..T3 = 27840, 26512, 50; dig_P1..P9 = 37120, -10610, 3024, 6800, -60, -7, 12300,
-12400, 5000; dig_H1..H6 = 75, 362, 0, 316, 40, 30: of the size real parts carry, so the
adafruit library computes ordinary weather from ordinary raw values. Real register dumps,
recorded by others, are test input read from ../shared/fixtures, never copied here.
"""


def remote_io_error() -> OSError:
    """The error Linux i2c-dev raises when no device acknowledges (errno 121, EREMOTEIO)."""
    return OSError(errno.EREMOTEIO, os.strerror(errno.EREMOTEIO))


class I2CTarget(Protocol):
    """A device on the simulated bus: one write or one read per I2C message."""

    def write(self, data: bytes) -> None: ...

    def read(self, length: int) -> bytes: ...


class SimulatedI2CBus:
    """Stands in for ``busio.I2C``: the calls ``adafruit_bus_device.I2CDevice`` makes."""

    def __init__(self) -> None:
        self.devices: dict[int, I2CTarget] = {}
        self._locked = False
        self._deinited = False

    def attach(self, address: int, device: I2CTarget) -> None:
        """Put ``device`` on the bus at 7-bit ``address``."""
        if not 0 <= address <= 0x7F:
            raise ValueError(f"I2C address {address:#x} is not a 7-bit address")
        self.devices[address] = device

    def try_lock(self) -> bool:
        """Take the bus lock; False when someone else holds it."""
        if self._locked:
            return False
        self._locked = True
        return True

    def unlock(self) -> None:
        """Release the bus lock."""
        self._locked = False

    def scan(self) -> list[int]:
        """Addresses of the attached devices, like ``i2cdetect``."""
        self._check()
        return sorted(self.devices)

    def writeto(
        self, address: int, buffer: bytes, *, start: int = 0, end: int | None = None
    ) -> None:
        """One write message; an empty one is the address probe."""
        self._device(address).write(bytes(buffer[start:end]))

    def readfrom_into(
        self, address: int, buffer: bytearray, *, start: int = 0, end: int | None = None
    ) -> None:
        """One read message filling ``buffer[start:end]``."""
        end = len(buffer) if end is None else end
        buffer[start:end] = self._device(address).read(end - start)

    def writeto_then_readfrom(
        self,
        address: int,
        buffer_out: bytes,
        buffer_in: bytearray,
        *,
        out_start: int = 0,
        out_end: int | None = None,
        in_start: int = 0,
        in_end: int | None = None,
    ) -> None:
        """A write then a read with a repeated start (how register reads are done)."""
        self.writeto(address, buffer_out, start=out_start, end=out_end)
        self.readfrom_into(address, buffer_in, start=in_start, end=in_end)

    def deinit(self) -> None:
        """Release the bus; later transfers fail."""
        self._deinited = True

    def __enter__(self) -> SimulatedI2CBus:
        return self

    def __exit__(self, *exc: object) -> None:
        self.deinit()

    def _check(self) -> None:
        if self._deinited:
            raise RuntimeError("simulated I2C bus used after deinit()")
        if not self._locked:
            raise RuntimeError("simulated I2C bus: Function requires lock (call try_lock() first)")

    def _device(self, address: int) -> I2CTarget:
        self._check()
        device = self.devices.get(address)
        if device is None:
            raise remote_io_error()
        return device


@dataclass(frozen=True)
class Calibration:
    """The trimming parameters dig_T1..dig_H6, decoded as in datasheet table 16."""

    t: tuple[int, ...]  # dig_T1..T3
    p: tuple[int, ...]  # dig_P1..P9
    h: tuple[int, ...]  # dig_H1..H6

    @classmethod
    def from_registers(cls, regs: bytes | bytearray) -> Calibration:
        """Decode from a 256-byte register map."""
        tp = struct.unpack("<HhhHhhhhhhhh", bytes(regs[0x88:0xA0]))
        h2, h3, e4, e5, e6, h6 = struct.unpack("<hBbBbb", bytes(regs[0xE1:0xE8]))
        h4 = (e4 << 4) | (e5 & 0x0F)  # E4 holds H4[11:4], E5[3:0] holds H4[3:0]
        h5 = (e6 << 4) | (e5 >> 4)  # E6 holds H5[11:4], E5[7:4] holds H5[3:0]
        return cls(tp[:3], tp[3:], (regs[0xA1], h2, h3, h4, h5, h6))

    def t_fine(self, adc_t: int) -> int:
        """Datasheet 4.2.3 temperature compensation: t_fine (T in C is t_fine / 5120)."""
        t1, t2, t3 = self.t
        var1 = (((adc_t >> 3) - (t1 << 1)) * t2) >> 11
        var2 = (((((adc_t >> 4) - t1) * ((adc_t >> 4) - t1)) >> 12) * t3) >> 14
        return var1 + var2

    def pressure(self, adc_p: int, t_fine: int) -> int:
        """Datasheet 4.2.3 64-bit pressure compensation: Pa in Q24.8."""
        p1, p2, p3, p4, p5, p6, p7, p8, p9 = self.p
        var1 = t_fine - 128000
        var2 = var1 * var1 * p6 + ((var1 * p5) << 17) + (p4 << 35)
        var1 = ((var1 * var1 * p3) >> 8) + ((var1 * p2) << 12)
        var1 = (((1 << 47) + var1) * p1) >> 33
        if var1 == 0:
            return 0
        p = 1048576 - adc_p
        p = _cdiv(((p << 31) - var2) * 3125, var1)
        var1 = (p9 * (p >> 13) * (p >> 13)) >> 25
        var2 = (p8 * p) >> 19
        return ((p + var1 + var2) >> 8) + (p7 << 4)

    def humidity(self, adc_h: int, t_fine: int) -> int:
        """Datasheet 4.2.3 humidity compensation: %RH in Q22.10."""
        h1, h2, h3, h4, h5, h6 = self.h
        x = t_fine - 76800
        v = (((adc_h << 14) - (h4 << 20) - (h5 * x)) + 16384) >> 15
        v *= ((((((x * h6) >> 10) * (((x * h3) >> 11) + 32768)) >> 10) + 2097152) * h2 + 8192) >> 14
        v -= ((((v >> 15) * (v >> 15)) >> 7) * h1) >> 4
        return min(max(v, 0), 419430400) >> 12


def _cdiv(a: int, b: int) -> int:
    """C integer division (truncates toward zero)."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b >= 0) else -q


def _invert(f: Callable[[int], float], target: float, bits: int) -> int:
    """The raw value in [0, 2**bits) whose compensated value ``f(raw)`` is nearest ``target``.

    ``f`` is monotonic (rising or falling) over the range, so a bisection finds it.
    """
    lo, hi = 0, (1 << bits) - 1
    rising = f(hi) >= f(lo)
    while lo < hi:  # first raw whose value has reached the target
        mid = (lo + hi) // 2
        if (f(mid) >= target) if rising else (f(mid) <= target):
            hi = mid
        else:
            lo = mid + 1
    if lo > 0 and abs(f(lo - 1) - target) <= abs(f(lo) - target):
        return lo - 1
    return lo


def _quantise(raw: int, osrs: int) -> int:
    """Keep the 16 + (osrs - 1) bits the chip resolves without IIR filter (datasheet 3.4.3)."""
    step = 1 << max(0, 20 - (15 + osrs))
    return min(round(raw / step) * step, (1 << 20) - step)


class SimulatedBME280Chip:
    """A BME280 register map whose forced conversions measure ``weather`` at ``clock()``.

    ``frozen_data`` keeps the data registers as loaded (a real dump); ``io_error_rate`` and
    ``fail_next`` make accesses raise ``OSError`` 121 like a flaky wire.
    """

    def __init__(
        self,
        weather: Weather | None = None,
        *,
        chip_id: int = 0x60,
        calibration: Mapping[int, bytes] = SIM_CALIBRATION,
        clock: Callable[[], float] = time.time,
        frozen_data: bool = False,
        io_error_rate: float = 0.0,
        rng: int | random.Random | None = None,
        conversion_reads: int = 1,
    ) -> None:
        self.weather = weather or Weather()
        self.clock = clock
        self.frozen_data = frozen_data
        self.io_error_rate = io_error_rate
        self.rng = rng if isinstance(rng, random.Random) else random.Random(rng)
        self.fail_next = 0  # the next this many accesses fail
        self.conversion_reads = conversion_reads  # status reads that still show "measuring"
        self.conversions = 0
        self.registers = bytearray(256)
        self.registers[CHIP_ID] = chip_id
        self.registers[DATA : DATA + 8] = DATA_RESET
        for start, block in calibration.items():  # a dump may override any of the above
            self.registers[start : start + len(block)] = block
        self._pointer = 0
        self._measuring = 0  # status reads left before the running conversion completes
        self._pending = DATA_RESET
        self._osrs_h = 0  # humidity oversampling latched at the last ctrl_meas write

    @classmethod
    def from_dump(cls, registers: Mapping[int, bytes], **kwargs: Any) -> SimulatedBME280Chip:
        """A chip holding a raw register dump (start address -> bytes), data registers frozen.

        The dump may include the chip id (0xD0) and the data registers (0xF7..0xFE).
        """
        return cls(calibration=registers, frozen_data=True, **kwargs)

    @property
    def calibration(self) -> Calibration:
        """The calibration the register map holds now."""
        return Calibration.from_registers(self.registers)

    # I2C messages -------------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        """A write message: a register pointer, or (register, value) pairs (datasheet 6.2.1)."""
        self._maybe_fail()
        for i in range(0, len(data), 2):
            self._pointer = data[i]
            if i + 1 < len(data):
                self._write_register(data[i], data[i + 1])

    def read(self, length: int) -> bytes:
        """A read message: a burst from the register pointer, auto-incrementing."""
        self._maybe_fail()
        regs = [(self._pointer + i) & 0xFF for i in range(length)]
        if STATUS in regs:
            self.registers[STATUS] = STATUS_MEASURING if self._measuring else 0
            if self._measuring:
                self._measuring -= 1
                if not self._measuring:
                    self._finish_conversion()
        elif self._mode() == 3 and any(DATA <= r <= DATA + 7 for r in regs):
            self._pending = self._measure()  # normal mode: the data are always fresh
            self._finish_conversion()
        self._pointer = (self._pointer + length) & 0xFF
        return bytes(self.registers[r] if r != RESET else 0 for r in regs)

    # Registers ----------------------------------------------------------------------------
    def _write_register(self, reg: int, value: int) -> None:
        if reg == RESET:
            if value == RESET_WORD:
                self._soft_reset()
        elif reg == CTRL_HUM:
            self.registers[CTRL_HUM] = value & 0x07
        elif reg == CONFIG:
            self.registers[CONFIG] = value & 0xFD
        elif reg == CTRL_MEAS:
            self.registers[CTRL_MEAS] = value
            self._osrs_h = self.registers[CTRL_HUM]  # ctrl_hum takes effect only now
            if value & 0x03 in (1, 2):
                self._start_forced_conversion()
        # other registers are read-only: the write is acknowledged and ignored

    def _soft_reset(self) -> None:
        for reg in (CTRL_HUM, STATUS, CTRL_MEAS, CONFIG):
            self.registers[reg] = 0
        if not self.frozen_data:
            self.registers[DATA : DATA + 8] = DATA_RESET
        self._measuring = 0
        self._osrs_h = 0

    def _mode(self) -> int:
        return self.registers[CTRL_MEAS] & 0x03

    def _start_forced_conversion(self) -> None:
        self._pending = self._measure()
        self._measuring = self.conversion_reads
        if not self._measuring:
            self._finish_conversion()

    def _measure(self) -> bytes:
        self.conversions += 1
        return self._convert(*self.weather.at(self.clock()))

    def _finish_conversion(self) -> None:
        if not self.frozen_data:
            self.registers[DATA : DATA + 8] = self._pending
        if self._mode() in (1, 2):
            self.registers[CTRL_MEAS] &= 0xFC  # forced mode falls back to sleep

    def _convert(self, temp: float, rh: float, hpa: float) -> bytes:
        """Data registers that compensate to ``temp`` C, ``rh`` % and ``hpa`` hPa."""
        cal = self.calibration
        osrs_t, osrs_p = self.registers[CTRL_MEAS] >> 5, (self.registers[CTRL_MEAS] >> 2) & 7
        osrs_h = self._osrs_h
        adc_t = _quantise(_invert(lambda r: cal.t_fine(r) / 5120.0, temp, 20), min(osrs_t, 5))
        t_fine = cal.t_fine(adc_t)
        adc_p = _invert(lambda r: cal.pressure(r, t_fine) / 25600.0, hpa, 20)
        adc_p = _quantise(adc_p, min(osrs_p, 5))
        adc_h = _invert(lambda r: cal.humidity(r, t_fine) / 1024.0, rh, 16)
        adc_t, adc_p = adc_t if osrs_t else 0x80000, adc_p if osrs_p else 0x80000
        adc_h = adc_h if osrs_h else 0x8000
        # press/temp: msb, lsb, xlsb[7:4] (20 bits); hum: msb, lsb (16 bits)
        return (
            (adc_p << 12).to_bytes(4, "big")[:3]
            + (adc_t << 12).to_bytes(4, "big")[:3]
            + (adc_h.to_bytes(2, "big"))
        )

    def _maybe_fail(self) -> None:
        if self.fail_next > 0:
            self.fail_next -= 1
            raise remote_io_error()
        if self.io_error_rate and self.rng.random() < self.io_error_rate:
            raise remote_io_error()
