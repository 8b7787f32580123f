"""Shared fixtures: a tiny generated catalogue, isolated MLflow / cache folders, and a repository left as found.

Plain helpers live in ``tests/helpers/`` (imported as ``tests.helpers.<module>``); no test module imports another.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.helpers.data import make_dataset, real_data_path
from tests.helpers.store import isolate, module_store
from tests.helpers.zeroshot import concept_store, make_zs_dataset

ROOT = Path(__file__).resolve().parents[1]
# What a run may leave in the checkout: the caches of Python, pytest and the lint tools (a `make lint` alongside).
RUN_LITTER = {"__pycache__", ".pytest_cache", ".ruff_cache", ".mypy_cache"}


@pytest.fixture(scope="session")
def dataset(tmp_path_factory) -> Path:
    """A generated dataset folder, shared by the session (read-only for tests)."""
    return make_dataset(tmp_path_factory.mktemp("data") / "fashion-mini")


@pytest.fixture(scope="session", autouse=True)
def own_cache_per_xdist_worker():
    """Under pytest-xdist (``-n 2``) each worker gets a cache folder of its own, below the configured one: two
    workers building the image cache of the same generated catalogue at once would write the same files."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if not worker:
        yield
        return
    from fashion_core.data.sources import cache_root

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FASHION_CACHE", str(cache_root() / f"xdist-{worker}"))
        yield


@pytest.fixture()
def isolated(tmp_path, monkeypatch) -> Path:
    """An MLflow sqlite store, cache folder and working directory of the test's own."""
    isolate(tmp_path, monkeypatch)
    yield tmp_path
    import mlflow

    while mlflow.active_run():
        mlflow.end_run()


@pytest.fixture(scope="module")
def isolated_module(tmp_path_factory) -> Path:
    """Like ``isolated``, shared by one test module (for expensive runs several tests read)."""
    with module_store(tmp_path_factory) as (path, _):
        yield path


@pytest.fixture()
def real_data() -> str:
    """The real dataset, or skip."""
    p = real_data_path()
    if p is None:
        pytest.skip("the real dataset is absent (set FASHION_DATA or provide ../shared/data)")
    return p


# ---------------------------------------------------------------- the checkout stays as it was


def _allowed_in_checkout() -> set[str]:
    """Top-level names a run may add: the caches, and the configured image cache where CI puts it inside."""
    allowed = set(RUN_LITTER)
    cache = os.environ.get("FASHION_CACHE")
    if cache:
        try:
            allowed.add(Path(cache).resolve().relative_to(ROOT).parts[0])
        except (ValueError, IndexError):
            pass  # outside the checkout
    return allowed


def _git_status() -> set[str] | None:
    """The new paths (untracked or ignored) that ``git status`` lists in the checkout; None outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--ignored", "--untracked-files=all"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    allowed = _allowed_in_checkout()
    lines = set()
    for line in out.stdout.splitlines():
        if line[:2] not in ("??", "!!"):
            continue  # a tracked file changed: the developer may edit while the tests run
        parts = Path(line[3:].strip('"')).parts
        if parts and not (allowed & set(parts)) and not parts[-1].endswith(".pyc"):
            lines.add(line)
    return lines


@pytest.fixture(autouse=True)
def writes_nothing_at_the_checkouts_top(request):
    """A test that leaves a new file or folder at the top of the checkout (mlflow.db, mlruns/, reports/, optuna.db,
    a cache) fails by name: tests work in their own temporary folders."""
    before = set(os.listdir(ROOT))
    yield
    new = set(os.listdir(ROOT)) - before - _allowed_in_checkout()
    if new:
        pytest.fail(
            f"{request.node.nodeid} wrote {sorted(new)} into the checkout {ROOT}: use the `isolated` "
            f"fixture or tmp_path",
            pytrace=False,
        )


@pytest.fixture(scope="session", autouse=True)
def writes_nothing_in_the_checkout():
    """After the whole run (module fixtures' teardowns included), ``git status`` lists no new file, ignored ones too."""
    before = _git_status()
    yield
    after = _git_status()
    if before is not None and after is not None and after - before:
        pytest.fail(f"the test run changed the checkout {ROOT}: {sorted(after - before)[:20]}", pytrace=False)


@pytest.fixture(scope="module")
def zs_data(tmp_path_factory) -> Path:
    """A catalogue with unseen classes (``tests.helpers.zeroshot.make_zs_dataset``), one per test module."""
    return make_zs_dataset(tmp_path_factory.mktemp("zs") / "catalogue")


@pytest.fixture(scope="module")
def zs_store(tmp_path_factory):
    """The module's store, with a tiny stand-in for the packaged sentence encoder."""
    with concept_store(tmp_path_factory, "zs-store") as path:
        yield path
