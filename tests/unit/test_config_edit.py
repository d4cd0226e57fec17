"""gateway.control.config_edit: the text edits of [[trunks]]/[[partners]] tables, and the
file put back when the reload after a write fails.

The edits are pure functions of the TOML text; each test checks both what changed and that
every other byte (comments, layout, a header-like line inside a multi-line string) stayed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, cast

import pytest

from gateway.config import parse_config
from gateway.control.config_edit import (
    ConfigEditError,
    ConfigEditor,
    add_table,
    parse_assignments,
    remove_table,
    set_table,
    table_blocks,
)
from gateway.control.reload import Reloader, ReloadRefused

TEXT = '''\
# edge box 7
[general]
var_dir = "/tmp/x"  # kept
log_level = """
[[trunks]]
"""

# the lab carrier
[[trunks]]
name = "a"  # first
host = "127.0.0.1"
codecs = [
  "PCMA",
]

[[subscribers]]
username = "1001"
password = "pw-1001"

# second carrier
[[trunks]]
name = "b"
host = "127.0.0.2"
[http]
listen = "127.0.0.1:8080"'''


def test_blocks_skip_headers_inside_strings_and_take_the_comments_above() -> None:
    blocks = [(b.section, b.name, b.start, b.end) for b in table_blocks(TEXT)]
    assert blocks == [
        ("trunks", "a", 7, 15),
        ("subscribers", None, 15, 19),
        ("trunks", "b", 19, 23),
    ]


def test_add_goes_after_the_last_table_of_its_section() -> None:
    new = add_table(TEXT, "trunks", {"name": "c", "host": "10.0.0.1", "prefixes": ["44"]})
    table = '\n[[trunks]]\nname = "c"\nhost = "10.0.0.1"\nprefixes = ["44"]\n\n'
    assert new == TEXT.replace('"127.0.0.2"\n', f'"127.0.0.2"\n{table}')
    assert [b.name for b in table_blocks(new) if b.section == "trunks"] == ["a", "b", "c"]


def test_add_to_a_file_without_the_section_appends_at_the_end() -> None:
    new = add_table('[general]\nlog_level = "info"', "partners", {"name": "p", "api_key": "k"})
    assert new == '[general]\nlog_level = "info"\n\n[[partners]]\nname = "p"\napi_key = "k"\n'
    assert parse_config(new, source="f").partners[0].api_key == "k"


def test_set_changes_only_the_named_table() -> None:
    new = set_table(TEXT, "trunks", "a", {"port": 5090, "host": "127.0.0.9"})
    assert new == TEXT.replace(
        '"127.0.0.1"\ncodecs = [\n  "PCMA",\n]\n',
        ('"127.0.0.9"\ncodecs = [\n  "PCMA",\n]\nport = 5090\n'),
    )
    assert set_table(TEXT, "trunks", "zz", {"port": 1}) is None
    assert set_table(TEXT, "partners", "a", {"port": 1}) is None


def test_remove_takes_the_table_and_its_comment() -> None:
    new = remove_table(TEXT, "trunks", "b")
    assert new == TEXT.replace('# second carrier\n[[trunks]]\nname = "b"\nhost = "127.0.0.2"\n', "")
    assert remove_table(TEXT, "trunks", "zz") is None


def test_assignments_are_toml_values_or_plain_strings() -> None:
    assert parse_assignments(
        ["options_ping=true", "billing_increment=[6, 6]", "resolve=rfc3263", 'add_prefix="00"']
    ) == {
        "options_ping": True,
        "billing_increment": [6, 6],
        "resolve": "rfc3263",
        "add_prefix": "00",
    }
    with pytest.raises(ConfigEditError, match="write KEY=VALUE"):
        parse_assignments(["options_ping"])
    with pytest.raises(ConfigEditError, match="given twice"):
        parse_assignments(["port=1", "port=2"])


CONFIG = """\
# operator note
[general]
var_dir = "{var}"

[[trunks]]
name = "a"
host = "127.0.0.1"
"""


class _FailingReloader:
    """Stands in for the gateway's Reloader: its reload refuses, as a CallCore that cannot be
    built from a checked config would."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.gateway = self
        self.config = parse_config(path.read_text(), source=str(path))

    async def reload(self) -> Any:
        raise ReloadRefused(f"{self.path}: cannot apply: no sockets for that")


async def test_a_failed_reload_puts_the_file_back(tmp_path: Path) -> None:
    path = tmp_path / "edgegw.toml"
    path.write_text(CONFIG.format(var=tmp_path))
    os.chmod(path, 0o640)
    before = path.read_bytes()
    editor = ConfigEditor(cast(Reloader, _FailingReloader(path)))
    with pytest.raises(
        ConfigEditError, match=r"cannot apply: no sockets for that; .* was put back"
    ):
        await editor.trunk_add({"name": "b", "fields": {"host": "127.0.0.2"}})
    assert path.read_bytes() == before
    assert (tmp_path / "edgegw.toml.bak").read_bytes() == before
    assert path.stat().st_mode & 0o777 == 0o640
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


async def test_pending_edits_in_the_file_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "edgegw.toml"
    path.write_text(CONFIG.format(var=tmp_path))
    editor = ConfigEditor(cast(Reloader, _FailingReloader(path)))
    path.write_text(CONFIG.format(var=tmp_path) + '\n[sip]\nrealm = "other"\n')
    before = path.read_bytes()
    with pytest.raises(ConfigEditError, match=r"has changes the gateway has not applied \(sip"):
        await editor.trunk_remove({"name": "a"})
    assert path.read_bytes() == before
    assert not (tmp_path / "edgegw.toml.bak").exists()
