"""The process-wide part budget (backends/budget.py), the readers that fill its buffers
without copies (dispersiond/tap.py, ops/upload.py), and S3 multipart uploads under it
against the local S3 server."""
from __future__ import annotations

import io
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from backends import SourceError
from backends.budget import PartBudget, fill
from dispersiond.ops.upload import Throttle, UploadReader
from dispersiond.tap import Pipe, Tap

MiB = 1 << 20


class WatchedBudget(PartBudget):
    """A real budget that remembers the most bytes it ever had out at once."""

    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self.most = 0

    def _grant(self, size, length):
        buf = super()._grant(size, length)
        self.most = max(self.most, self.held)
        return buf


class ReadOnly(io.RawIOBase):
    """Short reads and no readinto of its own (RawIOBase's raises NotImplementedError)."""

    def __init__(self, data: bytes, step: int = 1000) -> None:
        self.data, self.pos, self.step = data, 0, step

    def read(self, n: int = -1) -> bytes:
        out = self.data[self.pos:self.pos + min(n, self.step)]
        self.pos += len(out)
        return out

    def readinto(self, buf):
        raise NotImplementedError


def test_first_part_always_granted_others_only_within_the_limit() -> None:
    b = PartBudget(limit=10)
    a = b.take(8, first=True)
    assert a is not None and len(a) == 8
    assert b.take(8, first=False) is None  # 16 > 10
    c = b.take(8, first=True)  # another upload's first part: granted over the limit
    assert c is not None and b.held == 16
    b.give(a)
    b.give(c)
    assert b.held == 0
    assert b.take(2, first=False) is not None


def _until(cond) -> None:
    """Spin (no clock) until another thread has got where `cond` says."""
    while not cond():
        threading.Event().wait(0.001)


def test_acquire_waits_for_room_and_goes_before_take() -> None:
    b = PartBudget(limit=16)
    a = b.take(8, first=True)
    c = b.take(8, first=False)
    got = []
    t = threading.Thread(target=lambda: got.append(b.acquire(8)))
    t.start()
    _until(lambda: b.waiting == 1)
    assert not got  # 24 > 16: it waits
    b.give(a)
    t.join()
    assert len(got) == 1 and b.held == 16
    # a waiter is served before anyone's extra part
    t2 = threading.Thread(target=lambda: got.append(b.acquire(8)))
    t2.start()
    _until(lambda: b.waiting == 1)
    b.give(c)  # room for one: the waiter's, not a take's
    t2.join()
    assert b.take(8, first=False) is None and b.held == 16


def test_a_part_larger_than_the_limit_goes_alone() -> None:
    b = PartBudget(limit=4)
    buf = b.acquire(8)
    assert len(buf) == 8 and b.held == 8
    b.give(buf)
    assert b.held == 0


def test_buffers_are_reused_while_uploads_run_and_dropped_after() -> None:
    b = PartBudget(limit=32)
    keep = b.take(8, first=True)
    x = b.take(8, first=False)
    b.give(x)
    assert b.free_bytes == 8
    assert b.take(8, first=False) is x  # the same buffer again
    b.give(x)
    b.give(keep)
    assert b.held == 0 and b.free_bytes == 0 and not b.free


def test_a_short_last_part_is_a_full_buffer_cut_down_and_not_kept() -> None:
    b = PartBudget(limit=32)
    keep = b.take(8, first=True)
    full = b.take(8, first=False)
    b.give(full)
    short = b.take(8, first=False, length=3)
    assert short is full and len(short) == 3
    assert b.held == 16
    b.give(short, 8)
    assert b.held == 8 and b.free_bytes == 0  # not pooled: it is no longer a full part
    b.give(keep)


def test_fill_takes_short_reads_and_read_only_sources() -> None:
    data = os.urandom(10_000)
    buf = bytearray(12_000)
    fill(ReadOnly(data), buf, 10_000)
    assert bytes(buf[:10_000]) == data
    with pytest.raises(SourceError, match="ended after 10000 of 11000"):
        fill(ReadOnly(data), buf, 11_000)


def test_pipe_readinto_fills_across_pieces_and_frees_the_pipe() -> None:
    pieces = [os.urandom(n) for n in (700, 300, 1500, 10)]
    total = sum(map(len, pieces))
    pipe = Pipe(total, "s", cap=1 << 20)
    for p in pieces:
        pipe.put(p)
    pipe.finish()
    r = pipe.reader()
    first = bytearray(1000)
    assert r.readinto(first) == 1000  # exactly the first two pieces
    second = bytearray(800)
    assert r.readinto(second) == 800  # part of the third
    assert pipe.buffered == total - 1800
    rest = r.read(10_000)  # the rest of the third, then the fourth
    assert bytes(first) + bytes(second) + rest == b"".join(pieces)
    assert pipe.buffered == 0 and r.readinto(bytearray(5)) == 0


def test_pipe_writer_waits_for_the_reader_beyond_its_cap() -> None:
    data = os.urandom(3 * MiB)
    pipe = Pipe(len(data), "s", cap=256 << 10)
    seen = []

    def write() -> None:
        for i in range(0, len(data), 64 << 10):
            pipe.put(data[i:i + (64 << 10)])
            seen.append(pipe.buffered)
        pipe.finish()

    t = threading.Thread(target=write)
    t.start()
    buf = bytearray(len(data))
    fill(UploadReader(pipe.reader(), Throttle(None), None), buf, len(data))
    t.join()
    assert bytes(buf) == data
    assert max(seen) <= (256 << 10) + (64 << 10)


def test_tap_readinto_reads_behind_the_writer(tmp_path) -> None:
    data = os.urandom(300_000)
    tap = Tap(len(data))
    with open(tmp_path / "f", "w+b") as f:
        tap.attach(f.fileno())
        f.write(data[:100_000])
        f.flush()
        tap.advance(100_000)
        r = tap.reader()
        buf = bytearray(150_000)
        got = []

        def read() -> None:
            got.append(r.readinto(buf))

        t = threading.Thread(target=read)
        t.start()
        f.write(data[100_000:])
        f.flush()
        tap.advance(len(data))
        t.join()
        tap.finish()
        assert got == [150_000] and bytes(buf) == data[:150_000]
        rest = bytearray(200_000)
        assert r.readinto(rest) == 150_000 and bytes(rest[:150_000]) == data[150_000:]
    tap.close()


# --- S3 multipart under the budget, against the local S3 server

PART = 5 * MiB


def _get(store, key: str) -> bytes:
    return b"".join(store.get(key))


def test_one_upload_uses_the_budget_for_parts_in_flight(make_store) -> None:
    budget = WatchedBudget(limit=4 * PART)
    store = make_store("s3", part_size=PART, concurrency=4, budget=budget)
    data = os.urandom(4 * PART + 123)
    store.put("big", io.BytesIO(data), len(data))
    assert _get(store, "big") == data
    assert PART < budget.most <= 4 * PART  # more than one part in flight, never more than 4
    assert budget.held == 0 and budget.free_bytes == 0


class Trickle(io.RawIOBase):
    """A plain source (not live) with `ready`: records how many bytes were buffered
    by the budget at each `ready` call (what a slow source would keep waiting)."""

    def __init__(self, data: bytes, budget: PartBudget) -> None:
        self.data, self.pos, self.budget, self.held_at_ready = data, 0, budget, []

    def ready(self, n: int) -> None:
        self.held_at_ready.append(self.budget.held)

    def readinto(self, buf) -> int:
        out = self.data[self.pos:self.pos + len(buf)]
        buf[:len(out)] = out
        self.pos += len(out)
        return len(out)


def test_a_plain_upload_asks_for_its_first_buffer_only_once_its_bytes_are_ready(make_store) -> None:
    budget = WatchedBudget(limit=PART)
    store = make_store("s3", part_size=PART, concurrency=4, budget=budget)
    data = os.urandom(2 * PART + 1)
    src = Trickle(data, budget)
    store.put("slow", src, len(data))
    assert _get(store, "slow") == data
    assert src.held_at_ready[0] == 0  # nothing held while it waited for its first bytes
    assert budget.most <= PART  # strictly within the limit: not live, no first-part grant


def test_concurrent_uploads_share_a_small_budget(make_store) -> None:
    budget = WatchedBudget(limit=PART)  # one part: only live uploads' first parts go over
    stores = [make_store("s3", part_size=PART, concurrency=4, budget=budget) for _ in range(3)]
    blobs = [os.urandom(3 * PART + 7), os.urandom(3 * PART + 11), os.urandom(3 * PART + 13)]
    pipes = [Pipe(len(b), f"s{i}", cap=256 << 10) for i, b in enumerate(blobs[:2])]

    def feed() -> None:  # one encoder feeding two live uploads in turn
        step = 64 << 10
        for i in range(0, len(blobs[1]), step):
            for p, blob in zip(pipes, blobs):
                if i < len(blob):
                    p.put(blob[i:i + step])
        for p in pipes:
            p.finish()

    def up(i: int) -> None:
        src = pipes[i].reader() if i < 2 else io.BytesIO(blobs[i])
        stores[i].put("obj", UploadReader(src, Throttle(None), None), len(blobs[i]))

    with ThreadPoolExecutor(4) as ex:
        done = [ex.submit(up, i) for i in range(3)]
        ex.submit(feed).result()
        for f in done:
            f.result()
    for s, blob in zip(stores, blobs):
        assert _get(s, "obj") == blob
    # the limit, plus a first part for each live upload (without the budget: 3 x 4 parts)
    assert budget.most <= 3 * PART
    assert budget.held == 0


def test_a_failing_source_gives_every_buffer_back(make_store) -> None:
    budget = WatchedBudget(limit=4 * PART)
    store = make_store("s3", part_size=PART, concurrency=4, budget=budget)
    data = os.urandom(4 * PART)
    with pytest.raises(SourceError):
        store.put("cut", io.BytesIO(data[: 2 * PART + 5]), len(data))  # ends early
    assert budget.most > 0 and budget.held == 0
    assert "cut" not in list(store.list())


class Recorded(Throttle):
    """A real throttle (a high rate: no waiting to speak of) that records each take."""

    def __init__(self) -> None:
        super().__init__(1 << 40)
        self.took: list[int] = []

    def take(self, n: int) -> None:
        self.took.append(n)
        super().take(n)


def test_ready_pays_the_throttle_before_the_buffer_and_the_read_does_not_again() -> None:
    data = os.urandom(300_000)
    t = Recorded()
    r = UploadReader(io.BytesIO(data), t, None)
    r.ready(200_000)
    assert sum(t.took) == 200_000 and max(t.took) == UploadReader.SLICE  # in slices
    t.took.clear()
    buf = bytearray(300_000)
    fill(r, buf, 300_000)
    assert bytes(buf) == data
    assert sum(t.took) == 100_000  # only what was not paid ahead
    assert r.prepaid == 0


def test_azure_stages_one_block_at_a_time_from_the_budget(make_store) -> None:
    budget = WatchedBudget(limit=PART)
    store = make_store("azure", block_size=1 * MiB, budget=budget)
    data = os.urandom(3 * MiB + 5)
    store.put("blocks", io.BytesIO(data), len(data))
    assert _get(store, "blocks") == data
    assert budget.most == 1 * MiB and budget.held == 0  # one block in memory, given back
