"""What the memory store adds to the contract: thread safety, fault hooks, its links, its checksums.

(The contract itself runs over it in test_backend_contract.py.)
"""
from __future__ import annotations

import hashlib
import io
import threading
import time
import urllib.error
from datetime import timedelta
from pathlib import Path

import pytest

from backends import AlreadyExists, Denied, NotFound, Unavailable, open_store
from backends.memory import MemoryStore
from dispersiond.share import links

from backend_contract import fetch


@pytest.fixture
def store() -> MemoryStore:
    s = open_store("memory", "mem", chunk_size=64)
    assert isinstance(s, MemoryStore)
    yield s
    s.close()


def test_concurrent_creates_of_one_name_one_wins(store: MemoryStore) -> None:
    results: list[str] = []
    barrier = threading.Barrier(12)

    def create(i: int) -> None:
        barrier.wait()
        try:
            store.put_bytes("k", bytes([i]) * 1000)
            results.append("won")
        except AlreadyExists:
            results.append("lost")

    threads = [threading.Thread(target=create, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["lost"] * 11 + ["won"]
    data = store.get_bytes("k")
    assert len(data) == 1000 and len(set(data)) == 1  # one writer's bytes, never a mix


def test_fail_next_fails_the_chosen_verbs_then_recovers(store: MemoryStore) -> None:
    store.put_bytes("k", b"x")
    store.fail_next(2, verbs={"stat"})
    for _ in range(2):
        with pytest.raises(Unavailable, match="store 'mem'"):
            store.stat("k")
    assert store.get_bytes("k") == b"x" and store.stat("k").size == 1

    store.fail_next(1, Denied("mem", "token revoked"), verbs={"put"})
    with pytest.raises(Denied, match="token revoked"):
        store.put_bytes("j", b"y")
    with pytest.raises(NotFound):  # the failed put left nothing
        store.stat("j")
    store.put_bytes("j", b"y")
    with pytest.raises(ValueError, match="unknown verbs"):
        store.fail_next(1, verbs={"fetch"})


def test_down_fails_every_verb_but_names_are_checked_first(store: MemoryStore) -> None:
    store.put_bytes("k", b"x")
    store.down = True
    for call in (lambda: store.stat("k"), lambda: store.get("k"), lambda: store.list(),
                 lambda: store.put_bytes("n", b"y"), lambda: store.delete("k"),
                 lambda: store.presign("k", timedelta(minutes=1))):
        with pytest.raises(Unavailable, match="store 'mem': .*down"):
            call()
    with pytest.raises(ValueError):  # refused before any I/O, even the failing kind
        store.stat("../k")
    store.down = False
    assert store.get_bytes("k") == b"x"


def test_links_serve_until_they_expire_and_name_nothing(store: MemoryStore) -> None:
    store.put_bytes("patients/record-17", b"ciphertext")
    url = store.presign("patients/record-17", timedelta(seconds=1))
    assert url.startswith("http://127.0.0.1:") and "record" not in url and "patients" not in url
    assert fetch(url) == b"ciphertext"
    with pytest.raises(urllib.error.HTTPError) as forged:
        fetch(url + "x")
    assert forged.value.code == 403
    time.sleep(1.1)
    with pytest.raises(urllib.error.HTTPError) as expired:
        fetch(url)
    assert expired.value.code == 403 and b"expired" in expired.value.read()

    long = store.presign("patients/record-17", timedelta(minutes=5))
    store.down = True
    with pytest.raises(urllib.error.HTTPError) as down:
        fetch(long)
    assert down.value.code == 503
    store.down = False
    store.delete("patients/record-17")
    with pytest.raises(urllib.error.HTTPError) as gone:
        fetch(long)
    assert gone.value.code == 404


def test_the_projects_link_reader_opens_and_classifies_its_links(store: MemoryStore, tmp_path: Path) -> None:
    data = b"public fragment " * 100
    store.put_bytes("obj", data)
    o = {"url": store.presign("obj", timedelta(minutes=5)), "size": len(data),
         "digest": hashlib.sha256(data).hexdigest()}
    links.fetch(o, "sha256", "copy 1", tmp_path / "out", int(time.time()) + 300, 5.0, None)
    assert (tmp_path / "out").read_bytes() == data

    short = {**o, "url": store.presign("obj", timedelta(seconds=1))}
    time.sleep(1.1)
    with pytest.raises(links.LinkFailure) as expired:
        links.fetch(short, "sha256", "copy 1", tmp_path / "late", int(time.time()) - 1, 5.0, None)
    assert expired.value.kind == "expired"
    store.delete("obj")
    with pytest.raises(links.LinkFailure) as gone:
        links.fetch(o, "sha256", "copy 1", tmp_path / "gone", int(time.time()) + 300, 5.0, None)
    assert gone.value.kind == "gone"


def test_close_stops_the_link_server(store: MemoryStore) -> None:
    store.put_bytes("k", b"x")
    url = store.presign("k", timedelta(minutes=1))
    store.close()
    with pytest.raises(urllib.error.URLError):
        fetch(url)
    assert fetch(store.presign("k", timedelta(minutes=1))) == b"x"  # a new link works again


def test_checksums_on_request_like_a_cloud() -> None:
    plain = open_store("memory", "plain")
    assert plain.put_bytes("k", b"abc").checksums == {} and plain.stat("k").checksums == {}
    summed = open_store("memory", "summed", checksums=("sha256", "md5"))
    info = summed.put(name := "k", io.BytesIO(b"abc"), 3)
    assert info.checksums == {"sha256": hashlib.sha256(b"abc").hexdigest(),
                              "md5": hashlib.md5(b"abc").hexdigest()}
    assert summed.stat(name) == info
    with pytest.raises(ValueError):
        open_store("memory", "bad", checksums=("nosuchhash",))


def test_the_configuration_does_not_accept_a_memory_store() -> None:
    """Data in it would not outlive the process: the daemon may never be configured with one."""
    from dispersiond.config import StoreConfig

    with pytest.raises(ValueError, match="memory|type"):
        StoreConfig(name="m", type="memory", trust="untrusted")
