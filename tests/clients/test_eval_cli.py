"""The `quietstar eval` command: a real HTTP run against a local fake server, the endpoint-down
and wrong-model messages, usage errors, the report PNG, and the import layering."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from clients.__main__ import main
from tests.clients.eval_fakes import FakeEndpoint, free_port, live_server

REPO = Path(__file__).resolve().parents[2]


def test_cli_run_over_real_http(
    fake: FakeEndpoint, csqa_file: Path, tmp_path: Path, capsys
) -> None:
    fake.reply = lambda prompt, body: " B\n"
    out = tmp_path / "run"
    with live_server(fake) as url:
        argv = ["csqa", "--base-url", url, "--data-file", str(csqa_file), "--out", str(out)]
        assert main(argv + ["--thoughts", "on"]) == 0
        assert main(argv + ["--thoughts", "on"]) == 0  # a rerun resumes: nothing left to do
    assert len(fake.requests) == 2
    assert fake.requests[0][1]["thoughts"] == {"enabled": True, "include": True}
    table = capsys.readouterr().out
    assert "| csqa | direct | thoughts=on | fake-model | 2 | 50.0% |" in table
    assert json.loads((out / "summary.json").read_text())["n_new"] == 0
    assert main(["report", str(out)]) == 0  # a real run folder plots too
    assert (out / "accuracy_vs_thought_tokens.png").stat().st_size > 10_000


def test_endpoint_down_is_one_clear_line(gsm8k_file: Path, capsys) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    assert main(["gsm8k", "--base-url", url, "--data-file", str(gsm8k_file)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("quietstar eval: error: cannot connect to " + url)
    assert "is the server running?" in err[0]


def test_wrong_model_exits_2(fake: FakeEndpoint, gsm8k_file: Path, capsys) -> None:
    with live_server(fake) as url:
        code = main(["gsm8k", "--base-url", url, "--model", "typo", "--data-file", str(gsm8k_file)])
    assert code == 2
    assert "model 'typo' is not served" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["gsm8k", "--protocol", "loglik"], "only for csqa"),
        (["csqa", "--thought-tokens", "4,x"], "neither an integer >= 0"),
        (["csqa", "--thought-content", "model,shuffled"], "'shuffled' is not one of"),
        (["csqa", "--thoughts", "off", "--thought-content", "random"], "needs --thoughts on"),
        (["csqa", "--thoughts", "maybe"], "expected 'on' or 'off'"),
        (["csqa", "--thoughts", "off", "--thought-tokens", "4"], "contradicts"),
    ],
)
def test_usage_errors(argv: list[str], message: str, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2 and message in capsys.readouterr().err


def _summary(
    folder: Path, thoughts: bool | None, tokens: int | None, accuracy: float, content="model"
) -> None:
    folder.mkdir(parents=True)
    label = {None: "thoughts=default", False: "thoughts=off"}.get(
        thoughts, f"thoughts=on,tokens={tokens}"
    )
    summary = {
        "task": "gsm8k", "protocol": "direct", "model": "m", "label": label, "thoughts": thoughts,
        "thought_tokens": tokens, "thought_content": content, "n": 100, "accuracy": accuracy,
        "ci95": [accuracy - 0.08, accuracy + 0.09], "no_answer": 0,
    }  # fmt: skip
    (folder / "summary.json").write_text(json.dumps(summary))


def test_report_png(tmp_path: Path, capsys) -> None:
    sweep = tmp_path / "sweep"
    _summary(sweep / "thoughts-off", False, None, 0.06)
    for tokens, accuracy in ((0, 0.07), (2, 0.08), (8, 0.11), (4, 0.09)):
        _summary(sweep / f"thoughts-{tokens}", True, tokens, accuracy)
    for tokens, accuracy in ((2, 0.06), (8, 0.07)):
        _summary(sweep / f"thoughts-{tokens}-random", True, tokens, accuracy, "random")
    _summary(tmp_path / "plain", None, None, 0.07)
    png = tmp_path / "plot.png"
    assert main(["report", str(sweep), str(tmp_path / "plain"), "--out", str(png)]) == 0
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    out = capsys.readouterr().out
    assert out.count("| gsm8k | direct |") == 8 and str(png) in out
    assert main(["report", str(sweep)]) == 0
    assert (sweep / "accuracy_vs_thought_tokens.png").stat().st_size > 10_000
    assert main(["report", str(tmp_path / "empty")]) == 2


def test_clients_import_nothing_from_the_project() -> None:
    code = (
        "import sys, clients, clients.__main__, clients.runner, clients.report\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'quietstar', 'server', 'training', 'benchmarks'})\n"
        "heavy = sorted(m for m in ('datasets', 'matplotlib', 'torch') if m in sys.modules)\n"
        "print(bad, heavy)\n"
        "sys.exit(1 if bad or heavy else 0)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
