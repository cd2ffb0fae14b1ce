"""Sharing packed files (docs/FORMAT.md sections 6.6 and 8.5): a link never points at a
pack. Each packed member a bundle links is copied, unmasked and digest-checked, into a
standalone object of its own for the link's lifetime; the copy goes once the link has
expired (any command that empties the trash, or the daemon's housekeeping), and at once
when the file is re-keyed.

The packs here hold several files, as the batched pipeline makes them: the files are
encoded first and their fragments sent together (ops/packing.send_objects). Bundles are
opened over the real emulators (moto, fake-gcs-server, Azurite) and file:// links.
"""
from __future__ import annotations

import io
import threading
import time
from pathlib import Path

import pytest

from dispersiond import digests
from dispersiond.archive import open_archive
from dispersiond.config import load_config
from dispersiond.identity import load_identity
from dispersiond.placement import padme
from dispersiond.share import LinkExpired, ObjectGone, open_bundle
from dispersiond.share import copies as share_copies
from backends import Unavailable
from backends.memory import MemoryStore
from dsp import cli_json, real_files
from memory_archive import every_object, memory_archive, pack_together
from test_sharing import (_payload, cloud_setup, doctor, local_setup, sha, share_cli,  # noqa: F401
                          store_of)

FHIR, HL7, CSV = real_files()[3:6]


def packed_together(cfg: Path, paths: list[Path]) -> list[str]:
    """Protect `paths` with one pack per store holding all their fragments; their ids."""
    with open_archive(load_config(cfg), exclusive=True) as v:
        return pack_together(v, paths)


def member(cfg: Path, fid: str, role: str = "public") -> tuple[object, bytes]:
    """A file's one public (or private) row on its one store, and the member's bytes."""
    from dispersiond.ops.restore import fetch_object

    with open_archive(load_config(cfg)) as v:
        (obj,) = v.db.objects(fid, role=role)
        buf = io.BytesIO()
        fetch_object(v, obj, buf)
        return obj, buf.getvalue()


def stored(cfg: Path, *stores: str) -> set[str]:
    """Every object name on `stores`, as their store lists them."""
    out: set[str] = set()
    for name in stores:
        with store_of(cfg, name) as st:
            out |= set(st.list(""))
    return out


def copies_of(cfg: Path, fid: str | None = None) -> list:
    with open_archive(load_config(cfg)) as v:
        return v.db.share_copies(fid)


@pytest.mark.parametrize("kind", ["s3", "gcs", "azure", "local"])
def test_a_packed_file_opens_bit_exact_through_a_copy_of_its_fragment_only(
        tmp_path: Path, make_store_settings, doctor, kind: str) -> None:
    cfg = cloud_setup(tmp_path, make_store_settings, doctor,
                      {"mode": "replicate", "stores": ["one"]}, kinds=(("one", kind),))
    fa, fb = packed_together(cfg, [FHIR, CSV])
    obj_a, frag_a = member(cfg, fa)
    obj_b, frag_b = member(cfg, fb)
    assert obj_a.name == obj_b.name  # A and B are members of one pack
    with store_of(cfg, "one") as st:
        pack_before = st.get_bytes(obj_a.name)

    res = share_cli(cfg, fa, "dr-lee", tmp_path / "a.dspshare", "--expires", "10m")
    p = _payload(Path(res["path"]), doctor)
    (link,) = p["objects"]
    (copy,) = copies_of(cfg, fa)
    assert copies_of(cfg, fb) == [] and copy.store == "one"
    # the link names the copy, never the pack
    assert copy.name in link["url"] and obj_a.name not in link["url"]
    # the copy: A's fragment from offset 0, then random padding to a standalone object's
    # padded size (section 3); none of B's bytes
    with store_of(cfg, "one") as st:
        stored = st.get_bytes(copy.name)
        assert st.get_bytes(obj_a.name) == pack_before  # the pack is not touched
    assert (link["offset"], link["length"], link["size"]) == (0, len(frag_a), padme(len(frag_a)))
    assert len(stored) == link["size"] and stored[:len(frag_a)] == frag_a
    assert digests.of(p["digest_alg"], stored) == link["digest"]
    assert frag_b[:32] not in stored and frag_b[-32:] not in stored
    assert len(stored) < len(pack_before)
    # recorded with the link's expiry, plus the slack for clock skew
    assert p["expires"] + share_copies.EXPIRY_SLACK <= copy.expires \
        <= p["expires"] + share_copies.EXPIRY_SLACK + 60

    got = open_bundle(Path(res["path"]), load_identity(doctor[0]), tmp_path / "a.out")
    assert got.fetched == 1 and sha(got.path) == sha(FHIR)
    assert [e["detail"]["copies"] for e in cli_json(cfg, "audit", "ls")
            if e["event"] == "share"] == [1]


def test_a_packed_private_container_goes_into_the_bundle(tmp_path: Path, doctor) -> None:
    """The bundle carries the private container inline (section 6.4): with the device's
    own copy gone, it comes out of the private pack, unmasked and digest-checked."""
    cfg = local_setup(tmp_path, doctor)
    fa, fb = packed_together(cfg, [HL7, CSV])
    prf, container = member(cfg, fa, "private")
    assert prf.packed and member(cfg, fb, "private")[0].name == prf.name
    (tmp_path / "state" / "prf" / f"{fa}.prf").unlink()
    bundle = Path(share_cli(cfg, fa, "dr-lee", tmp_path / "a.dspshare")["path"])
    raw = bundle.read_bytes()
    assert raw.endswith(container[104:])  # the segments as stored; the header re-wrapped
    got = open_bundle(bundle, load_identity(doctor[0]), tmp_path / "a.out")
    assert sha(got.path) == sha(HL7)


def test_link_copies_are_deleted_once_their_links_have_expired(
        tmp_path: Path, doctor, monkeypatch) -> None:
    monkeypatch.setattr(share_copies, "EXPIRY_SLACK", 0)
    cfg = local_setup(tmp_path, doctor)
    (fid,) = packed_together(cfg, [FHIR])
    ident = load_identity(doctor[0])

    def on_stores(names: set[str]) -> set[str]:
        return names & stored(cfg, "cloud-a", "cloud-b")  # the replicas' stores

    def new_copies(before: set[str]) -> set[str]:
        names = {c.name for c in copies_of(cfg)} - before
        assert len(names) == 2 and on_stores(names) == names  # one per replica's store
        return names

    live = Path(share_cli(cfg, fid, "dr-lee", tmp_path / "live.dspshare", "--expires", "10m")
                ["path"])
    kept = new_copies(set())
    # a command that empties the trash: what has expired goes, nothing else
    short = Path(share_cli(cfg, fid, "dr-lee", tmp_path / "1.dspshare", "--expires", "1s")
                 ["path"])
    first = new_copies(kept)
    time.sleep(1.2)
    cli_json(cfg, "put", str(HL7))  # put empties the trash when it is done
    assert {c.name for c in copies_of(cfg)} == kept and on_stores(first) == set()
    with pytest.raises(ObjectGone):  # file:// links do not expire: the copy is gone
        open_bundle(short, ident, tmp_path / "late.out", enforce_expiry=False)
    with pytest.raises(LinkExpired):
        open_bundle(short, ident, tmp_path / "late.out")

    # the daemon's housekeeping (its loop calls this; it looks about once a minute)
    from dispersiond.daemon.finisher import Finisher

    share_cli(cfg, fid, "dr-lee", tmp_path / "2.dspshare", "--expires", "1s")
    second = new_copies(kept)
    with open_archive(load_config(cfg)) as v:
        fin = Finisher(v, None, threading.Event(), lambda: True, retry_base=1, retry_max=1)
        fin.expire_share_copies()
        time.sleep(1.2)
        fin.expire_share_copies()  # within the minute: not looked at again yet
        assert {c.name for c in v.db.share_copies()} == kept | second
        fin.copies_due = 0.0
        fin.expire_share_copies()
        assert {c.name for c in v.db.share_copies()} == kept and v.db.trashed() == []
    assert on_stores(second) == set() and on_stores(kept) == kept
    assert sha(open_bundle(live, ident, tmp_path / "live.out").path) == sha(FHIR)


class NoBackups(MemoryStore):
    """A trusted store that takes objects but refuses manifest backups while `refuse`."""

    refuse = False

    def put(self, key, src, size):
        if self.refuse and key.startswith("manifest/"):
            raise Unavailable(self.name, "injected fault: no backups now")
        return super().put(key, src, size)


def test_rekey_deletes_the_copies_at_once_even_before_a_backup_lands(
        tmp_path: Path, doctor) -> None:
    """Revocation does not wait: the copies are in no manifest backup, so they go with the
    rekey's commit, while the old packed members wait for a backup naming the new ones.
    An old pack another file still uses gives up only the re-keyed file's reference."""
    from dispersiond.ops.rekey import rekey
    from dispersiond.ops.restore import restore
    from dispersiond.share import create_bundle, device

    with memory_archive(tmp_path, "replicate", recipients=[
            {"name": "dr-lee", "role": "doctor", "public_key": doctor[1]}]) as v:
        vault = NoBackups("vault", checksums=("sha256",))
        v.attach_store("vault", vault)
        fa, fb = pack_together(v, [FHIR, CSV])
        bundle = create_bundle(v, fa, "dr-lee", "1h", out=tmp_path / "a.dspshare").path
        senders = {device.load(v.root, v.key).public_bytes: "patient"}
        names = {(c.store, c.name) for c in v.db.share_copies(fa)}
        old = {(o.store, o.name) for o in v.db.objects(fa)}
        assert len(names) == 2 and len(old) == 3  # a pack per replica's store, one on the vault
        assert names | old <= {(s, n) for s, ns in every_object(v).items() for n in ns}

        vault.refuse = True
        res = rekey(v, fa)
        assert res["share_copies_deleted"] == 2 and res["revocation_pending"] == [fa]
        assert res["new_packs"] == 3 and not res["old_deleted"]
        on = {(s, n) for s, ns in every_object(v).items() for n in ns}
        assert not names & on and old <= on  # copies gone now, the old packs wait
        with pytest.raises(ObjectGone, match="re-keyed or erased"):
            open_bundle(bundle, load_identity(doctor[0]), tmp_path / "a.out", senders=senders)
        new = v.db.objects(fa)
        assert all(o.packed for o in new) and not {(o.store, o.name) for o in new} & old
        assert all(v.db.pack(o.store, o.name).members == 1 for o in new)

        vault.refuse = False
        assert rekey(v, fb)["old_deleted"]  # the backup lands: both retirements finish
        on = {(s, n) for s, ns in every_object(v).items() for n in ns}
        assert not old & on  # B was the last member: now the old packs are gone
        for fid, src in ((fa, FHIR), (fb, CSV)):
            restore(v, fid, tmp_path / f"{fid}.out")
            assert sha(tmp_path / f"{fid}.out") == sha(src)


def test_copies_of_a_share_that_fails_go_at_once(tmp_path: Path, doctor) -> None:
    """A copy whose upload failed, and the copies of a bundle that is then not written
    (too few objects could be linked), go to the trash at once, not at expiry."""
    from dispersiond.share import ShareError, create_bundle, device

    with memory_archive(tmp_path, recipients=[
            {"name": "dr-lee", "role": "doctor", "public_key": doctor[1]}]) as v:
        (fid,) = pack_together(v, [CSV])  # erasure, 2 of 3
        before = every_object(v)
        v.store("cloud-b").fail_next(1, verbs={"put"})
        v.store("cloud-c").fail_next(1, verbs={"put"})
        with pytest.raises(ShareError, match="only 1 of the 2 public objects needed"):
            create_bundle(v, fid, "dr-lee", "1h", out=tmp_path / "x.dspshare")
        assert not (tmp_path / "x.dspshare").exists()
        assert v.db.share_copies() == []
        v.empty_trash()  # (the share-failed entry's backup may have emptied some already)
        clouds = ("cloud-a", "cloud-b", "cloud-c")  # (the vault gets manifest backups)
        assert v.db.trashed() == [] and all(every_object(v)[s] == before[s] for s in clouds)

        v.store("cloud-c").fail_next(1, verbs={"put"})  # one copy fails: the bundle stands
        res = create_bundle(v, fid, "dr-lee", "1h", out=tmp_path / "y.dspshare")
        assert res.links == 2 and {c.store for c in v.db.share_copies()} == {"cloud-a",
                                                                               "cloud-b"}
        v.empty_trash()
        after = every_object(v)
        assert {s: after[s] - before[s] for s in clouds} == {  # the two copies, no more
            s: {c.name for c in v.db.share_copies() if c.store == s} for s in clouds}
        senders = {device.load(v.root, v.key).public_bytes: "patient"}
        got = open_bundle(res.path, load_identity(doctor[0]), tmp_path / "y.out",
                          senders=senders)
        assert got.fetched == 2 and sha(got.path) == sha(CSV)
