"""Retention: the planner on listings, pruning of real directories, the service's task."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from gateway.config import ConfigError, GeneralConfig, parse_config
from gateway.control.retention import (
    DAY,
    MB,
    STALE_TEMP,
    FileEntry,
    Limits,
    Place,
    Retention,
    plan,
    prune_directory,
    rotated_log_names,
)

NOW = 1_700_000_000.0


def entry(name: str, size: int, age_days: float, **kwargs: Any) -> FileEntry:
    return FileEntry(name=name, size=size, mtime=NOW - age_days * DAY, **kwargs)


def names(result: Any) -> list[str]:
    return [d.entry.name for d in result.delete]


# ---- the planner -------------------------------------------------------------------------


def test_over_the_size_limit_the_oldest_go_until_it_fits() -> None:
    listing = [entry("c", 300, 1), entry("a", 100, 3), entry("b", 200, 2), entry("d", 50, 0.5)]
    result = plan(listing, Limits(max_bytes=400), NOW)
    # 650 bytes: a (100) leaves 550, b (200) leaves 350 <= 400; c and d are kept.
    assert names(result) == ["a", "b"]
    assert (result.files, result.total_bytes, result.kept_bytes) == (4, 650, 350)
    assert all(d.reason == f"total over {400 / MB:g} MB" for d in result.delete)


def test_under_the_limits_nothing_goes_and_zero_is_no_limit() -> None:
    listing = [entry("a", 10 * MB, 400), entry("b", 10 * MB, 1)]
    assert names(plan(listing, Limits(max_bytes=20 * MB, max_age=500 * DAY), NOW)) == []
    assert names(plan(listing, Limits(), NOW)) == []


def test_older_than_the_age_limit_go_whatever_the_size() -> None:
    listing = [entry("old", 1, 8), entry("older", 1, 30), entry("new", 1, 6.9)]
    result = plan(listing, Limits(max_bytes=100 * MB, max_age=7 * DAY), NOW)
    assert names(result) == ["older", "old"]
    assert result.delete[0].reason == "older than 7 days"


def test_age_first_then_size_both_limits() -> None:
    listing = [
        entry("expired", 500, 10),
        entry("big-old", 400, 5),
        entry("mid", 300, 3),
        entry("new", 200, 1),
    ]
    result = plan(listing, Limits(max_bytes=600, max_age=7 * DAY), NOW)
    # expired by age (1400 -> 900), then big-old by size (900 -> 500 <= 600).
    assert [(d.entry.name, d.reason.split()[0]) for d in result.delete] == [
        ("expired", "older"),
        ("big-old", "total"),
    ]
    assert result.kept_bytes == 500


def test_a_running_capture_is_kept_but_counts_toward_the_size() -> None:
    listing = [
        entry("running-old.pcap", 900, 30, running=True),
        entry("done-1.pcap", 100, 20),
        entry("done-2.pcap", 100, 1),
    ]
    result = plan(listing, Limits(max_bytes=950, max_age=7 * DAY), NOW)
    # The running file is the oldest and over both limits: it stays; the others make room.
    assert names(result) == ["done-1.pcap", "done-2.pcap"]
    assert result.kept_bytes == 900


def test_files_just_changed_and_fresh_temporary_files_are_kept() -> None:
    just_written = FileEntry("new.pcap", 10 * MB, NOW - 0.5)
    temp = FileEntry(".cdrs.csv.x1.tmp", 10 * MB, NOW - 60)
    stale_temp = FileEntry(".cdrs.csv.x2.tmp", 10 * MB, NOW - STALE_TEMP - 1)
    result = plan([just_written, temp, stale_temp], Limits(max_bytes=MB), NOW)
    assert names(result) == [".cdrs.csv.x2.tmp"]  # a crash's leftover


def test_names_outside_the_directory_and_non_regular_files_are_ignored() -> None:
    listing = [
        entry("../escape", 10 * MB, 100),
        entry("sub/inner", 10 * MB, 100),
        entry("/etc/passwd", 10 * MB, 100),
        entry("..", 10 * MB, 100),
        entry("", 10 * MB, 100),
        entry("link.pcap", 10 * MB, 100, regular=False),
        entry("ok.pcap", 10, 100),
    ]
    result = plan(listing, Limits(max_bytes=1, max_age=DAY), NOW)
    assert names(result) == ["ok.pcap"]
    assert (result.files, result.total_bytes) == (1, 10)


def test_logs_only_rotated_files_never_the_live_one() -> None:
    select = rotated_log_names("edgegw.log")
    listing = [
        entry("edgegw.log", 100, 90),
        entry("edgegw.log.1", 100, 40),
        entry("edgegw.log.12", 100, 31),
        entry("edgegw.log.2", 100, 3),
        entry("edgegw.log.old", 100, 90),
        entry("edgegw.sqlite", 100, 90),
        entry("xedgegw.log.1", 100, 90),
    ]
    result = plan(listing, Limits(max_age=30 * DAY), NOW, keep={"edgegw.log"}, select=select)
    assert sorted(names(result)) == ["edgegw.log.1", "edgegw.log.12"]


def test_the_retention_keys_are_checked() -> None:
    general = GeneralConfig()
    assert (general.capture_max_mb, general.log_max_age_days) == (1024, 30)
    for key in ("log_max_age_days", "capture_max_mb", "capture_max_age_days", "export_max_mb"):
        with pytest.raises(ConfigError) as info:
            parse_config(f"[general]\n{key} = -1\n", source="x.toml")
        assert (info.value.key, info.value.reason) == (
            f"general.{key}",
            "must be 0 (no limit) or more, got -1",
        )
    parsed = parse_config("[general]\nexport_max_age_days = 0\n", source="x.toml")
    assert parsed.general.export_max_age_days == 0


# ---- real directories ----------------------------------------------------------------------


def make(path: Path, size: int, age_days: float, now: float) -> Path:
    path.write_bytes(b"x" * size)
    mtime = now - age_days * DAY
    os.utime(path, (mtime, mtime))
    return path


def test_pruning_a_directory_never_follows_a_symlink_or_enters_a_subdirectory(
    tmp_path: Path,
) -> None:
    now = NOW
    outside = tmp_path / "outside"
    outside.mkdir()
    target = make(outside / "precious.pcap", 4096, 100, now)
    place_dir = tmp_path / "captures"
    place_dir.mkdir()
    (place_dir / "link.pcap").symlink_to(target)
    (place_dir / "dirlink").symlink_to(outside)
    sub = place_dir / "sub"
    sub.mkdir()
    inner = make(sub / "inner.pcap", 4096, 100, now)
    os.utime(sub, (now - 100 * DAY, now - 100 * DAY))
    old = make(place_dir / "old.pcap", 1000, 10, now)
    keep = make(place_dir / "keep.pcap", 1000, 1, now)

    result = prune_directory(Place("captures", place_dir, Limits(max_age=7 * DAY)), now)

    assert [d.entry.name for d in result.deleted] == ["old.pcap"]
    assert (result.files, result.bytes, result.errors) == (1, 1000, ())
    assert not old.exists() and keep.exists()
    assert target.exists() and inner.exists() and sub.is_dir()
    assert (place_dir / "link.pcap").is_symlink() and (place_dir / "dirlink").is_symlink()


def test_a_missing_directory_is_empty_and_an_unreadable_one_is_an_error(tmp_path: Path) -> None:
    result = prune_directory(Place("exports", tmp_path / "none", Limits(max_bytes=1)), NOW)
    assert (result.files, result.bytes, result.deleted, result.errors) == (0, 0, (), ())
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    result = prune_directory(Place("exports", not_a_dir, Limits(max_bytes=1)), NOW)
    assert result.errors == (f"cannot open {not_a_dir}: Not a directory",)


class FakeCaptures:
    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def list(self) -> list[dict[str, Any]]:
        return self.rows


async def test_the_task_prunes_the_three_places_and_reports(tmp_path: Path) -> None:
    now = NOW
    var = tmp_path / "var"
    captures_dir = var / "captures"
    captures_dir.mkdir(parents=True)
    running = make(captures_dir / "running.pcap", 3 * MB, 9, now)
    gone_by_age = make(captures_dir / "aged.pcap", 10, 8, now)
    gone_by_size = make(captures_dir / "a.pcap", MB, 2, now)
    kept = make(captures_dir / "b.pcap", MB // 2, 1, now)
    log_file = var / "edgegw.log"
    live_log = make(log_file, 10, 60, now)
    old_log = make(var / "edgegw.log.1", 10, 31, now)
    new_log = make(var / "edgegw.log.2", 10, 2, now)
    general = GeneralConfig(
        var_dir=str(var),
        log_file=str(log_file),
        log_max_age_days=30,
        capture_max_mb=4,
        capture_max_age_days=7,
    )
    captures = FakeCaptures()
    captures.rows = [
        {"file": str(running), "state": "running"},
        {"file": str(gone_by_size), "state": "stopped"},
    ]
    retention = Retention(lambda: general, var, captures, clock=lambda: now)

    results = await retention.prune()

    assert {r.label for r in results} == {"logs", "captures", "exports"}
    assert not gone_by_age.exists() and not gone_by_size.exists() and not old_log.exists()
    assert running.exists() and kept.exists() and live_log.exists() and new_log.exists()
    assert (var / "exports").is_dir()
    shown = retention.snapshot()
    assert shown["captures"]["files"] == 2
    assert shown["captures"]["mb"] == round((3 * MB + MB // 2) / MB, 3)
    assert shown["exports"] == {
        "dir": str((var / "exports").absolute()),
        "files": 0,
        "mb": 0.0,
        "max_mb": 1024,
        "max_age_days": 90,
    }
    last = shown["last_pruning"]
    assert last["time"] == now and last["deleted"] == 3 and last["errors"] == []
    assert sorted(Path(f).name for f in last["deleted_files"]) == [
        "a.pcap",
        "aged.pcap",
        "edgegw.log.1",
    ]
    assert shown["deleted_total"] == 3

    # The running capture has finished: next pass it is over the age limit and goes.
    captures.rows = []
    await retention.prune()
    assert not running.exists()
    assert retention.snapshot()["deleted_total"] == 4
