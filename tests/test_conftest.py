"""The test suite's own rules (tests/conftest.py): every test that starts the command line
carries the ``cli`` marker, so that the quick loop ``pytest -m "not slow and not cli"`` leaves
it out; the guard that enforces it tells the command line from other processes."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import CLI_STARTS, ROOT, starts_the_command_line

PY = sys.executable


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([PY, "-m", "noisybench", "experiment=quickstart"], True),
        ([PY, "-m", "noisybench.report", "runs/"], True),
        ([PY, "-m", "torch.distributed.run", "--nproc_per_node=2", "x.py"], True),
        (["torchrun", "--nproc_per_node=2", "-m", "noisybench"], True),
        ([PY, str(ROOT / "tests" / "_ddp_worker.py"), "/tmp/x", "spec"], True),
        ([PY, "-m", "pip", "wheel", "-w", "/tmp/w", str(ROOT)], True),
        ("python3 -m noisybench --help", True),
        ([PY, "-c", "print('x')"], False),
        (["git", "-C", str(ROOT), "rev-parse", "HEAD"], False),
        (["head", "-1"], False),
        ([PY, "/venv/lib/site-packages/torch/_inductor/compile_worker/__main__.py"], False),
    ],
)
def test_what_counts_as_the_command_line(argv: list[str] | str, expected: bool) -> None:
    assert starts_the_command_line(argv) is expected


def test_an_unmarked_test_cannot_start_the_command_line(request: pytest.FixtureRequest) -> None:
    with pytest.raises(RuntimeError, match=r"not marked @pytest\.mark\.cli"):
        subprocess.run([PY, "-m", "noisybench", "--help"], capture_output=True, timeout=60)
    started = request.node.stash[CLI_STARTS]
    assert len(started) == 1 and "noisybench" in started[0]
    started.clear()  # the guard would otherwise fail this test at teardown, as it should
    # other processes stay allowed
    assert subprocess.run(["true"], check=False).returncode == 0


def test_users_of_the_cli_fixture_are_marked(cli: object, request: pytest.FixtureRequest) -> None:
    assert request.node.get_closest_marker("cli") is not None


@pytest.mark.cli
def test_a_marked_test_may_start_it(request: pytest.FixtureRequest) -> None:
    proc = subprocess.run(
        [PY, "-c", "import sys; print(sys.argv[1:])", "-m", "noisybench"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0 and "noisybench" in proc.stdout
