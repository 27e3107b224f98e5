"""The console of long commands: sparse plain lines off a terminal, a summary per phase,
and library output (warnings, loggers, progress bars, child processes) in the log file."""

from __future__ import annotations

import io
import subprocess
import sys
import textwrap
from pathlib import Path

from entrypoints.console import PlainDisplay, duration, progress_text
from shared.contracts.api import ProgressOut

REPO = Path(__file__).resolve().parents[2]


class Clock:
    """Time that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_plain_lines_are_sparse_and_each_phase_leaves_a_summary() -> None:
    clock, out = Clock(), io.StringIO()
    display = PlainDisplay(out, every_s=10.0, clock=clock)
    display.begin("job", "sft · tiny")
    total, step_s = 300, 2.0  # ten minutes of steps, a look at every step
    for step in range(1, total + 1):
        clock.now += step_s
        display.show(
            "job", ProgressOut(done=step, total=total, unit="steps", detail=f"loss {1 / step:.3g}")
        )
    display.end("job", True, "300 steps, final loss 0.00333")
    lines = out.getvalue().splitlines()
    assert lines[0] == "▶ sft · tiny"
    assert lines[-1] == "✓ sft · tiny — 300 steps, final loss 0.00333 — 10m00s"
    progress = lines[1:-1]
    # One line per tenth of the work at most, none closer than every_s apart.
    assert 5 <= len(progress) <= 10
    done = [int(line.split(": ", 1)[1].split("/")[0]) for line in progress]
    assert all(b - a >= total // 10 for a, b in zip([0, *done], done, strict=False))
    assert (
        progress[0] == "  sft · tiny: 30/300 steps (10%) · loss 0.0333 · 1m00s elapsed, ~9m00s left"
    )


def test_a_phase_without_a_known_total_prints_a_line_a_minute_and_a_failure_shows() -> None:
    clock, out = Clock(), io.StringIO()
    display = PlainDisplay(out, every_s=10.0, clock=clock)
    display.begin("eval", "eval · base")
    for done in range(1, 181):  # three minutes, one more item a second
        clock.now += 1.0
        display.show("eval", ProgressOut(done=done, total=None, unit="items"))
    display.end("eval", False, "failed: out of memory")
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 + 3
    assert lines[-1] == "✗ eval · base — failed: out of memory — 3m00s"


def test_progress_text_names_counts_stage_detail_and_time_left() -> None:
    snap = ProgressOut(
        done=48, total=150, unit="steps", stage="stage 2/2 · 48×4", detail="reward 0.42"
    )
    assert progress_text(snap, 96.0) == (
        "48/150 steps (32%) · stage 2/2 · 48×4 · reward 0.42 · 1m36s elapsed, ~3m24s left"
    )
    assert duration(3725) == "1h02m"


NOISY = textwrap.dedent(
    """
    import logging, subprocess, sys, warnings
    from pathlib import Path
    from tqdm import tqdm
    from entrypoints.console import open_console

    with open_console(Path(sys.argv[1]), verbose=sys.argv[2] == "verbose") as console:
        with console.phase("noisy work") as phase:
            warnings.warn("an old argument", FutureWarning)
            for _ in tqdm(range(3), desc="bar of a library"):
                pass
            logging.getLogger("transformers").warning("a library logger speaks")
            print("printed by a library")
            child = "import sys; print('a child run', file=sys.stderr)"
            subprocess.run([sys.executable, "-c", child])
            phase.figures = "3 things"
    """
)
NOISE = ("FutureWarning", "bar of a library", "a library logger speaks", "printed by a library",
         "a child run")  # fmt: skip


def _noisy(tmp_path: Path, mode: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    log = tmp_path / "logs" / "command.log"
    result = subprocess.run(
        [sys.executable, "-c", NOISY, str(log), mode],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        check=True,
    )
    return result, log


def test_library_output_goes_to_the_log_file_not_the_screen(tmp_path: Path) -> None:
    result, log = _noisy(tmp_path, "quiet")
    screen = (result.stdout + result.stderr).splitlines()
    assert screen[0] == "▶ noisy work"
    assert screen[1].startswith("✓ noisy work — 3 things — ")
    assert screen[2] == f"library output: {log}"
    assert len(screen) == 3
    logged = log.read_text()
    for noise in NOISE:
        assert noise in logged


def test_verbose_keeps_the_raw_output_on_the_screen(tmp_path: Path) -> None:
    result, log = _noisy(tmp_path, "verbose")
    screen = result.stdout + result.stderr
    for noise in NOISE:
        assert noise in screen
    assert "✓ noisy work — 3 things" in screen
    assert not log.exists()
