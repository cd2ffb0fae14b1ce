"""The inbox watcher, both ways it watches (inotify read directly, and watchdog where
there is no inotify), on real folders."""
from __future__ import annotations

import logging
import os
import queue
import shutil
import threading
import time
from pathlib import Path

import inotify_simple
import pytest

from dispersiond.daemon import watcher as wmod
from dispersiond.daemon.events import PathSeen, Rescan
from dispersiond.daemon.watcher import Watcher

BACKENDS = ["inotify", "watchdog"]


def _seen(q: queue.SimpleQueue, want: set[str], timeout: float = 5.0) -> tuple[set[str], int]:
    """Paths reported until `want` are all in (or the timeout), and the messages read."""
    got: set[str] = set()
    messages = 0
    deadline = time.monotonic() + timeout
    while not want <= got and time.monotonic() < deadline:
        try:
            ev = q.get(timeout=0.1)
        except queue.Empty:
            continue
        messages += 1
        if isinstance(ev, PathSeen):
            got.update(os.fspath(p) for p in ev.paths)
    return got, messages


@pytest.fixture
def inbox(tmp_path: Path) -> Path:
    (tmp_path / "inbox").mkdir()
    return tmp_path / "inbox"


@pytest.mark.parametrize("backend", BACKENDS)
def test_files_written_moved_in_and_linked_are_reported(inbox: Path, tmp_path: Path,
                                                        backend: str) -> None:
    q: queue.SimpleQueue = queue.SimpleQueue()
    w = Watcher(inbox, q.put, backend)
    w.start()
    try:
        (inbox / "written.hl7").write_bytes(b"MSH|")
        (tmp_path / "outside.json").write_bytes(b"{}")
        os.rename(tmp_path / "outside.json", inbox / "moved.json")
        (tmp_path / "src.dcm").write_bytes(b"DICM")
        os.link(tmp_path / "src.dcm", inbox / "linked.dcm")
        (inbox / "sub").mkdir()  # a folder is no candidate
        want = {str(inbox / n) for n in ("written.hl7", "moved.json", "linked.dcm")}
        got, _ = _seen(q, want)
    finally:
        w.stop()
    assert want <= got
    assert str(inbox / "sub") not in got


def test_a_burst_arrives_in_a_few_messages_every_name_once(inbox: Path, tmp_path: Path) -> None:
    src = tmp_path / "record.json"
    src.write_bytes(b"{}")
    q: queue.SimpleQueue = queue.SimpleQueue()
    w = Watcher(inbox, q.put, "inotify")
    w.start()
    try:
        names = {str(inbox / f"r{i:04d}.json") for i in range(1000)}
        for name in sorted(names):
            os.link(src, name)
        got, messages = _seen(q, names)
    finally:
        w.stop()
    assert got == names
    assert messages < 100  # gathered per read: not one message per file


def test_a_name_that_is_not_utf8_is_reported_as_the_tracker_keeps_it(inbox: Path) -> None:
    q: queue.SimpleQueue = queue.SimpleQueue()
    w = Watcher(inbox, q.put, "inotify")
    w.start()
    try:
        raw = os.fsencode(inbox) + b"/caf\xe9.hl7"
        with open(raw, "wb") as f:
            f.write(b"MSH|")
        want = os.fsdecode(raw)
        got, _ = _seen(q, {want})
    finally:
        w.stop()
    assert want in got and os.path.exists(want)


def test_an_overflowed_queue_asks_for_a_rescan() -> None:
    q: queue.SimpleQueue = queue.SimpleQueue()
    impl = wmod._Inotify(Path("/inbox"), q.put, inotify_simple)
    f = inotify_simple.flags
    assert impl.handle([inotify_simple.Event(-1, f.Q_OVERFLOW, 0, ""),
                        inotify_simple.Event(1, f.CREATE, 0, "a.hl7"),
                        inotify_simple.Event(1, f.CREATE | f.ISDIR, 0, "folder"),
                        inotify_simple.Event(1, f.CLOSE_WRITE, 0, "a.hl7")])
    assert isinstance(q.get_nowait(), Rescan)
    assert q.get_nowait() == PathSeen(("/inbox/a.hl7",))  # once, the folder left out
    assert q.empty()


def _remove_inbox(impl, inbox: Path) -> None:
    shutil.rmtree(inbox)


def _break_reads(impl, inbox: Path) -> None:
    def broken(timeout=None):
        raise OSError(5, "Input/output error")

    impl.fd.read = broken
    (inbox / "a.hl7").write_bytes(b"MSH|")


@pytest.mark.parametrize("breaks, says", [(_remove_inbox, "no longer watching"),
                                          (_break_reads, "watcher stopped (OSError")])
def test_the_watcher_ends_with_a_warning_when_the_inbox_goes_or_a_read_fails(
        inbox: Path, caplog, breaks, says: str) -> None:
    q: queue.SimpleQueue = queue.SimpleQueue()
    w = Watcher(inbox, q.put, "inotify")
    with caplog.at_level(logging.WARNING, logger="dispersiond"):
        w.start()
        impl = w._impl
        breaks(impl, inbox)
        impl.thread.join(5.0)
        assert not impl.thread.is_alive()
        w.stop()  # still a clean stop
    assert any(says in r.getMessage() and "rescan" in r.getMessage() for r in caplog.records)


def test_without_inotify_watchdog_watches(inbox: Path, monkeypatch) -> None:
    monkeypatch.setattr(wmod, "_inotify", lambda: None)
    q: queue.SimpleQueue = queue.SimpleQueue()
    w = Watcher(inbox, q.put)
    w.start()
    try:
        assert isinstance(w._impl, wmod._Watchdog)
        (inbox / "a.hl7").write_bytes(b"MSH|")
        got, _ = _seen(q, {str(inbox / "a.hl7")})
    finally:
        w.stop()
    assert str(inbox / "a.hl7") in got
    with pytest.raises(RuntimeError, match="inotify is not available"):
        Watcher(inbox, q.put, "inotify").start()


def test_a_watch_that_cannot_be_set_leaves_the_rescan_with_a_warning(tmp_path: Path,
                                                                      caplog) -> None:
    q: queue.SimpleQueue = queue.SimpleQueue()
    w = Watcher(tmp_path / "missing", q.put, "inotify")
    with caplog.at_level(logging.WARNING, logger="dispersiond"):
        w.start()
    assert w._impl is None
    assert any("relying on the periodic rescan" in r.getMessage() for r in caplog.records)
    w.stop()


@pytest.mark.parametrize("backend", BACKENDS)
def test_stopping_the_watcher_while_files_change_logs_no_error(tmp_path: Path, caplog,
                                                               backend: str) -> None:
    """watchdog logs an ERROR when its emitter is stopped between two reads; stopping the
    daemon's watcher while the inbox is busy must not, and must not take long."""
    q: queue.SimpleQueue = queue.SimpleQueue()
    with caplog.at_level(logging.WARNING):
        for _ in range(40):
            w = Watcher(tmp_path, q.put, backend)
            w.start()
            done = threading.Event()

            def churn() -> None:
                i = 0
                while not done.is_set():
                    (tmp_path / f"f{i % 5}.part").write_bytes(b"x")
                    i += 1

            t = threading.Thread(target=churn)
            t.start()
            time.sleep(0.05)
            t0 = time.monotonic()
            w.stop()
            stopped_in = time.monotonic() - t0
            done.set()
            t.join()
            assert stopped_in < 1.5
    assert not q.empty()  # it did watch
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
