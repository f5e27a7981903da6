"""Opening the private exhaust's encrypted zips as a person would: with 7-Zip."""

from __future__ import annotations

import subprocess
from pathlib import Path


def seven_zip(archive: Path, password: str, dest: Path) -> subprocess.CompletedProcess[str]:
    """``7z x -p<password>`` (Debian's p7zip-full); a wrong password exits non-zero."""
    return subprocess.run(
        ["7z", "x", "-y", "-bd", f"-p{password}", f"-o{dest}", str(archive)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
