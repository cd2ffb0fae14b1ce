"""The inbox watcher: names of files that appeared or were written in the inbox, sent to
the main loop as PathSeen messages. The periodic rescan covers whatever it misses.

On Linux it reads inotify itself (inotify_simple: a thin ctypes wrapper): one read takes
every queued event, names are collected per read, and each read becomes one message.
A burst of 1,000 records through watchdog cost ~0.3-0.45 s of the daemon's ~3.5 s of
CPU (an object, a dispatch and a queue hand-off per kernel event, a move-pairing queue
for the renames that claims make; BENCHMARKS.md, "the inbox watcher", in issue #14's
GIL round). Elsewhere watchdog watches, as before.
"""
from __future__ import annotations

import logging
import os
import select
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ..logs import log
from .events import Event, PathSeen, Rescan

#: Milliseconds to let events gather after the first one of a quiet spell: a burst of
#: files is then read (and handed to the loop) in a few reads, not one per file.
GATHER_MS = 5
#: What watchdog logs when an emitter is stopped between two reads: a race inside its own
#: stop, harmless once we are stopping the watcher ourselves.
_STOP_RACE = "InotifyEmitter.queue_events() called when the thread is inactive"


def _inotify():
    """inotify_simple, or None where the kernel has no inotify (or the module is absent)."""
    try:
        import inotify_simple
    except (ImportError, OSError):
        return None
    return inotify_simple


class Watcher:
    """Watches the inbox on a thread of its own; `backend` "auto" takes inotify where
    there is one, else watchdog ("inotify" and "watchdog" force one: tests)."""

    def __init__(self, inbox: Path, put: Callable[[Event], None], backend: str = "auto") -> None:
        self.inbox, self.put, self.backend = inbox, put, backend
        self._impl: _Inotify | _Watchdog | None = None

    def start(self) -> None:
        ino = _inotify() if self.backend in ("auto", "inotify") else None
        if self.backend == "inotify" and ino is None:
            raise RuntimeError("inotify is not available here")
        impl: _Inotify | _Watchdog = (_Inotify(self.inbox, self.put, ino) if ino is not None
                                      else _Watchdog(self.inbox, self.put))
        try:
            impl.start()
        except OSError as exc:  # e.g. inotify limits: the periodic rescan still finds files
            log.warning("cannot watch the inbox for events (%s); relying on the periodic "
                        "rescan (schedule.rescan)", exc)
            return
        self._impl = impl

    def stop(self) -> None:
        """Stop watching and wait for the thread, so none logs after a clean stop."""
        if self._impl is not None:
            self._impl.stop()
            self._impl = None


class _Inotify:
    """inotify read directly: creations, moves in, writes closed, metadata changes.
    Removals and moves out are not asked for (the tracker forgets a file it cannot stat),
    nor every single write (a file closed after writing is looked at again, and the
    tracker looks at every candidate until it is stable)."""

    def __init__(self, inbox: Path, put: Callable[[Event], None], ino) -> None:
        self.inbox, self.put, self.ino = inbox, put, ino
        self.prefix = os.path.join(os.fspath(inbox), "")  # the events give bare names
        f = ino.flags
        self.mask = f.CREATE | f.MOVED_TO | f.CLOSE_WRITE | f.ATTRIB | f.DELETE_SELF \
            | f.MOVE_SELF | f.ONLYDIR
        self.gone = f.DELETE_SELF | f.MOVE_SELF | f.IGNORED | f.UNMOUNT
        self.isdir, self.overflow = f.ISDIR, f.Q_OVERFLOW
        self.fd = None
        self.thread: threading.Thread | None = None
        self._wake_r, self._wake_w = -1, -1

    def start(self) -> None:
        fd = self.ino.INotify()
        try:
            fd.add_watch(self.inbox, self.mask)
        except OSError:
            fd.close()
            raise
        self.fd = fd
        self._wake_r, self._wake_w = os.pipe()
        self.thread = threading.Thread(target=self._run, name="inbox-watch", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        if self.thread is None:
            return
        os.write(self._wake_w, b"x")
        self.thread.join(5.0)
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)
        self.fd.close()
        self.thread = None

    def _run(self) -> None:
        poller = select.poll()  # not select(): no limit on the descriptors' numbers
        poller.register(self.fd.fileno(), select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        try:
            while True:
                if any(fd == self._wake_r for fd, _ in poller.poll()):
                    return
                time.sleep(GATHER_MS / 1000)  # let the rest of a burst gather
                if not self.handle(self.fd.read(timeout=0)):
                    return
        except Exception as exc:  # noqa: BLE001 - the rescan still finds every file
            log.warning("the inbox watcher stopped (%s: %s); relying on the periodic rescan "
                        "(schedule.rescan)", type(exc).__name__, exc)

    def handle(self, events) -> bool:
        """Send what one read saw to the loop; False once the inbox is gone (moved,
        removed, unmounted): there is nothing left to watch."""
        names: dict[str, None] = {}
        watching = True
        for ev in events:
            if ev.mask & self.overflow:
                self.put(Rescan())  # the kernel dropped events: look at everything
            elif ev.mask & self.gone:
                log.warning("the inbox %s was moved, removed or unmounted: no longer "
                            "watching it; the periodic rescan (schedule.rescan) goes on",
                            self.inbox)
                watching = False
                break
            elif ev.name and not ev.mask & self.isdir:
                names[self.prefix + ev.name] = None
        if names:
            self.put(PathSeen(tuple(names)))
        return watching


class _StopRaceFilter(logging.Filter):
    def __init__(self, stopping: threading.Event) -> None:
        super().__init__()
        self.stopping = stopping

    def filter(self, record: logging.LogRecord) -> bool:
        return not (self.stopping.is_set() and record.getMessage() == _STOP_RACE)


class _Watchdog:
    """watchdog's observer (where there is no inotify to read)."""

    def __init__(self, inbox: Path, put: Callable[[Event], None]) -> None:
        self.inbox, self.put = inbox, put
        self.observer = None
        self.stopping = threading.Event()
        self._filter = _StopRaceFilter(self.stopping)

    def start(self) -> None:
        from watchdog.events import FileSystemEventHandler
        from watchdog.observers import Observer

        put = self.put

        class Handler(FileSystemEventHandler):
            def on_any_event(self, ev) -> None:  # created, modified, moved, closed
                if ev.is_directory:
                    return
                path = getattr(ev, "dest_path", "") or ev.src_path
                if path:
                    put(PathSeen((os.fsdecode(path),)))

        logging.getLogger("watchdog.observers.inotify").addFilter(self._filter)
        observer = Observer()
        observer.schedule(Handler(), str(self.inbox), recursive=False)
        observer.daemon = True
        observer.start()
        self.observer = observer

    def stop(self) -> None:
        if self.observer is None:
            return
        self.stopping.set()
        self.observer.unschedule_all()  # emitters stopped and joined first
        self.observer.stop()
        self.observer.join(1.0)
        self.observer = None
