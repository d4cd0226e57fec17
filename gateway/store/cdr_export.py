"""Export of call detail records as CSV (RFC 4180) and JSON, for `edgegw cdr` and the API.

Both carry every `Cdr` field under its own name, in the record's field order, so a new
field appears in the export without a change here. Money stays a decimal string ("0.20")
and times stay epoch seconds. In CSV an absent value (None) is an empty cell, the
[first, next] billing increments are written "60/60" and the trunks tried are joined
with ";" (trunk names never contain it); quoting follows RFC 4180 (the csv module,
CRLF line ends). JSON is one document: a list of objects.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable

import msgspec

from gateway.store.model import Cdr

__all__ = ["CSV_COLUMNS", "cdrs_to_csv", "cdrs_to_json"]

CSV_COLUMNS: tuple[str, ...] = Cdr.__struct_fields__


def _cell(name: str, value: object) -> str:
    if value is None:
        return ""
    if name == "billing_increment" and isinstance(value, list):
        return "/".join(str(step) for step in value)
    if isinstance(value, list):
        return ";".join(str(item) for item in value)
    if isinstance(value, float):
        return repr(value)  # the shortest text that reads back as the same float
    return str(value)


def cdrs_to_csv(cdrs: Iterable[Cdr]) -> str:
    """A header row, then one row per CDR, columns in `CSV_COLUMNS` order."""
    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for cdr in cdrs:
        values = msgspec.structs.astuple(cdr)
        writer.writerow([_cell(n, v) for n, v in zip(CSV_COLUMNS, values, strict=True)])
    return out.getvalue()


def cdrs_to_json(cdrs: Iterable[Cdr]) -> str:
    """One JSON document: a list with one object per CDR."""
    return msgspec.json.encode(list(cdrs)).decode()
