"""run_cli: a user error is one line and exit code 2, also when a data-loader worker raised it."""

from __future__ import annotations

import pytest
from torch.utils.data import DataLoader, Dataset

from config.errors import DataError, run_cli


class _BadFrames(Dataset):
    def __len__(self) -> int:
        return 2

    def __getitem__(self, i: int) -> int:
        raise DataError(
            "datasets/x/data/c/origin/0001.png: cannot read the image (missing or corrupt); re-create it"
        )


def _main(argv: list[str] | None) -> None:
    for _ in DataLoader(_BadFrames(), batch_size=1, num_workers=1):
        pass


def test_an_error_raised_in_a_loader_worker_is_one_line(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_:
        run_cli(_main, [])
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert err == (
        "data error: datasets/x/data/c/origin/0001.png: cannot read the image (missing or corrupt); re-create it\n"
    )
