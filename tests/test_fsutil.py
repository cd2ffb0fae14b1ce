"""The small-file reads and writes a burst of records goes through (fsutil.py)."""
from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from dispersiond.fsutil import read_whole, write_new


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=200_000) | st.sampled_from([b"", b"x", bytes(1 << 16),
                                                       bytes((1 << 16) + 1)]))
def test_what_write_new_wrote_read_whole_reads_back(tmp_path_factory, data: bytes) -> None:
    path = tmp_path_factory.mktemp("f") / "container.prf"
    path.write_bytes(b"a longer file from a crash before" * 1000)  # replaced, not kept
    write_new(path, data)
    assert read_whole(path) == data
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_read_whole_reads_a_file_that_grows_as_it_is_read_to_its_end(tmp_path: Path) -> None:
    """The size known at open is a hint: what a writer appends meanwhile is read too
    (a short read is the end of a regular file; a read of the whole size is not)."""
    path = tmp_path / "growing"
    path.write_bytes(b"a" * 1000)
    real_read = os.read
    grown = threading.Event()

    def read(fd: int, n: int) -> bytes:
        if not grown.is_set():
            grown.set()
            with open(path, "ab") as f:
                f.write(b"b" * 5000)
        return real_read(fd, n)

    os_read, os.read = os.read, read
    try:
        data = read_whole(path)
    finally:
        os.read = os_read
    assert data == b"a" * 1000 + b"b" * 5000


def test_read_whole_of_a_missing_file_raises_oserror(tmp_path: Path) -> None:
    try:
        read_whole(tmp_path / "gone")
    except FileNotFoundError as exc:
        assert exc.filename == str(tmp_path / "gone")
    else:
        raise AssertionError("a missing file was read")
