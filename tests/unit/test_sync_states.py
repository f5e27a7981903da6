"""The states file: Python (STATES) or TOML ([[states]]), secrets from env:NAME, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from data_exhaust.sync.states import StatesFileError, load_states


def test_python_states_file_with_secrets_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STATE1_TOKEN", "token-from-env")
    path = tmp_path / "exhaust_config.py"
    path.write_text(
        'STATES = [{"state_id": 1, "state_token": "env:STATE1_TOKEN",\n'
        '           "db_credentials": {"uri": "sqlite:///state1.db"}}]\n'
    )
    (state,) = load_states(path).values()
    assert state.state_id == "1"
    assert state.state_token.get_secret_value() == "token-from-env"
    assert state.x_channel_id == "1"  # the channel defaults to the state id
    assert "token-from-env" not in repr(state)  # secrets never print


def test_toml_states_file(tmp_path: Path) -> None:
    path = tmp_path / "states.toml"
    path.write_text(
        '[[states]]\nstate_id = "up"\nstate_token = "t"\nchannel = "state-up"\n'
        'encryption_key = "zip"\ndb_credentials = { uri = "postgresql+psycopg:///up" }\n'
    )
    state = load_states(path)["up"]
    assert state.x_channel_id == "state-up"
    assert state.encryption_key is not None and state.encryption_key.get_secret_value() == "zip"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("STATES = []", "must define STATES as a non-empty list"),
        ('STATES = [{"state_id": "a"}]', "state #1: state_token: Field required"),
        (
            'STATES = [{"state_id": "a", "state_token": "env:NOT_SET_ANYWHERE",'
            ' "db_credentials": {"uri": "sqlite://"}}]',
            "the variable NOT_SET_ANYWHERE is not set",
        ),
        (
            'STATES = [{"state_id": "a", "state_token": "t", "db_credentials": {"uri": "x"},'
            ' "tokn": 1}]',
            "tokn: Extra inputs are not permitted",
        ),
        (
            'S = {"state_id": "a", "state_token": "t", "db_credentials": {"uri": "x"}}\n'
            "STATES = [S, S]",
            "state_id 'a' appears twice",
        ),
    ],
)
def test_mistakes_are_named_with_where_they_are(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "exhaust_config.py"
    path.write_text(content)
    with pytest.raises(StatesFileError, match=message):
        load_states(path)


def test_a_missing_file_says_how_to_fix_it(tmp_path: Path) -> None:
    with pytest.raises(StatesFileError, match="not found; create it"):
        load_states(tmp_path / "exhaust_config.py")
