"""Tests of the `[general] checkpoint_interval` key (how often open calls reach the store)."""

from __future__ import annotations

import pytest

from gateway.config import ConfigError, default_config, dump_default_toml, parse_config


def test_default_checkpoint_interval_is_five_seconds() -> None:
    assert parse_config("", source="x.toml").general.checkpoint_interval == 5.0
    assert default_config().general.checkpoint_interval == 5.0
    assert "checkpoint_interval = 5.0" in dump_default_toml()


def test_checkpoint_interval_takes_fractions_and_integers() -> None:
    text = "[general]\ncheckpoint_interval = 0.25\n"
    assert parse_config(text, source="x.toml").general.checkpoint_interval == 0.25
    text = "[general]\ncheckpoint_interval = 2\n"
    assert parse_config(text, source="x.toml").general.checkpoint_interval == 2.0


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("0", "must be a number of seconds greater than 0, got 0.0"),
        ("-1.5", "must be a number of seconds greater than 0, got -1.5"),
        ("nan", "must be a number of seconds greater than 0, got nan"),
        ("inf", "must be a number of seconds greater than 0, got inf"),
        ('"5"', "expected a float, got str"),
    ],
)
def test_bad_checkpoint_interval_names_file_key_and_reason(value: str, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(f"[general]\ncheckpoint_interval = {value}\n", source="x.toml")
    assert str(info.value) == f"x.toml: general.checkpoint_interval: {reason}"
