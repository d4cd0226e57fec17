"""CDR export: CSV (RFC 4180, read back with the csv module) and JSON (one document)."""

from __future__ import annotations

import csv
import io
import json

import msgspec

from gateway.store.cdr_export import CSV_COLUMNS, cdrs_to_csv, cdrs_to_json
from gateway.store.model import Cdr

PAID = Cdr(
    id="c1",
    caller="1001",
    callee="+8613800138000",
    route="trunk",
    trunk="cheap",
    start=1_700_000_000.25,
    answer=1_700_000_002.5,
    end=1_700_000_092.5,
    duration=90.0,
    disposition="answered",
    end_reason="callee-bye",
    sip_status=200,
    caller_call_id="a,1@client",
    callee_call_id='b"1"@gw',
    payer="partner:demo",
    partner="demo",
    tariff_prefix="86",
    rate_per_minute="0.10",
    billing_increment=[60, 60],
    billable_seconds=120,
    cost="0.20",
    q850_cause=16,
    reason_text='Normal, "clearing"\r\nsecond line',
    trunks_tried=["dead", "cheap"],
)
FREE = Cdr(
    id="c2",
    caller="1001",
    callee="1002",
    route="app",
    trunk=None,
    start=1_700_000_100.0,
    answer=None,
    end=1_700_000_130.0,
    duration=0.0,
    disposition="no-answer",
    end_reason="no-answer-timeout",
    sip_status=None,
    caller_call_id="x",
    callee_call_id=None,
)


def read_csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text, newline="")))


def test_csv_has_a_header_and_one_row_per_cdr_in_field_order() -> None:
    text = cdrs_to_csv([PAID, FREE])
    assert text.splitlines()[0] == ",".join(Cdr.__struct_fields__)
    assert CSV_COLUMNS[:3] == ("id", "caller", "callee") and "cost" in CSV_COLUMNS
    rows = read_csv(text)
    assert [row["id"] for row in rows] == ["c1", "c2"]
    assert list(rows[0]) == list(CSV_COLUMNS)


def test_csv_cells_read_back_exactly() -> None:
    paid, free = read_csv(cdrs_to_csv([PAID, FREE]))
    assert (paid["cost"], paid["rate_per_minute"], paid["billable_seconds"]) == (
        "0.20",
        "0.10",
        "120",
    )
    assert (paid["billing_increment"], paid["trunks_tried"]) == ("60/60", "dead;cheap")
    assert float(paid["start"]) == PAID.start and float(paid["answer"]) == PAID.answer
    # Commas, quotes and line breaks survive RFC 4180 quoting.
    assert paid["caller_call_id"] == "a,1@client"
    assert paid["callee_call_id"] == 'b"1"@gw'
    assert paid["reason_text"] == 'Normal, "clearing"\r\nsecond line'
    # None is an empty cell; an empty list too; money stays a decimal string.
    assert (free["trunk"], free["answer"], free["sip_status"], free["payer"]) == ("", "", "", "")
    assert (free["billing_increment"], free["trunks_tried"], free["cost"]) == ("", "", "0.00")


def test_csv_quotes_per_rfc_4180_with_crlf_line_ends() -> None:
    text = cdrs_to_csv([PAID])
    assert text.endswith("\r\n") and text.count("\r\n") == 3  # header, row, one inside a cell
    assert '"b""1""@gw"' in text and '"a,1@client"' in text


def test_no_cdrs_is_a_header_only_csv_and_an_empty_json_list() -> None:
    assert read_csv(cdrs_to_csv([])) == []
    assert cdrs_to_csv([]).count("\r\n") == 1
    assert cdrs_to_json([]) == "[]"


def test_json_is_one_list_document_with_money_as_strings() -> None:
    document = json.loads(cdrs_to_json(iter([PAID, FREE])))
    assert isinstance(document, list) and len(document) == 2
    assert document[0]["cost"] == "0.20" and document[0]["rate_per_minute"] == "0.10"
    assert document[0]["billing_increment"] == [60, 60]
    assert document[1]["trunk"] is None and document[1]["trunks_tried"] == []
    assert msgspec.convert(document, list[Cdr]) == [PAID, FREE]
