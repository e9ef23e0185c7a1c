"""CI's own scripts: a CI run writes its results where git ignores them, and the committed
reports are written only by the targets meant to refresh them (``make bench``, ``make
chaos``)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(
    not (ROOT / ".git").exists() or shutil.which("make") is None or shutil.which("git") is None,
    reason="needs the git checkout and make (not in an sdist)",
)


def _commands(target: str) -> list[str]:
    """What ``make TARGET`` would run (``make -n``), one command a line."""
    proc = subprocess.run(
        ["make", "-n", "--no-print-directory", target],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return proc.stdout.replace("\\\n", " ").splitlines()


def _ignored(path: str) -> bool:
    proc = subprocess.run(
        ["git", "check-ignore", "-q", "--no-index", path], cwd=ROOT, timeout=30, check=False
    )
    return proc.returncode == 0


def test_ci_runs_the_targets_that_write_only_ignored_results() -> None:
    run = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    targets = re.findall(r"\bmake ([\w-]+)", run)
    wanted = {
        "test",
        "test-lowest-deps",
        "test-lowest-python",
        "chaos-ci",
        "bench-ci",
        "bench-scale-ci",
    }
    assert wanted <= set(targets)
    assert not {"bench", "chaos", "lock", "bench-scale"} & set(targets)  # write tracked files

    (bench,) = [c for c in _commands("bench-ci") if "benchmarks.run" in c]
    out = re.search(r"--out (\S+)", bench)
    assert out is not None and _ignored(out.group(1) + "/latest.json")
    (chaos,) = [c for c in _commands("chaos-ci") if "-m chaos" in c]
    out = re.search(r"--out (\S+)", chaos)
    assert out is not None and _ignored("chaos/results/" + out.group(1))
    (scale,) = [c for c in _commands("bench-scale-ci") if "benchmarks.scale" in c]
    out = re.search(r"--out (\S+)", scale)
    assert out is not None and _ignored(out.group(1) + "/scale.json") and "--gate" in scale


def test_the_committed_reports_are_tracked_and_refreshed_by_their_own_targets() -> None:
    (bench,) = [c for c in _commands("bench") if "benchmarks.run" in c]
    assert "--out" not in bench  # the default: benchmarks/results/, the committed report
    (chaos,) = [c for c in _commands("chaos") if "-m chaos" in c]
    assert "--out" not in chaos  # chaos/results/latest.json
    (scale,) = [c for c in _commands("bench-scale") if "benchmarks.scale" in c]
    assert "--out" not in scale  # benchmarks/results/scale.md
    for path in (
        "benchmarks/results/latest.md",
        "chaos/results/latest.json",
        "benchmarks/results/scale.md",
    ):
        assert not _ignored(path)
