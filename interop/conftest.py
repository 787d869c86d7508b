"""Fixtures for the interop suite.

- `binaries`: the built `starling` / `starlingctl` (fails, not skips, when missing:
  scripts/test.sh builds them first).
- `server`: one server per test module, on free loopback ports, in a temp dir;
  stopped by pid at the end of the module. Tests stay independent by using fresh
  accounts (`server.new_account()`), never shared ones.
- `fresh_server`: a server of the test's own, for tests that stop or break it.
- `clients`: a factory of logged-in slixmpp clients, all closed at teardown.

On a failing test the tail of the server's log is attached to the report.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from server_process import Binaries, StarlingServer
from xmpp_client import ClientFactory


@pytest.fixture(scope="session")
def binaries() -> Binaries:
    return Binaries.locate()


@pytest.fixture(scope="module")
def server(binaries: Binaries, tmp_path_factory: pytest.TempPathFactory) -> Iterator[StarlingServer]:
    srv = StarlingServer.start(tmp_path_factory.mktemp("starling"), binaries)
    yield srv
    srv.stop()


@pytest.fixture
def fresh_server(binaries: Binaries, tmp_path_factory: pytest.TempPathFactory) -> Iterator[StarlingServer]:
    srv = StarlingServer.start(tmp_path_factory.mktemp("starling-own"), binaries)
    yield srv
    srv.stop()


@pytest.fixture
async def clients(server: StarlingServer) -> AsyncIterator[ClientFactory]:
    factory = ClientFactory(server)
    yield factory
    await factory.close_all()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    report = yield
    if report.failed:
        funcargs = getattr(item, "funcargs", {})
        for name in ("server", "fresh_server"):
            srv = funcargs.get(name)
            if isinstance(srv, StarlingServer):
                state = "running" if srv.is_running() else f"exited ({srv.proc and srv.proc.returncode})"
                report.sections.append((f"{name} log tail [{state}] {srv.log_path}", srv.log_tail()))
    return report
