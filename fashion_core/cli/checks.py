"""What a command checks before it reads data or opens the store, and the plan a ``--dry-run`` prints.

Every training command picks its profile by machine as the main job does (``auto``: ``default`` on a
CUDA GPU, ``quick`` on CPUs) and prints the choice and the expected time; a model reference
(``--from``, ``--model``) is checked before any data is loaded; a read-only command refuses to look
for runs in a sqlite store that does not exist rather than creating an empty one.

    fashion pretrain --technique focal --dry-run --data ../shared/data/fashion-product-images-small.tar.gz
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any

from fashion_core.config.checks import ConfigError
from fashion_core.config.schema import describe, parse_overrides
from fashion_core.tracking.store import require_store, store_line

logger = logging.getLogger(__name__)

RUN_ID = re.compile(r"^[0-9a-f]{32}$")
REFERENCE_FORMS = "a run id, runs:/<id>, models:/<name>/<version>, models:/<name>@<alias> or latest"


def explicit_device(device: str | None, override: Sequence[str] = (), overrides: str = "") -> str | None:
    """``train.device`` as the user gave it (``--device`` or ``-o train.device=...``), else None."""
    given = parse_overrides(list(override) + overrides.split()).get("train.device")
    return device or (str(given) if given is not None else None)


def check_reference_form(spec: str, option: str) -> None:
    """A model reference that cannot be one is a one-line error before anything is imported or opened."""
    if (
        spec == "latest"
        or RUN_ID.match(spec)
        or re.match(r"^runs:/[0-9a-f]{32}(/|$)", spec)
        or re.match(r"^models:/[^/@]+([/@][^/@]+)?$", spec)
    ):
        return
    raise ConfigError(f"{option} {spec!r}: expected {REFERENCE_FORMS}")


def check_source(spec: str, experiment: str | None = None) -> str:
    """``--from``: the pretrain run behind it (exists, FINISHED, a network), checked before any data is read."""
    check_reference_form(spec, "--from")
    require_store(f"pretrained model for --from {spec}")
    from fashion_core.tracking.references import resolve_source

    return resolve_source(spec, experiment)


def dry_run(
    cfgs: Sequence[Any],
    data: str | None,
    profile: str,
    gpu: bool,
    extra: Sequence[str] = (),
    runs: int | None = None,
) -> None:
    """Print the resolved plan of a training command (the data path checked, nothing opened or run)."""
    from fashion_core.data.sources import check_data_spec
    from fashion_core.grid.costs import PREPARE_MINUTES, task_minutes
    from fashion_core.grid.main_job import log_expected

    spec = check_data_spec(data)
    for cfg in cfgs:
        logger.info("  " + describe(cfg))
    for line in extra:
        logger.info(line)
    n = len(cfgs) if runs is None else runs
    minutes = PREPARE_MINUTES + sum(task_minutes(c, profile, gpu) for c in cfgs) * (n / max(1, len(cfgs)))
    log_expected(minutes, f"{n} run{'s' if n != 1 else ''}", gpu)
    logger.info(
        f"data: {spec} (exists)" if not spec.startswith("kaggle:") else f"data: {spec} (downloaded at run time)"
    )
    logger.info(store_line())
    logger.info("dry run: the config is valid; nothing was run and no store was opened")
