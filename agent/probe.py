"""``sensorkit probe``: look for the kit's sensors where agent.ini says, and say what was found.

For each sensor it uses the configured backend, so on a bench it probes the simulated devices
and on a Pi the real ones, and it ends with the agent.ini lines that match what it found.
"""

from __future__ import annotations

from agent.config import SensorSettings, Settings
from agent.sensors import weather_model
from drivers.reading import SensorError


def _serial(settings: SensorSettings) -> tuple[list[str], list[str]]:
    from drivers.dylos import list_serial_ports

    lines, ini = ["serial ports (for [dylos] port):"], []
    ports = list_serial_ports()
    lines += [f"  {port}" for port in ports] or ["  none found; is the Dylos plugged in?"]
    if settings.backend == "simulated":
        lines.append("  simulated Dylos: a pseudo-terminal replaying the shipped capture")
        return lines, ["[dylos]", "enabled = yes", "backend = simulated"]
    usb = [p for p in ports if "by-id" in p] or ports
    if usb:
        ini = ["[dylos]", "enabled = yes", "backend = hardware", f"port = {usb[0]}"]
    return lines, ini


def _i2c(settings: SensorSettings, weather) -> tuple[list[str], list[str]]:
    from drivers.bme280 import hardware_bus, probe_bme280

    bus_number = int(settings.options["bus"])  # type: ignore[call-overload]
    lines = [f"I2C bus {bus_number} (for [bme280]):"]
    try:
        if settings.backend == "simulated":
            from drivers.sim.bme280 import SimulatedBME280Chip, SimulatedI2CBus

            bus = SimulatedI2CBus()
            bus.attach(settings.options.get("address") or 0x76, SimulatedBME280Chip(weather))
            lines[0] = f"simulated I2C bus {bus_number} (for [bme280]):"
        else:
            bus = hardware_bus(bus_number)
    except SensorError as err:
        return lines + [f"  {err}"], []
    try:
        found = probe_bme280(bus)
    finally:
        bus.deinit()
    ini: list[str] = []
    for address, chip_id, name in found:
        chip = f"chip id 0x{chip_id:02x}" if chip_id is not None else "no answer"
        lines.append(f"  0x{address:02x}: {name} ({chip})")
        if name == "BME280" and not ini:
            ini = [
                "[bme280]",
                "enabled = yes",
                f"backend = {settings.backend}",
                f"bus = {bus_number}",
                f"address = 0x{address:02x}",
            ]
    return lines, ini


def _dht(settings: SensorSettings, weather) -> tuple[list[str], list[str]]:
    from drivers.dht22 import probe_dht22

    options = dict(settings.options)
    options.pop("poll_interval")
    pin = int(options.pop("pin"))  # type: ignore[call-overload]
    result = probe_dht22(settings.backend, pin=pin, weather=weather, **options)
    ini = []
    if ":" in result and "does not answer" not in result and "attempts" not in result:
        ini = ["[dht22]", "enabled = yes", f"backend = {settings.backend}", f"pin = {pin}"]
    return [f"DHT22 (for [dht22], backend {settings.backend}):", f"  {result}"], ini


def probe(settings: Settings) -> str:
    """A report of what was found, then the agent.ini lines to use."""
    weather = weather_model(settings.weather)
    by_name = {s.name: s for s in settings.sensors}
    report: list[str] = []
    suggested: list[str] = []
    for lines, ini in (
        _serial(by_name["dylos"]),
        _i2c(by_name["bme280"], weather),
        _dht(by_name["dht22"], weather),
    ):
        report += lines
        if ini:
            suggested += ini + [""]
    report.append("")
    if suggested:
        report.append(f"put this in {settings.path}:")
        report += suggested
    else:
        report.append("no sensor found; check wiring, and `backend` in each sensor section")
    return "\n".join(report).rstrip()
