"""Opens the outputs ``agent.ini`` enables; each owns its own buffer (like Telegraf's outputs)."""

from __future__ import annotations

import sqlite3
from typing import Protocol

from agent.buffer import DurableQueue
from agent.config import ConfigError, Settings
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
        try:
            outputs.append(ConsoleOutput(settings.console.file))
        except OSError as err:
            raise ConfigError(
                f"{settings.path} [console] file: cannot open {settings.console.file} "
                f"({err.strerror}); allowed: - or a file in a folder that exists"
            ) from None
    s = settings.influx
    if s.enabled:
        try:
            queue = DurableQueue(
                settings.kit.state_dir,
                queue_name,
                max_bytes=int(s.queue_max_mb * 1_000_000),
                sync_interval=s.sync_interval,
            )
        except (OSError, sqlite3.Error) as err:
            for output in outputs:
                output.close()
            raise ConfigError(
                f"{settings.path} [kit] state_dir: cannot keep the queue in "
                f"{settings.kit.state_dir} ({getattr(err, 'strerror', None) or err}); "
                "allowed: a folder this user may create and write"
            ) from None
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
