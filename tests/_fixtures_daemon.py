"""Daemon fixtures: a started engine on the embedded model, and a real waitress server around it.

    def test_health(server):
        assert requests.get(server.url + "/api/health").json()["ready"]

``make_engine(config)`` and ``make_server(config, engine=None)`` build variants (small queue,
short keep-alive…); everything they start is stopped at teardown.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator

import pytest

from pennello.config import Config
from pennello.daemon import Engine, Job, create_app, start_background_server
from pennello.installer import ensure_embedded_default
from pennello.paths import Paths

SLOW_STEPS = 100  # a job this long keeps the worker busy for a while on the tiny model


def config_with(**sections: dict[str, Any]) -> Config:
    """``config_with(engine={"queue_size": 1})``: the default config with some fields changed."""
    config = Config()
    for section, changes in sections.items():
        config = config.replace(section, **changes)
    return config


def wait_until_running(job: Job) -> None:
    """Block until the worker has taken the first denoising step of ``job``."""
    for name, _ in job.events(timeout=30):
        if name == "progress":
            return
        assert name != "ping", "job did not start within 30 s"
    raise AssertionError(f"job ended ({job.status}) before it was seen running")


@dataclass
class RunningServer:
    url: str
    engine: Engine
    config: Config
    paths: Paths
    stop: Callable[[], None]

    def api(self, path: str) -> str:
        return f"{self.url}/api{path}"


@pytest.fixture
def make_engine(home: Paths) -> Iterator[Callable[..., Engine]]:
    engines: list[Engine] = []

    def make(config: Config | None = None, store: Any = None) -> Engine:
        config = config or Config()
        ensure_embedded_default(home, config)
        engine = Engine(config, home, store=store)
        engines.append(engine)
        engine.start()
        return engine

    yield make
    for engine in engines:
        engine.stop(cancel_running=True)


@pytest.fixture
def engine(make_engine: Callable[..., Engine]) -> Engine:
    return make_engine()


@pytest.fixture
def make_server(home: Paths, make_engine: Callable[..., Engine]) -> Iterator[Callable[..., RunningServer]]:
    stops: list[Callable[[], None]] = []

    def make(config: Config | None = None, engine: Engine | None = None) -> RunningServer:
        config = config or Config()
        engine = engine or make_engine(config)
        _, url, stop = start_background_server(create_app(config, engine, home), "127.0.0.1", 0)
        stops.append(stop)
        return RunningServer(url, engine, config, home, stop)

    yield make
    for stop in stops:
        stop()


@pytest.fixture
def server(make_server: Callable[..., RunningServer]) -> RunningServer:
    return make_server()
