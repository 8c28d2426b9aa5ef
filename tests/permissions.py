"""Whether ``chmod`` stops this process from writing: not for root (it may write anywhere), unless its
capabilities were dropped (``capsh --drop=cap_dac_override,cap_dac_read_search,cap_fowner -- -c 'pytest ...'``
runs the read-only tests as root too)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest


def _chmod_bites() -> bool:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "ro"
        folder.mkdir()
        folder.chmod(0o555)
        try:
            (folder / "probe").write_bytes(b"")
            return False
        except PermissionError:
            return True
        finally:
            folder.chmod(0o755)


CHMOD_BITES = os.geteuid() != 0 or _chmod_bites()
needs_chmod = pytest.mark.skipif(not CHMOD_BITES, reason="chmod does not stop this user (root) from writing")
