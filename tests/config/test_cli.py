"""Every CLI refuses a bad flag with one line and exit code 2 (config.cli), before any work starts."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from config.cli import CliParser, at_least

ROOT = Path(__file__).resolve().parents[2]


def test_a_bad_flag_is_one_line_naming_the_help(capsys: pytest.CaptureFixture) -> None:
    p = CliParser(prog="python -m x")
    p.add_argument("--n", type=at_least(1))
    p.add_argument("--split", choices=["train", "val"])
    for argv, expected in (
        (["--n", "0"], "argument --n: must be at least 1, got 0"),
        (["--n", "two"], "argument --n: expected an integer, got 'two'"),
        (["--split", "bogus"], "argument --split: invalid choice"),
        (["--nope"], "unrecognized arguments: --nope"),
    ):
        with pytest.raises(SystemExit) as exit_:
            p.parse_args(argv)
        err = capsys.readouterr().err
        assert exit_.value.code == 2
        assert err.count("\n") == 1 and err.startswith("python -m x: error: ") and expected in err
        assert err.rstrip().endswith("(see python -m x --help)")
    assert p.parse_args(["--n", "3"]).n == 3


def test_sub_parsers_inherit_the_one_line_errors() -> None:
    p = CliParser(prog="tool")
    sub = p.add_subparsers(dest="cmd")
    assert isinstance(sub.add_parser("verify"), CliParser)
    assert not isinstance(argparse.ArgumentParser(), CliParser)


@pytest.mark.parametrize(
    "argv",
    [
        ["eval.vis.video", "somerun", "--split", "bogus"],
        ["eval.vis.image", "somerun", "--num-workers", "-1"],
        ["eval.benchmark", "somerun", "--frames", "x"],
        ["training.train_image", "base_synthetic", "--bogus-flag"],
        ["data.synthetic"],  # --out is required
    ],
)
def test_every_cli_refuses_a_bad_flag_in_one_line(argv: list[str]) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", *argv], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "error:" in proc.stderr and "Traceback" not in proc.stderr
