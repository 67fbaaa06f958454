"""The outputs ``agent.ini`` enables. Every output takes telegrams; some own a durable queue.

:class:`Output` is what every output has; :class:`Queued` is the second face of an output
that owns a durable queue and a sender (a :class:`~agent.delivery.Delivery`), so callers ask
``isinstance(output, Queued)`` instead of guessing from what its status holds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

from agent.config import ConfigError, Settings
from agent.console import ConsoleOutput
from agent.delivery import Backoff, Delivery, DeliverySettings, DeliveryStats
from agent.influx import InfluxClient
from agent.series import SeriesEncoder
from agent.sinks import InfluxV1Sink, InfluxV2Sink, Sink
from agent.telegram import Telegram


class Output(Protocol):
    name: str

    def send(self, telegram: Telegram) -> None: ...

    def status(self) -> dict[str, object]: ...

    def close(self) -> None: ...


@runtime_checkable
class Queued(Protocol):
    """An output with a durable queue: started, drained, asked how it fares."""

    name: str
    capacity: int  # bytes the queue may hold

    def encode(self, telegram: Telegram) -> list[tuple[str, str]]: ...

    def start(self) -> None: ...

    def queued_bytes(self) -> int: ...

    def accept(self, points: Sequence[tuple[str, str]]) -> bool: ...

    def keep_aside(self, telegrams: Sequence[Telegram], reason: str, queued: float) -> None: ...

    def wait_drained(
        self, timeout: float, progress: Callable[[int], None] | None = None
    ) -> bool: ...

    def stats(self) -> DeliveryStats: ...

    def failing(self) -> bool: ...

    def alive(self) -> bool: ...


def influx_client(settings: Settings) -> InfluxClient:
    """The HTTP client of ``[influx]``: a user and password (v1) or an API token (v2)."""
    s = settings.influx
    return InfluxClient(
        s.url,
        username=s.username,
        password=s.password,
        timeout=s.timeout,
        verify_tls=s.tls_verify,
        ca_file=s.ca_file,
        compress=s.gzip,
        token=s.token,
    )


def influx_sink(settings: Settings) -> Sink:
    """The sink ``[influx] api`` names.

    v1: ``/write`` to the database each telegram names (``<project>_<serial>``, or
    ``[influx] database`` for ``run``). v2: ``/api/v2/write``, every point to ``[influx]
    bucket`` -- one bucket per output; the queue still names the telegram's database, and
    the ``info``/``data`` series and their tags are the same as with v1.
    """
    s = settings.influx
    if s.api == "v2":
        return InfluxV2Sink(influx_client(settings), org=s.org, bucket=s.bucket)
    return InfluxV1Sink(influx_client(settings), create_database=s.create_database)


def delivery_settings(settings: Settings) -> DeliverySettings:
    s = settings.influx
    return DeliverySettings(
        batch_size=s.batch_size,
        batch_bytes=s.batch_kb * 1024,
        queue_bytes=int(s.queue_max_mb * 1_000_000),
        sync_interval=s.sync_interval,
        backoff=Backoff(cap=s.retry_max, slow=max(s.retry_max, 300.0)),
    )


def open_outputs(settings: Settings, queue_name: str, database: str = "") -> list[Output]:
    """The enabled outputs; the InfluxDB one queues under ``state_dir/<queue_name>``."""
    outputs: list[Output] = []
    if settings.console.enabled:
        try:
            outputs.append(ConsoleOutput(settings.console.file, f"{settings.path} [console] file"))
        except OSError as err:
            raise ConfigError(
                f"{settings.path} [console] file: cannot open {settings.console.file} "
                f"({err.strerror}); allowed: - or a file in a folder that exists"
            ) from None
    if settings.influx.enabled:
        try:
            outputs.append(
                Delivery(
                    "influx",
                    influx_sink(settings),
                    settings.kit.state_dir,
                    queue_name,
                    SeriesEncoder(database).encode,
                    delivery_settings(settings),
                )
            )
        except OSError as err:
            for output in outputs:
                output.close()
            raise ConfigError(
                f"{settings.path} [kit] state_dir: cannot keep the queue in "
                f"{settings.kit.state_dir} ({err.strerror or err}); "
                "allowed: a folder this user may create and write"
            ) from None
    return outputs
