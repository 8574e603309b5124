"""Atomic directory writes: stage in a temp dir beside the target, then rename into place."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def staging_dir(target: Path) -> Path:
    """A fresh temp dir next to `target` (same filesystem, so the final rename is atomic), with
    the permissions a plain `mkdir` would give (mkdtemp's are owner-only)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)
    return tmp
