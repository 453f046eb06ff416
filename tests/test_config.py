"""Settings from flags and the environment, as `python -m stage` reads them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from stage.config import Settings, as_flags, from_command_line


def test_no_flags_and_no_environment_give_the_documented_defaults():
    assert from_command_line([], env={}) == Settings()


def test_flags_win_over_the_environment_and_lists_come_either_way():
    settings = from_command_line(
        ["--port", "9000", "--ice-address", "10.0.0.1", "--ice-address", "127.0.0.1"],
        env={
            "STAGE_PORT": "9100",
            "STAGE_MAX_VIEWERS": "7",
            "STAGE_DATA": "/srv/stage",
            "STAGE_ICE_ADDRESSES": "192.0.2.1",
            "STAGE_ICE_SERVERS": "stun:stun.example.org, turn:turn.example.org",
            "STAGE_LOG_LEVEL": "debug",
        },
    )
    assert settings.port == 9000
    assert settings.max_viewers == 7
    assert settings.data == Path("/srv/stage")
    assert settings.ice_addresses == ("10.0.0.1", "127.0.0.1")
    assert settings.ice_servers == ("stun:stun.example.org", "turn:turn.example.org")
    assert settings.extra["log_level"] == "DEBUG"


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("STAGE_PORT", "eighty", "STAGE_PORT must be a whole number, not 'eighty'"),
        ("STAGE_VIEW_SECONDS", "3s", "STAGE_VIEW_SECONDS must be a number, not '3s'"),
    ],
)
def test_a_bad_environment_value_is_named_in_a_clear_error(variable, value, says):
    with pytest.raises(ValueError) as raised:
        from_command_line([], env={variable: value})
    assert str(raised.value) == says


def test_the_server_refuses_to_start_with_a_bad_setting_and_says_why(tmp_path):
    env = {"STAGE_PORT": "0", "PATH": "/usr/bin:/bin"}
    ran = subprocess.run(
        [sys.executable, "-m", "stage", "--data", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ran.returncode != 0
    assert "port must be between 1 and 65535" in ran.stderr


def test_help_says_what_each_flag_does():
    ran = subprocess.run(
        [sys.executable, "-m", "stage", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ran.returncode == 0
    text = " ".join(ran.stdout.split())
    for words in (
        "HTTP port (STAGE_PORT; default 8080)",
        "past it new viewers get 503 (STAGE_MAX_VIEWERS; default 200)",
        "repeatable (STAGE_ICE_SERVERS, comma list; default: none)",
    ):
        assert words in text, text


def test_a_worker_gets_the_same_settings_from_the_flags_it_is_given():
    settings = from_command_line(
        ["--port", "9000", "--workers", "2", "--ice-address", "127.0.0.1"],
        env={"STAGE_ICE_SERVERS": "stun:stun.example.org", "STAGE_LOG_LEVEL": "debug"},
    )
    assert settings.workers == 2
    again = from_command_line(as_flags(settings), env={})
    assert again == settings
    assert again.extra == settings.extra


def test_workers_come_from_the_environment_and_must_be_at_least_one():
    assert from_command_line([], env={"STAGE_WORKERS": "3"}).workers == 3
    with pytest.raises(ValueError, match="at least 1 worker"):
        from_command_line(["--workers", "0"], env={})
