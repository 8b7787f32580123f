"""What a run's numbers depend on besides its config and data: the code (git commit and local changes)
and the numeric libraries' versions.

A grid reuses a finished run only when its ``code_version`` tag equals this checkout's (see
``tracking.find_reusable``); outside a git checkout the version is ``unknown`` and never reused.

    python -c "from fashion_core.tracking.versions import code_version; print(code_version())"
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parents[2]

UNKNOWN_COMMIT = "unknown"
# Files whose edits change what a run computes; an untracked one makes the checkout dirty.
SOURCE_SUFFIXES = (".py", ".yaml", ".yml", ".toml", ".cfg")
# Libraries whose versions change the numbers a run produces (kernels, initialisation, solvers, RNG streams).
NUMERIC_LIBRARIES = ("torch", "torchvision", "scikit-learn", "numpy")


def _git(*args: str, root: Path | None = None) -> str:
    """stdout of a git command in the project checkout ('' when git is absent or fails)."""
    return subprocess.run(["git", *args], cwd=root or PROJECT_DIR, capture_output=True, text=True, timeout=30).stdout


def untracked_sources(root: Path | None = None) -> list[str]:
    """Untracked, not ignored source files (``SOURCE_SUFFIXES``) of the checkout, sorted relative paths."""
    try:
        names = _git("ls-files", "--others", "--exclude-standard", "-z", root=root).split("\0")
    except (OSError, subprocess.SubprocessError):
        return []
    return sorted(n for n in names if n and Path(n).suffix in SOURCE_SUFFIXES)


def git_commit(root: Path | None = None) -> tuple[str, bool]:
    """(commit sha, dirty) of the project checkout; ('unknown', False) outside git.

    Dirty: a tracked file differs from the commit, or an untracked source file exists (a new
    module changes what runs as much as an edited one).
    """
    try:
        sha = _git("rev-parse", "HEAD", root=root).strip()
        dirty = bool(_git("status", "--porcelain", "--untracked-files=no", root=root).strip())
        if sha and not dirty:
            dirty = bool(untracked_sources(root))
        return (sha or UNKNOWN_COMMIT), dirty
    except (OSError, subprocess.SubprocessError):
        return UNKNOWN_COMMIT, False


def library_versions() -> dict[str, str]:
    """Installed versions of ``NUMERIC_LIBRARIES`` ('absent' for one not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in NUMERIC_LIBRARIES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "absent"
    return out


def code_version(root: Path | None = None) -> str:
    """What a run's numbers depend on besides config and data: ``<commit>[+<changes>]~lib<hash>``, or ``unknown``.

    ``<changes>`` hashes the uncommitted changes (tracked diffs and new source files) when there are
    some: in a working copy with local edits, a run made before an edit must not stand in for the
    code after it. ``lib<hash>`` hashes the versions of ``NUMERIC_LIBRARIES`` (torch,
    torchvision, scikit-learn, numpy): an upgrade changes the numbers as a code change does.
    Outside a git checkout the version is ``unknown``, and an unknown version is never reused.
    """
    root = Path(root or PROJECT_DIR)
    commit, dirty = git_commit(root)
    if commit == UNKNOWN_COMMIT:
        return UNKNOWN_COMMIT

    def git(*args: str) -> bytes:
        try:
            return subprocess.run(["git", *args], cwd=root, capture_output=True, timeout=30).stdout
        except (OSError, subprocess.SubprocessError):
            return b""

    h = hashlib.sha256(git("diff", "HEAD", "--binary"))
    new_files = untracked_sources(root)
    for name in new_files:
        f = root / name
        if f.is_file():
            h.update(name.encode() + b"\0" + f.read_bytes())
    libs = json.dumps(library_versions(), sort_keys=True)
    lib_hash = hashlib.sha256(libs.encode()).hexdigest()[:8]
    base = f"{commit}+{h.hexdigest()[:12]}" if dirty or new_files else commit
    return f"{base}~lib{lib_hash}"


def reusable_version(code: str) -> bool:
    """Whether runs of this code version may stand in for each other: never when it is unknown."""
    return bool(code) and not code.startswith(UNKNOWN_COMMIT)
