"""CSV exports, with the csv module: every column is named in the recipient's policy.

A CSV has no schema, so nothing here guesses which column is an identifier: each header is
looked up in the policy (drop, pseudonym, keep, year) and an unlisted column refuses the
share unless the policy says otherwise.
"""
from __future__ import annotations

import csv
import io
import re

from . import pseudonym as ps
from .outcome import DeidRefused, Tally
from .policy import CsvPolicy

_YEAR = re.compile(r"^\s*(\d{4})(?:[-/]\d{1,2}(?:[-/]\d{1,2})?)?"
                   r"(?:[T ][0-9:.]+(?:Z|[+-]\d{2}:?\d{2})?)?\s*$")


def deidentify(data: bytes, policy: CsvPolicy, secret: bytes, tally: Tally) -> bytes:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise DeidRefused("CSV: the file is not UTF-8 text; export it as UTF-8 CSV and share it "
                          "again") from None
    try:
        dialect = csv.Sniffer().sniff(text[:8192], delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    try:
        rows = list(csv.reader(io.StringIO(text, newline=""), dialect))
    except csv.Error as e:
        raise DeidRefused(f"CSV: the file could not be parsed ({type(e).__name__}); check its "
                          "quoting") from None
    if not rows:
        raise DeidRefused("CSV: the file is empty: there is nothing to share")
    header = [h.strip() for h in rows[0]]
    actions = _actions(header, policy, tally)
    keep = [i for i, a in enumerate(actions) if a != "drop"]
    seen: dict[str, str] = {}  # one export repeats a patient id on every row: one HMAC each
    out = io.StringIO(newline="")
    writer = csv.writer(out, delimiter=dialect.delimiter, lineterminator="\n")
    writer.writerow([header[i] for i in keep])
    for row in rows[1:]:
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise DeidRefused(f"CSV: a row has {len(row)} cells where the header has "
                              f"{len(header)}; fix the export so every row matches the header")
        writer.writerow([_cell(row[i], actions[i], secret, tally, seen) for i in keep])
    tally.add("column_dropped", len(header) - len(keep))
    return out.getvalue().encode("utf-8")


def _actions(header: list[str], policy: CsvPolicy, tally: Tally) -> list[str]:
    if len(set(header)) != len(header):
        raise DeidRefused("CSV: two columns share a header name, so the policy cannot tell them "
                          "apart; rename them in the export")
    unknown = [h for h in header if h not in policy.columns]
    if unknown and policy.unknown_columns == "refuse":
        raise DeidRefused(f"CSV: {len(unknown)} column(s) have no rule in the recipient's policy "
                          f"({', '.join(unknown[:10])}); add each to deid.csv.columns with drop, "
                          "pseudonym, keep or year")
    if unknown:
        tally.warn(f"CSV: {len(unknown)} column(s) without rules were "
                   f"{'dropped' if policy.unknown_columns == 'drop' else 'kept as they are'}")
    default = "drop" if policy.unknown_columns == "drop" else "keep"
    return [policy.columns.get(h, default) for h in header]


def _cell(value: str, action: str, secret: bytes, tally: Tally, seen: dict[str, str]) -> str:
    if action == "keep" or not value.strip():
        return value
    if action == "pseudonym":
        tally.add("pseudonymised")
        key = value.strip()
        if key not in seen:
            seen[key] = ps.pseudonym(secret, key, 16)
        return seen[key]
    m = _YEAR.match(value)  # action == "year"
    tally.add("date_generalised" if m else "removed")
    return m.group(1) if m else ""
