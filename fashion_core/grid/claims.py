"""Which grid run and which cell runs a grid owns, decided through the tracking store alone.

- **The grid run.** A grid is identified by its key (``grid_key``: experiment, dataset digest, code
  version, the resolved configs, seeds, profile, ``--from``). Rerunning a grid that did not finish
  (killed, crashed and swept, failed) continues its run (``unfinished_grid``), so one command keeps
  one grid run; a run that ``mlflow run`` created for this process cannot be swapped, so there the old
  grid run is linked instead (tags ``continues_grid_run_id`` / ``continued_by``).
- **A cell.** Every cell's run carries its cell key (``cell_key``: config hash, digest and code). A
  cell is claimed by creating its run, then looking again (``claim_cell``): the oldest live claim wins;
  a later one is deleted and its grid waits for the winner (``holder_state``), reuses its FINISHED run,
  or claims the cell again when the winner ends otherwise or its heartbeat goes stale. So two identical
  grids on one store run each cell once. Liveness is ``heartbeat.verdict``; clocks are assumed in step
  (NTP) across machines, as for any heartbeat.

No lock, server or queue: only run tags, run creation order and run states.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from fashion_core.tracking import heartbeat
from fashion_core.tracking.versions import reusable_version

logger = logging.getLogger(__name__)

GRID_KEY_TAG, CELL_KEY_TAG, SESSION_TAG = "grid_key", "cell_key", "grid_session"
RESTARTS_TAG, CONTINUES_TAG, CONTINUED_BY_TAG = "grid_restarts", "continues_grid_run_id", "continued_by"


def _digest(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def grid_key(
    task_hashes: Sequence[str],
    digest: str,
    code: str,
    profile: str,
    seeds: Sequence[int],
    source: str | None,
    reuse: bool,
) -> str:
    """16 hex digits naming one grid command: the same command on the same data and code gives the same key."""
    return _digest(
        {
            "tasks": list(task_hashes),
            "digest": digest,
            "code": code,
            "profile": profile,
            "seeds": list(seeds),
            "from": source or "",
            "reuse": reuse,
        }
    )


def cell_key(cfg_hash: str, digest: str, code: str, session: str) -> str:
    """16 hex digits naming a cell's work; grids share a cell only when its code version is known."""
    return _digest(
        {"config_hash": cfg_hash, "digest": digest, "code": code, "session": "" if reusable_version(code) else session}
    )


def _client():
    from mlflow.tracking import MlflowClient

    return MlflowClient()


def unfinished_grid(experiment_id: str, key: str):
    """The newest grid run of this key that ended without finishing (KILLED or FAILED), or None."""
    runs = _client().search_runs(
        [experiment_id],
        f"tags.{GRID_KEY_TAG} = '{key}' and tags.stage = 'grid'",
        order_by=["attributes.start_time DESC"],
        max_results=100,
    )
    ended = [r for r in runs if r.info.status != "RUNNING" and CONTINUED_BY_TAG not in r.data.tags]
    return ended[0] if ended and ended[0].info.status in ("KILLED", "FAILED") else None


def reopen(run_id: str, tags: dict[str, str]) -> int:
    """Make an ended grid run RUNNING again with fresh tags; returns how often it has been restarted."""
    client = _client()
    run = client.get_run(run_id)
    restarts = int(run.data.tags.get(RESTARTS_TAG, "0") or 0) + 1
    reason = run.data.tags.get(heartbeat.REASON_TAG)
    if reason is not None:  # it is no longer killed; what ended it stays in the note
        client.delete_tag(run_id, heartbeat.REASON_TAG)
    client.update_run(run_id, status="RUNNING")
    for k, v in {**tags, RESTARTS_TAG: str(restarts)}.items():
        client.set_tag(run_id, k, v)
    return restarts


def finished_in(experiment_id: str, cfg_hash: str, grid_ids: Sequence[str]):
    """A FINISHED run of this config made by one of these grid runs (a restarted grid's own cell), or None."""
    client = _client()
    for gid in grid_ids:
        runs = client.search_runs(
            [experiment_id],
            (f"tags.config_hash = '{cfg_hash}' and tags.grid_run_id = '{gid}' and attributes.status = 'FINISHED'"),
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        if runs:
            return runs[0]
    return None


def live_claims(experiment_id: str, key: str) -> list:
    """The RUNNING runs of a cell key whose process is alive, oldest first; dead ones are ended KILLED on the way
    (a warning each)."""
    client = _client()
    alive = []
    for run in client.search_runs(
        [experiment_id], f"tags.{CELL_KEY_TAG} = '{key}' and attributes.status = 'RUNNING'", max_results=1000
    ):
        reason = heartbeat.verdict(run)
        if reason is None:
            alive.append(run)
            continue
        try:
            heartbeat.end_dead(client, run, reason)
        except Exception:  # noqa: BLE001 - ended by another grid meanwhile
            continue
        logger.warning(f"  ended run {run.info.run_id} KILLED: {reason}")
    return sorted(alive, key=lambda r: (r.info.start_time, r.info.run_id))


# How long a claimant waits before it reads the claims of its cell: longer than a store takes to write a run it
# has stamped (milliseconds on sqlite, a request on a tracking server).
CLAIM_SETTLE_S = 0.5


def claim_cell(experiment_id: str, key: str, create: Callable[[], str]) -> tuple[str | None, str | None]:
    """Claim a cell: ``(run_id, None)`` when this process runs it in the run ``create`` made, else
    ``(None, holder)``: the run of another live grid that runs it now.

    Every claimant, after a short wait, reads all live claims of the key and takes the oldest, by (start time,
    run id), as the winner, so they all agree on one. The wait covers a claim whose start time was stamped before
    another's but written after it (two grids a few milliseconds apart); a claim made after the wait sees the
    winner and loses.
    """
    held = live_claims(experiment_id, key)
    if held:
        return None, held[0].info.run_id
    mine = create()
    time.sleep(CLAIM_SETTLE_S)
    client = _client()
    claims = live_claims(experiment_id, key)
    winner = min(claims, key=lambda r: (r.info.start_time, r.info.run_id), default=None)
    if winner is None or winner.info.run_id == mine:
        return mine, None
    client.delete_run(mine)
    return None, winner.info.run_id


def holder_state(run_id: str) -> str:
    """What became of the run a waiting cell waits for: ``finished``, ``running`` or ``gone`` (claim again)."""
    client = _client()
    try:
        run = client.get_run(run_id)
    except Exception:  # noqa: BLE001 - deleted for good
        return "gone"
    if run.info.lifecycle_stage != "active":
        return "gone"
    if run.info.status == "FINISHED":
        return "finished"
    if run.info.status != "RUNNING":
        return "gone"
    reason = heartbeat.verdict(run)
    if reason is None:
        return "running"
    try:
        heartbeat.end_dead(client, run, reason)
        logger.warning(f"  ended run {run_id} KILLED: {reason}")
    except Exception:  # noqa: BLE001 - ended meanwhile
        pass
    return "gone"
