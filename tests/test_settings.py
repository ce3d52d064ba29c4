"""Settings from ``DEEPEXEC_*`` variables: each parser of a variable's text, and the error a
bad value gives (the variable's name and what is wrong). More cases in test_decisions.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from deepexec_server.settings import Settings, SettingsError


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("true", True), ("1", True), ("yes", True), ("on", True),
     ("false", False), ("0", False), ("no", False), ("off", False)],
)  # fmt: skip
def test_booleans_read_the_usual_words(raw: str, expected: bool) -> None:
    assert Settings.from_env({"DEEPEXEC_ALLOW_NETWORK": raw}).allow_network is expected


def test_paths_expand_the_home_directory() -> None:
    s = Settings.from_env({"DEEPEXEC_DATA_DIR": "~/dx-data", "DEEPEXEC_CREDENTIALS_FILE": "~/c"})
    assert s.data_dir == Path.home() / "dx-data"
    assert s.credentials_file == Path.home() / "c"


def test_an_empty_variable_is_unset() -> None:
    assert Settings.from_env({"DEEPEXEC_PORT": "", "DEEPEXEC_HOST": ""}) == Settings()


def test_concurrency_pairs_merge_over_the_default_job_types() -> None:
    s = Settings.from_env({"DEEPEXEC_CONCURRENCY": "text_generation=3, other=2"})
    assert s.concurrency == {"code_execution": 2, "text_generation": 3, "other": 2}


def test_settings_built_directly_ignore_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEEPEXEC_PORT", "9999")
    assert Settings().port == 8765
    assert Settings.from_env().port == 9999


def test_a_flag_wins_over_its_variable_and_is_named_when_wrong() -> None:
    env = {"DEEPEXEC_PORT": "eighty"}
    assert Settings.from_env(env, port=1234).port == 1234
    with pytest.raises(SettingsError, match=r"^concurrency: expected 'name=N"):
        Settings.from_env({}, concurrency="code_execution")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DEEPEXEC_PORT": "eighty"}, r"^DEEPEXEC_PORT: .*valid integer.*'eighty'"),
        ({"DEEPEXEC_LEASE_SECONDS": "soon"}, r"^DEEPEXEC_LEASE_SECONDS: .*valid number.*'soon'"),
        ({"DEEPEXEC_ALLOW_NETWORK": "maybe"}, r"^DEEPEXEC_ALLOW_NETWORK: .*boolean.*'maybe'"),
        ({"DEEPEXEC_CONCURRENCY": "code_execution"}, r"^DEEPEXEC_CONCURRENCY: expected 'name=N"),
        ({"DEEPEXEC_CODE_LIMITS_DEFAULT": "x=5"}, r"^DEEPEXEC_CODE_LIMITS_DEFAULT: unknown name"),
        ({"DEEPEXEC_RESULT_RETENTION": "soon"}, r"^DEEPEXEC_RESULT_RETENTION: expected a duration"),
        ({"DEEPEXEC_TENANT_RESULT_BYTES": "x"}, r"^DEEPEXEC_TENANT_RESULT_BYTES: expected a size"),
        ({"DEEPEXEC_MAX_CONNECTIONS": "0"}, r"^max_connections must be >= 1, got 0$"),
    ],
)  # fmt: skip
def test_a_bad_value_names_its_variable_and_what_is_wrong(
    env: dict[str, str], message: str
) -> None:
    with pytest.raises(SettingsError, match=message):
        Settings.from_env(env)
