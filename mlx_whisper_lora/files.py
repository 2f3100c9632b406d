"""Writing files so that an interruption or a full disk never leaves a half-written one.

Every file the package writes (adapters, optimizer state, configs, exports, transcripts) goes
through `atomic_write`: the content goes to a temporary file beside the target, which then
replaces it in one rename. The temporary name keeps the target's suffix, because some writers
(mx.save_safetensors) insist on it.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Callable, Union

from .errors import UserError


def temporary_path(path: Path) -> Path:
    return path.with_name(f"{path.stem}.tmp{path.suffix}")


@functools.lru_cache(maxsize=None)
def default_file_mode() -> int:
    """The mode a plain `open(path, "w")` gives a new file: 0o666 less the process's umask."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: Union[str, Path], write: Callable[[Path], None]) -> Path:
    """Call `write(temporary path)`, then move the result onto `path`; on any failure the
    temporary file is removed and the previous `path` stays as it was. The file gets the usual
    mode of a new file, whichever library wrote it (safetensors' writer makes its files 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    try:
        write(tmp)
        if tmp.is_file():
            os.chmod(tmp, default_file_mode())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def check_writable(folder: Union[str, Path], fix: str) -> Path:
    """Create `folder` if needed and write a probe file in it, before any long work whose results
    would go there; a UserError naming the folder and `fix` when that fails."""
    folder = Path(folder)
    created = [p for p in [folder, *folder.parents] if not p.exists()]  # removed again: the run creates them
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UserError(f"cannot write to {folder} ({e.strerror or e}); {fix}") from None
    finally:
        for path in created:  # deepest first
            try:
                path.rmdir()
            except OSError:
                pass
    return folder


def atomic_write_bytes(path: Union[str, Path], data: bytes) -> Path:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    return atomic_write(path, write)


def atomic_write_text(path: Union[str, Path], text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))
