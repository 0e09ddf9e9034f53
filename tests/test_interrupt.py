"""pcipass.interrupt.install: SIGINT/SIGTERM handlers in the main thread only."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator

import pytest

from pcipass import interrupt


@pytest.fixture
def saved_handlers() -> Iterator[None]:
    before = {signum: signal.getsignal(signum) for signum in interrupt.HANDLED_SIGNALS}
    yield
    for signum, handler in before.items():
        signal.signal(signum, handler)


@pytest.mark.usefixtures("saved_handlers")
def test_install_in_the_main_thread_routes_both_signals() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    interrupt.install()
    for signum in interrupt.HANDLED_SIGNALS:
        assert signal.getsignal(signum) is interrupt._handler


@pytest.mark.usefixtures("saved_handlers")
def test_install_in_another_thread_changes_nothing_and_raises_nothing() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    before = {signum: signal.getsignal(signum) for signum in interrupt.HANDLED_SIGNALS}
    failures: list[BaseException] = []

    def other() -> None:
        try:
            interrupt.install()
        except BaseException as error:  # the test reports it below
            failures.append(error)

    worker = threading.Thread(target=other)
    worker.start()
    worker.join()
    assert failures == []
    assert {s: signal.getsignal(s) for s in interrupt.HANDLED_SIGNALS} == before
