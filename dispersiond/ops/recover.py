"""`recover`: a blank device + config + key -> the state again, from the newest chain of
manifest backups (a checkpoint and every delta after it) that verifies, refusing to load
an older state when a newer one is known to have existed.

Functional core: `choose` picks the chain and names every gap; the shell reads the
stores, fetches the private containers and writes the state in one transaction.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from backends import StoreError

from .. import scratch
from .. import audit, digests, manifest
from ..errors import DispersiondError
from ..logs import log
from .packread import PackWindows
from .restore import failing_stores, first_intact, preferred
from . import checkpoint
from ..state import ChainTip, ObjectRow, SegmentLanding, SegmentRow
from ..archive import Progress, Archive


@dataclass(frozen=True)
class Found:
    """One authenticated, well-formed backup on one store."""
    store: str
    name: str
    digest: str
    size: int
    doc: dict

    @property
    def seq(self) -> int:
        return self.doc["seq"]


@dataclass
class Choice:
    chain: list[Found]  # oldest (the checkpoint) first
    newest_seen: int
    warnings: list[str] = field(default_factory=list)
    refusal: str | None = None  # why loading `chain` would silently go back in time
    segments: list[Found] = field(default_factory=list)  # the checkpoint's, in its order

    def docs(self) -> list[dict]:
        """The chain's documents, a segmented checkpoint with its segments' entries."""
        docs = [f.doc for f in self.chain]
        if docs and docs[0].get("segments") is not None:
            c = self.chain[0]
            docs[0] = manifest.expand(docs[0], [f.doc for f in self.segments],
                                      f"{c.store}/{c.name}")
        return docs


class Rollback(DispersiondError):
    """The newest state cannot be loaded and an older one would be: refused."""


def _walk(tip: Found, by_digest: dict[str, Found]) -> tuple[list[Found], str | None]:
    """The chain ending at `tip`, oldest first, or the gap that breaks it."""
    chain = [tip]
    while chain[-1].doc["kind"] == "delta":
        prev = chain[-1].doc["prev"]
        got = by_digest.get(prev["digest"])
        if got is None or got.seq != prev["seq"] or got.doc["kind"] == "segment":
            return [], (f"backup #{chain[-1].seq} needs #{prev['seq']}, which is on no store "
                        "(missing, or replaced by another with that number)")
        chain.append(got)
    return chain[::-1], _segment_gap(chain[-1], by_digest)


def _segment_gap(root: Found, by_digest: dict[str, Found]) -> str | None:
    """Why a segmented checkpoint cannot be loaded (a segment missing, rolled back or
    swapped: none on any store has the digest its root lists), or None."""
    for ref in root.doc.get("segments") or []:
        got = by_digest.get(ref["digest"])
        if got is None or got.doc["kind"] != "segment" or got.doc["index"] != ref["index"] \
                or len(got.doc["files"]) != ref["files"]:
            return (f"checkpoint #{root.seq} lists segment {ref['index']}, which is on no "
                    "store (missing, or replaced by another)")
    return None


def _segments_of(root: Found, by_digest: dict[str, Found]) -> list[Found]:
    return [by_digest[r["digest"]] for r in root.doc.get("segments") or []]


def choose(found: list[Found], stores: list[str], known_seq: int = 0) -> Choice | None:
    """The newest complete chain among `found`, and what is wrong around it; None if
    there is no complete chain at all."""
    choice = survey_chains(found, stores, known_seq)
    return choice if choice.chain else None


def survey_chains(found: list[Found], stores: list[str], known_seq: int = 0) -> Choice:
    """`choose`, with an empty chain (and every gap in `warnings`) when none is complete."""
    by_digest = {f.digest: f for f in found}
    found = [f for f in found if f.doc["kind"] != "segment"]
    newest = max((f.seq for f in found), default=0)
    warnings = []
    per_store = {s: max((f.seq for f in found if f.store == s), default=0) for s in stores}
    for s, top in per_store.items():
        if top < newest:
            shown = f"#{top}" if top else "none"
            warnings.append(f"store {s}: its newest manifest backup is {shown}, older than "
                            f"#{newest} on another store (a backup missing or rolled back "
                            "there)")
    for f in found:  # a checkpoint that names a predecessor we hold under another digest
        prev = f.doc["prev"]
        if prev and f.doc["kind"] == "checkpoint":
            same_seq = [g for g in found if g.seq == prev["seq"]]
            if same_seq and all(g.digest != prev["digest"] for g in same_seq):
                warnings.append(f"backup #{f.seq} on store {f.store} names #{prev['seq']} "
                                "with another digest than the one stored (a backup replaced)")
    chain: list[Found] = []
    for tip in sorted({f.digest: f for f in found}.values(), key=lambda f: f.seq,
                      reverse=True):
        chain, gap = _walk(tip, by_digest)
        if not gap:
            break
        chain = []
        warnings.append(f"store {tip.store}: {gap}")
    if not chain:
        return Choice([], newest, list(dict.fromkeys(warnings)))
    top = chain[-1].seq
    choice = Choice(chain, newest, list(dict.fromkeys(warnings)),
                    segments=_segments_of(chain[0], by_digest))
    if top < newest:
        choice.refusal = (f"the newest manifest backup is #{newest} but it cannot be loaded "
                          f"(a gap in its chain); the newest complete chain ends at #{top}")
    elif top < known_seq:
        choice.refusal = (f"this device last backed up #{known_seq}, but the private stores "
                          f"hold nothing newer than #{top} (backups deleted or rolled back)")
    return choice


# --------------------------------------------------------------- the shell

def survey(v: Archive) -> tuple[list[Found], list[str]]:
    """Every backup on every private store that opens with our key and is well formed,
    and a line for each that does not."""
    found, errors = [], []
    for store in v.cfg.private.stores:
        try:
            names = list(v.store(store).list(manifest.PREFIX))
        except StoreError as exc:
            errors.append(f"{store}: {exc}")
            continue
        for name in names:
            try:
                blob = v.store(store).get_bytes(name)
                doc = manifest.read(v.key, blob, f"{store}/{name}")
            except (StoreError, DispersiondError) as exc:
                errors.append(f"{store}/{name}: {exc}")
                continue
            found.append(Found(store, name, manifest.blob_digest(blob), len(blob), doc))
    return found, errors


def recover(v: Archive, progress: Progress | None = None, accept_older: bool = False) -> dict:
    """Rebuild a blank state from the newest chain of manifest backups. Private
    containers no store holds intact are skipped and reported (their files are in the
    state, `restore` names what is missing): a clinic gets every record it can."""
    if v.db.has_files():
        raise DispersiondError(f"the state database in {v.root} already holds files; recover "
                               "only into an empty state directory")
    found, errors = survey(v)
    choice = survey_chains(found, list(v.cfg.private.stores), v.db.manifest_seq())
    if not choice.chain:
        why = errors + choice.warnings
        raise DispersiondError("no readable manifest backup on any private store"
                               + (f" ({'; '.join(why)})" if why else ""))
    for w in choice.warnings:
        log.warning("recover: %s", w)
    if choice.refusal and not accept_older:
        raise Rollback(f"recover refused: {choice.refusal}. Put the missing backups back on "
                       "the private store, or run 'dispersiond recover --accept-older' to "
                       "load the older state and lose what came after")
    if choice.refusal:
        log.warning("recover: loading an older state on request: %s", choice.refusal)
    state = manifest.replay(choice.docs())
    missing, fetched = _fetch_containers(v, state, progress)
    tip = _tip(choice.chain, state)
    kept = {s: sorted({(f.seq, f.name, f.doc["base"]) for f in found if f.store == s
                       and f.doc["kind"] != "segment"}) for s in v.cfg.private.stores}
    from ..share import device

    device.restore_from_backup(v.root, v.key, state.as_backup_doc())
    # After an older state was accepted, the next backup is a checkpoint numbered above
    # every backup seen, so the unloaded newer ones never look like its successors.
    v.db.load_recovered(manifest.rows_of(state), [state.audit[s] for s in sorted(state.audit)],
                        state.audit_head, max(choice.newest_seen, tip.seq),
                        None if choice.refusal else tip, kept,
                        None if choice.refusal else segment_state(v, choice, found))
    audit.seal_head(v.db, v.key)  # the backup was authenticated: its head is ours
    v.audit("recover", None, files=len(state.files), manifest_seq=state.seq)
    newest = choice.chain[-1]
    return {"files": len(state.files), "manifest_seq": state.seq, "from_store": newest.store,
            "chain": [f.seq for f in choice.chain], "newest_seen": choice.newest_seen,
            "warnings": choice.warnings + ([choice.refusal] if choice.refusal else []),
            "private_containers_fetched": fetched,
            "missing_containers": missing, "unreadable_backups": errors}


def segment_state(v: Archive, choice: Choice, found: list[Found]) -> SegmentLanding | None:
    """What the next checkpoint builds on: the loaded root's segments, their members, the
    files the deltas after it changed, and for every segment object on each store the
    checkpoints that list it (pruning's rule). None for a whole (older) checkpoint: the
    next checkpoint is then full."""
    root = choice.chain[0]
    if root.doc.get("segments") is None:
        return None
    rows = [SegmentRow(r["index"], r["name"], r["digest"], r["files"], f.size)
            for r, f in zip(root.doc["segments"], choice.segments)]
    moved: dict[str, int | None] = {e["file_id"]: f.doc["index"] for f in choice.segments
                                    for e in f.doc["files"]}
    touched = sorted({e["file_id"] for d in choice.chain[1:] for e in d.doc["files"]}
                     | {fid for d in choice.chain[1:] for fid in d.doc["removed"]})
    listed: dict[str, list[int]] = {}  # segment digest -> seqs of the roots listing it
    for f in {f.digest: f for f in found}.values():
        for r in f.doc.get("segments") or []:
            listed.setdefault(r["digest"], []).append(f.seq)
    live = {r.digest for r in rows}
    landing = SegmentLanding(root.seq, checkpoint.key_id(v), rows, moved, {}, full=True,
                             touched=touched)
    for f in found:
        if f.doc["kind"] != "segment" or f.digest not in listed:
            continue  # listed by no root: the daemon's sweep deletes it
        landing.put.setdefault(f.store, []).append(f.name)
        landing.born[f.name] = min(listed[f.digest])
        if f.digest not in live:
            landing.died[f.name] = max(listed[f.digest]) + 1
    return landing


def _tip(chain: list[Found], state: manifest.Replayed) -> ChainTip:
    base = chain[0]
    return ChainTip(chain[-1].seq, chain[-1].digest, base.seq, base.size,
                    sum(f.size for f in chain[1:]), len(chain) - 1, max(state.audit, default=0))


def _fetch_containers(v: Archive, state: manifest.Replayed,
                      progress: Progress | None) -> tuple[list[dict], int]:
    """Put each file's private container in place (verified), before anything is written
    to the state; returns the files none of whose copies is intact, and how many
    containers were downloaded. Containers packed together come with one request per
    pack (`PackWindows`), not one per file."""
    missing, fetched = [], 0
    todo: list[tuple[dict, list[ObjectRow]]] = []
    for e in state.files.values():
        dest, kept = v.container_path(e["file_id"]), v.db.container(e["file_id"])
        if (digests.of(e["digest_alg"], kept) == e["prf_digest"] if kept is not None
                else dest.exists() and digests.of_path(e["digest_alg"], dest) == e["prf_digest"]):
            continue
        todo.append((e, [ObjectRow(i, e["file_id"], o["role"], o["shard"], o["store"],
                                   o["name"], o["offset"], o["length"], o["object_size"],
                                   o["digest"], "uploaded", None, e["digest_alg"],
                                   o.get("pack_digest"))
                         for i, o in enumerate(e["objects"]) if o["role"] == "private"]))
    failing = failing_stores(v)
    windows = PackWindows(v, [o for _, objs in todo for o in preferred(v, objs, 1, failing)],
                          v.root / "work", progress)
    todo.sort(key=lambda t: windows.rank(t[0]["file_id"]))  # one pack's files together
    with scratch.folder(v.root / "work", "recover") as tmpd:
        for e, objs in todo:
            dest = v.container_path(e["file_id"])
            errors: list[str] = []
            try:
                got = first_intact(v, objs, Path(tmpd), "prf", errors, progress, windows)
            finally:
                windows.release(e["file_id"])
            if got is None:
                reason = "; ".join(errors) or "none recorded"
                log.warning("recover: file %s: no intact private container (%s); it cannot be "
                            "restored until a copy is put back", e["file_id"], reason)
                missing.append({"file_id": e["file_id"], "error": reason})
                continue
            os.replace(got[1], dest)  # a file: the state has no row to keep it by yet
            v.db.drop_containers([e["file_id"]])  # (a damaged one kept there before)
            fetched += 1
    return missing, fetched
