"""Opens the outputs ``agent.ini`` enables; each owns its own buffer (like Telegraf's outputs)."""

from __future__ import annotations

from typing import Protocol

from agent.buffer import DurableQueue
from agent.config import Settings
from agent.console import ConsoleOutput
from agent.influx import InfluxClient
from agent.publisher import Backoff, InfluxOutput
from agent.telegram import Telegram


class Output(Protocol):
    name: str

    def send(self, telegram: Telegram) -> None: ...

    def start(self) -> None: ...

    def wait_drained(self, timeout: float, progress=None) -> bool: ...

    def status(self) -> dict[str, object]: ...

    def close(self) -> None: ...


def influx_client(settings: Settings) -> InfluxClient:
    s = settings.influx
    return InfluxClient(
        s.url,
        username=s.username,
        password=s.password,
        timeout=s.timeout,
        verify_tls=s.tls_verify,
        ca_file=s.ca_file,
        compress=s.gzip,
    )


def open_outputs(settings: Settings, queue_name: str, database: str = "") -> list[Output]:
    """The enabled outputs; the InfluxDB one queues under ``state_dir/<queue_name>``."""
    outputs: list[Output] = []
    if settings.console.enabled:
        outputs.append(ConsoleOutput(settings.console.file))
    s = settings.influx
    if s.enabled:
        queue = DurableQueue(
            settings.kit.state_dir,
            queue_name,
            max_bytes=int(s.queue_max_mb * 1_000_000),
            sync_interval=s.sync_interval,
        )
        outputs.append(
            InfluxOutput(
                influx_client(settings),
                queue,
                database=database,
                batch_size=s.batch_size,
                batch_bytes=s.batch_kb * 1024,
                backoff=Backoff(cap=s.retry_max, slow=max(s.retry_max, 300.0)),
                create_database=s.create_database,
            )
        )
    return outputs
