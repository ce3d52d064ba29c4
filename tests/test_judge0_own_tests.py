"""The judge0 client's own tests, unmodified, pass against DeepExec's Judge0 CE API.

Its source distribution on PyPI carries its ``tests/`` (the wheel does not): ``scripts/setup.sh``
fetches it with ``pip download --no-binary :all: --no-deps judge0==0.0.8`` into
``.tools/judge0-sdist``. They run here in their own pytest process against a real server, with
the ``ce_client`` fixture the suite expects (the sdist ships no conftest) built, as its docs say,
from ``JUDGE0_CE_ENDPOINT``. Of its five files, ``test_submission.py`` and
``test_api_test_cases.py`` are the ones that talk to a Judge0 CE server; ``test_clients.py``,
``test_headers.py`` and ``test_api.py`` build clients of Judge0's cloud (RapidAPI, ATD, Sulu) and
need its API keys, so they are not run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.serverproc import ServerProcess

ROOT = Path(__file__).resolve().parent.parent
SDIST_TESTS = ROOT / ".tools" / "judge0-sdist" / "judge0-0.0.8" / "tests"
THEIR_FILES = ("test_submission.py", "test_api_test_cases.py")

CONFTEST = """
import os

import judge0
import pytest


@pytest.fixture(scope="session")
def ce_client():
    return judge0.Client(
        os.environ["JUDGE0_CE_ENDPOINT"], {"X-Auth-Token": os.environ["JUDGE0_CE_AUTH_TOKEN"]}
    )
"""

pytestmark = [
    pytest.mark.timeout(600),
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="needs bubblewrap"),
    pytest.mark.skipif(
        not SDIST_TESTS.is_dir(), reason="the judge0 sdist's tests (scripts/setup.sh fetches them)"
    ),
]


def test_the_judge0_clients_own_tests_pass_against_deepexec(
    server: ServerProcess, tmp_path: Path
) -> None:
    for name in THEIR_FILES:
        shutil.copy(SDIST_TESTS / name, tmp_path / name)
    (tmp_path / "conftest.py").write_text(CONFTEST)
    report = tmp_path / "report.xml"
    env = dict(os.environ, JUDGE0_CE_ENDPOINT=server.base_url, JUDGE0_CE_AUTH_TOKEN=server.api_key)
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir",
         str(tmp_path), f"--junitxml={report}", *THEIR_FILES],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=540, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-8000:] + run.stderr[-2000:]
    cases = ET.parse(report).getroot().iter("testcase")
    outcomes = {
        f"{case.get('classname')}::{case.get('name')}": [child.tag for child in case]
        for case in cases
    }
    # Every test ran and passed: none skipped, none failed (an empty list: passed).
    assert len(outcomes) >= 45, outcomes
    assert all(not tags for tags in outcomes.values()), outcomes
    # Among them the ones that reach the server: a Java run, an ELF binary (Judge0's
    # "Executable"), waits, and batches of 42 and 84 submissions.
    ran = " ".join(outcomes)
    for name in ("test_language_before_and_after_execution", "test_language_executable",
                 "test_is_done", "test_status_before_and_after_submission",
                 "test_batched_test_cases[42]", "test_batched_test_cases[84]"):  # fmt: skip
        assert name in ran, name
