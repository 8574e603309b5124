"""`server.teardown.Teardown`: stopping runs under one deadline, so a step that hangs ends the
process with status 1 and a log line naming the step, instead of a server that never exits."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_teardown(body: str) -> tuple[subprocess.CompletedProcess, float]:
    script = f"import time\nfrom server.teardown import Teardown\n{body}"
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    return done, time.monotonic() - start


def test_a_step_past_the_deadline_ends_the_process_naming_the_step():
    done, _ = run_teardown(
        "t = Teardown(1.0)\n"
        "t.step('quick', time.sleep, 0.1)\n"
        "t.step('stopping Ray', time.sleep, 60)\n"
        "print('not reached')\n"
    )
    assert done.returncode == 1, done
    assert "waiting on stopping Ray" in done.stderr and "over 1s" in done.stderr, done.stderr
    assert "not reached" not in done.stdout


def test_a_process_that_stops_in_time_exits_normally_and_at_once():
    done, elapsed = run_teardown(
        "t = Teardown(20.0)\n"
        "t.step('quick', time.sleep, 0.2)\n"
        "t.stopped()\n"
        "print('exited normally')\n"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "exited normally" and "waiting on" not in done.stderr
    assert elapsed < 15  # the armed deadline does not hold the exit


def test_it_also_ends_an_exit_that_hangs_with_the_status_of_the_stop():
    last_calls = {"t.waiting_on('a last step')": 1, "t.stopped()": 0}
    for last_call, status in last_calls.items():
        done, elapsed = run_teardown(
            "import threading\n"
            "t = Teardown(1.0)\n"
            "t.step('quick', time.sleep, 0.1)\n"
            f"{last_call}\n"
            "threading.Thread(target=time.sleep, args=(60,)).start()\n"  # not a daemon
        )
        assert done.returncode == status, done
        assert ("a last step" if status else "the interpreter's exit") in done.stderr, done
        assert elapsed < 30
