"""The Optuna storage of a study: sqlite, PostgreSQL or a journal file, opened with heartbeats."""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fashion_core.config.checks import ConfigError

DEFAULT_STORAGE = "sqlite:///optuna.db"


# ---------------------------------------------------------------- storage


@dataclass
class StudyStorage:
    """An opened Optuna storage and what kind it is."""

    url: str
    storage: Any  # optuna.storages.BaseStorage
    kind: str  # "rdb" | "journal"
    journal_path: Path | None = None

    @property
    def display(self) -> str:
        """The URL with any password masked (safe to log)."""
        return mask_url(self.url)

    @property
    def dashboard(self) -> str:
        """The command that browses the study (a journal file by its path; PostgreSQL with its driver named,
        as optuna-dashboard's SQLAlchemy would otherwise look for psycopg 3)."""
        return f"optuna-dashboard {self.journal_path if self.journal_path else mask_url(_with_driver(self.url))}"


def mask_url(url: str) -> str:
    """``postgresql://u:secret@h/db`` -> ``postgresql://u:***@h/db``."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


def _with_driver(url: str) -> str:
    """``postgresql://`` with the PostgreSQL driver that is installed (SQLAlchemy 2.1 assumes psycopg 3;
    the dev extras install psycopg2)."""
    if not url.startswith("postgresql://"):
        return url
    import importlib.util

    for module, dialect in (("psycopg", "postgresql+psycopg"), ("psycopg2", "postgresql+psycopg2")):
        if importlib.util.find_spec(module) is not None:
            return dialect + url[len("postgresql") :]
    raise ConfigError("storage postgresql://...: no PostgreSQL driver; pip install psycopg2-binary (or psycopg)")


def _journal_path(url: str) -> Path | None:
    if url.startswith("journal:"):
        return Path(url[len("journal:") :].removeprefix("//"))
    if "://" not in url and url.endswith((".journal", ".log")):
        return Path(url)
    return None


def check_storage_url(url: str) -> str:
    """The storage kind ("rdb" or "journal") of a URL; anything else is a ConfigError naming the valid forms."""
    journal = _journal_path(url)
    if journal is not None:
        if not str(journal) or str(journal) == ".":
            raise ConfigError(f"storage {url!r}: name the journal file, e.g. journal:optuna.journal")
        return "journal"
    scheme = url.split("://", 1)[0].split("+", 1)[0] if "://" in url else ""
    if scheme not in ("sqlite", "postgresql", "mysql"):
        raise ConfigError(
            f"storage {mask_url(url)!r}: use sqlite:///optuna.db (one machine), "
            "postgresql://user:password@host:5432/db (many machines) or journal:FILE "
            "(many processes on one host)"
        )
    return "rdb"


def open_storage(
    url: str, heartbeat: int = 60, on_dead_trial: Callable[[Any, Any], None] | None = None
) -> StudyStorage:
    """Open an Optuna storage by URL.

    Args:
        url: ``sqlite:///optuna.db`` (one machine), ``postgresql://user:pass@host:5432/db`` (many
            machines), or ``journal:PATH`` / a ``*.journal`` path (many processes on one host).
        heartbeat: RDB storages: seconds between a running trial's heartbeats; a trial silent for
            twice this long is failed and ``on_dead_trial(study, frozen_trial)`` runs.
        on_dead_trial: what to do with such a trial (see ``retry_dead_trial``).
    Returns:
        The StudyStorage.
    """
    import optuna

    kind = check_storage_url(url)
    journal = _journal_path(url)
    if kind == "journal":
        from optuna.storages.journal import JournalFileBackend

        assert journal is not None  # check_storage_url says journal only for a journal path
        if not journal.parent.is_dir():
            raise ConfigError(f"storage {url!r}: folder {str(journal.parent)!r} does not exist")
        return StudyStorage(url, optuna.storages.JournalStorage(JournalFileBackend(str(journal))), "journal", journal)
    scheme = url.split("://", 1)[0].split("+", 1)[0]
    # sqlite: wait for the lock instead of failing; servers: drop connections that died while a trial trained.
    engine = {"connect_args": {"timeout": 60}} if scheme == "sqlite" else {"pool_pre_ping": True}
    rdb_url = _with_driver(url)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats are experimental
        try:
            storage = optuna.storages.RDBStorage(
                rdb_url,
                engine_kwargs=engine,
                heartbeat_interval=heartbeat,
                grace_period=2 * heartbeat,
                heartbeat_stale_trial_callback=on_dead_trial,
            )
        except Exception as e:  # a bad host, database or driver: one line, not a SQLAlchemy traceback
            raise ConfigError(
                f"storage {mask_url(url)!r}: cannot open it ({type(e).__name__}: "
                f"{str(e).strip().splitlines()[0] if str(e).strip() else ''})"
            ) from None
    return StudyStorage(url, storage, "rdb")
