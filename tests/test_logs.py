"""Logs that fit journald: native-protocol entries with a priority and the event's fields,
one line each, no file name or size at info level; --version and the log format switch."""
from __future__ import annotations

import logging
import os
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from dsp import ROOT

from dispersiond import logs


def parse_datagram(data: bytes) -> dict[str, str]:
    """journald's native format, as systemd-journald reads it."""
    out, i = {}, 0
    while i < len(data):
        nl = data.index(b"\n", i)
        line = data[i:nl]
        if b"=" in line:
            key, value = line.split(b"=", 1)
            out[key.decode()] = value.decode()
            i = nl + 1
        else:
            size = int.from_bytes(data[nl + 1:nl + 9], "little")
            out[line.decode()] = data[nl + 9:nl + 9 + size].decode()
            assert data[nl + 9 + size:nl + 10 + size] == b"\n"
            i = nl + 10 + size
    return out


@pytest.fixture
def journal(tmp_path):
    path = str(tmp_path / "journal.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)
    handler = logs.JournalHandler(path)
    log = logging.getLogger("dispersiond")
    old = log.handlers[:], log.level
    log.handlers[:] = [handler]
    log.setLevel(logging.DEBUG)
    yield lambda: parse_datagram(sock.recv(1 << 16))
    log.handlers[:], _ = old[0], log.setLevel(old[1])
    handler.close()
    sock.close()


def test_an_event_is_one_entry_with_priority_and_fields(journal):
    logs.event(logging.WARNING, "upload failed; retrying later", file_id="ab" * 16,
               store="cloud-a", error="Unavailable")
    e = journal()
    assert e["PRIORITY"] == "4" and e["SYSLOG_IDENTIFIER"] == "dispersiond"
    assert e["FILE_ID"] == "ab" * 16 and e["STORE"] == "cloud-a" and e["ERROR"] == "Unavailable"
    assert e["MESSAGE"].startswith("upload failed; retrying later file_id=")
    assert "\n" not in e["MESSAGE"]


def test_priorities_follow_the_level(journal):
    for level, prio in ((logging.ERROR, "3"), (logging.INFO, "6"), (logging.DEBUG, "7"),
                        (logging.CRITICAL, "2")):
        logging.getLogger("dispersiond").log(level, "x")
        assert journal()["PRIORITY"] == prio


def test_a_traceback_stays_out_of_the_message_line(journal):
    try:
        raise ValueError("bad\nthing")
    except ValueError:
        logging.getLogger("dispersiond").exception("verify failed")
    e = journal()
    assert "\n" not in e["MESSAGE"] and "ValueError" in e["MESSAGE"]
    assert "Traceback" in e["EXCEPTION"] and "\n" in e["EXCEPTION"]  # multi-line field


def test_sizes_are_kept_for_debug_level(journal):
    logs.event(logging.INFO, "file claimed", file_id="c" * 32, size=12345)
    e = journal()
    assert "SIZE" not in e and "12345" not in e["MESSAGE"]
    logs.event(logging.DEBUG, "file claimed", file_id="c" * 32, size=12345)
    assert journal()["SIZE"] == "12345"


def test_a_batch_logs_one_summary_at_info_and_its_files_at_debug(journal):
    logs.batch_event(logging.INFO, "file claimed", "files claimed",
                     [{"file_id": "c" * 32, "size": 1}])
    e = journal()  # a lone file: its own line, as ever
    assert e["MESSAGE"].startswith("file claimed") and e["FILE_ID"] == "c" * 32
    assert e["PRIORITY"] == "6" and "SIZE" not in e
    items = [{"file_id": c * 32, "size": 5} for c in "abc"]
    logs.batch_event(logging.INFO, "file claimed", "files claimed", items)
    each = [journal() for _ in items]
    assert [x["FILE_ID"] for x in each] == ["a" * 32, "b" * 32, "c" * 32]
    assert {x["PRIORITY"] for x in each} == {"7"}
    summary = journal()
    assert summary["MESSAGE"].startswith("files claimed") and summary["COUNT"] == "3"
    assert summary["PRIORITY"] == "6" and "FILE_ID" not in summary
    logging.getLogger("dispersiond").setLevel(logging.INFO)
    logs.batch_event(logging.INFO, "file claimed", "files claimed", items)
    assert journal()["COUNT"] == "3"  # no debug lines came first


def test_reserved_journal_names_are_not_taken():
    assert logs.field_name("file_id") == "FILE_ID"
    assert logs.field_name("message") == "DISPERSIOND_MESSAGE"
    assert logs.field_name("priority") == "DISPERSIOND_PRIORITY"
    assert logs.field_name("2x") == "DISPERSIOND_2X"


def test_without_a_journal_socket_lines_go_to_stderr_with_a_priority_prefix(tmp_path):
    import io

    out = io.StringIO()
    h = logs.JournalHandler(str(tmp_path / "none.sock"), fallback=out)
    rec = logging.LogRecord("dispersiond", logging.WARNING, __file__, 1, "store down", (), None)
    rec.fields = {"store": "a"}
    h.emit(rec)
    h.close()
    assert out.getvalue() == "<4>store down store=a\n"


def test_journal_stream_is_detected_only_for_our_own_stderr(tmp_path):
    st = os.fstat(sys.stderr.fileno())
    assert logs.under_journal({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
    assert not logs.under_journal({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"})
    assert not logs.under_journal({})


def test_version_and_log_formats_on_the_command_line():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, "-m", "dispersiond", "--version"], env=env,
                         capture_output=True, text=True, timeout=60)
    from dispersiond import __version__

    assert res.returncode == 0 and res.stdout.strip() == f"dispersiond {__version__}"
    res = subprocess.run([sys.executable, "-m", "dispersiond", "--log-format", "syslog",
                          "status"], env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "journal" in res.stderr


def test_bash_completion_answers_through_argcomplete():
    env = {**os.environ, "PYTHONPATH": str(ROOT), "_ARGCOMPLETE": "1",
           "COMP_LINE": "dispersiond res", "COMP_POINT": "15", "_ARGCOMPLETE_IFS": "\n"}
    script = Path(sys.executable).parent / "dispersiond"  # the console script pip installs
    # argcomplete answers on fd 8, as the shell function it installs reads it.
    res = subprocess.run(["bash", "-c", f"{shlex.quote(str(script))} 8>&1 9>/dev/null"],
                         env=env, capture_output=True, text=True, timeout=60)
    words = res.stdout.split()
    assert res.returncode == 0 and "restore" in words and "put" not in words, (words, res.stderr)
