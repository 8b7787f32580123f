"""Where the dataset comes from: a folder, a .zip / .tar.gz archive, or ``kaggle:<owner>/<dataset>``.

``resolve_dataset(spec)`` returns the folder that holds ``styles.csv`` and ``images/``.
Archives are extracted once, safely, into ``<cache>/extracted/<sha256[:16]>/``.

    python -m fashion_core.data.sources /path/to/fashion-product-images-small.tar.gz
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import stat
import sys
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath

logger = logging.getLogger(__name__)

PUBLIC_DATASETS = {
    "small": "paramaggarwal/fashion-product-images-small",
    "full": "paramaggarwal/fashion-product-images-dataset",
}

HOW_TO_GET = (
    "Get the dataset from the public page https://www.kaggle.com/datasets/{small} "
    "(or the full-resolution one, https://www.kaggle.com/datasets/{full}), then pass it with "
    "--data PATH (a folder, .zip or .tar.gz) or set FASHION_DATA=PATH. With Kaggle credentials "
    "(~/.kaggle/kaggle.json or KAGGLE_USERNAME/KAGGLE_KEY) and `pip install kagglehub`, "
    "--data kaggle:{small} downloads it."
).format(**PUBLIC_DATASETS)


class DataSourceError(RuntimeError):
    """The dataset cannot be found, read or extracted; the message says what to do."""


def cache_root() -> Path:
    """Root of every cache (extracted archives, image caches): ``$FASHION_CACHE`` or ``~/.cache/fashion-grid``."""
    return Path(os.environ.get("FASHION_CACHE") or Path.home() / ".cache" / "fashion-grid")


def find_root(folder: Path, max_depth: int = 2) -> Path | None:
    """The folder holding ``styles.csv`` (and usually ``images/``): ``folder`` itself or up to two levels down."""
    candidates = [folder]
    for _ in range(max_depth):
        nxt = []
        for c in candidates:
            if (c / "styles.csv").is_file():
                return c
            try:
                nxt.extend(sorted(p for p in c.iterdir() if p.is_dir() and not p.name.startswith((".", "__MACOSX"))))
            except OSError:
                pass
        candidates = nxt
    for c in candidates:
        if (c / "styles.csv").is_file():
            return c
    return None


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file, remembered per (path, size, mtime) so a 25 GB archive is hashed once."""
    st = path.stat()
    memo = cache_root() / "hashes.json"
    key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    try:
        known = json.loads(memo.read_text())
    except (OSError, ValueError):
        known = {}
    if key in known:
        return known[key]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    digest = h.hexdigest()
    known[key] = digest
    try:
        memo.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(known))
        tmp.replace(memo)
    except OSError:
        pass  # the memo is an optimisation only
    return digest


def _safe_member_path(name: str) -> PurePosixPath:
    """Refuse absolute paths and ``..`` in an archive entry name."""
    p = PurePosixPath(name.replace("\\", "/"))
    if p.is_absolute() or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise DataSourceError(f"refusing archive entry with an absolute path: {name!r}")
    if ".." in p.parts:
        raise DataSourceError(f"refusing archive entry that climbs out with '..': {name!r}")
    return p


def _check_link(member_path: PurePosixPath, target: str, dest_root: Path) -> None:
    """Refuse a link whose target resolves outside the extraction folder."""
    if target.startswith("/") or (len(target) > 1 and target[1] == ":"):
        raise DataSourceError(f"refusing link {str(member_path)!r} -> {target!r}: absolute target")
    resolved = os.path.normpath(os.path.join(dest_root, str(member_path.parent), target))
    if not (resolved == str(dest_root) or resolved.startswith(str(dest_root) + os.sep)):
        raise DataSourceError(f"refusing link {str(member_path)!r} -> {target!r}: it points outside the archive")


def _extract_tar(archive: Path, dest: Path) -> None:
    with tarfile.open(archive, "r:*") as tf:
        members = tf.getmembers()
        for m in members:  # validate everything before writing anything
            p = _safe_member_path(m.name)
            if m.issym():
                _check_link(p, m.linkname, dest)
            elif m.islnk():
                _check_link(PurePosixPath("."), str(_safe_member_path(m.linkname)), dest)
            elif not (m.isfile() or m.isdir()):
                raise DataSourceError(f"refusing archive entry {m.name!r}: not a file, folder or link")
        tf.extractall(dest, filter="data")


def _extract_zip(archive: Path, dest: Path) -> None:
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        for info in infos:
            p = _safe_member_path(info.filename)
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                _check_link(p, zf.read(info).decode("utf-8", "replace"), dest)
        for info in infos:
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                target = zf.read(info).decode("utf-8")
                out = dest / _safe_member_path(info.filename)
                out.parent.mkdir(parents=True, exist_ok=True)
                os.symlink(target, out)
            else:
                zf.extract(info, dest)


def archive_kind(path: Path) -> str | None:
    """'zip', 'tar' or None, by content (not by name)."""
    if zipfile.is_zipfile(path):
        return "zip"
    try:
        if tarfile.is_tarfile(path):
            return "tar"
    except OSError:
        pass
    return None


def extract_archive(archive: Path) -> Path:
    """Extract ``archive`` once into the cache, keyed by its sha256; return the extraction folder."""
    kind = archive_kind(archive)
    if kind is None:
        raise DataSourceError(f"{archive} is neither a folder nor a .zip/.tar.gz archive. {HOW_TO_GET}")
    digest = file_sha256(archive)[:16]
    dest = cache_root() / "extracted" / digest
    if (dest / ".complete").is_file():
        return dest
    tmp = dest.with_name(f"{digest}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    logger.info(f"extracting {archive.name} into {dest} (once) ...")
    try:
        (_extract_zip if kind == "zip" else _extract_tar)(archive, tmp.resolve())
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DataSourceError(f"cannot extract {archive}: {e}") from None
    except DataSourceError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    (tmp / ".complete").write_text(str(archive))
    try:
        tmp.rename(dest)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _kaggle_download(handle: str) -> Path:
    try:
        import kagglehub  # optional extra: pip install 'fashion-grid[kaggle]'
    except ImportError:
        raise DataSourceError(f"--data kaggle:{handle} needs kagglehub (pip install kagglehub). {HOW_TO_GET}") from None
    try:
        return Path(kagglehub.dataset_download(handle))
    except Exception as e:  # network, credentials: say it in one line
        raise DataSourceError(f"kagglehub could not download {handle}: {e}. {HOW_TO_GET}") from None


def check_data_spec(spec: str | os.PathLike | None) -> str:
    """The ``--data`` value (``$FASHION_DATA`` when empty) if it names something; else a DataSourceError that says what to do."""
    spec = str(spec or os.environ.get("FASHION_DATA") or "")
    if not spec:
        raise DataSourceError(f"no dataset given. {HOW_TO_GET}")
    if not spec.startswith("kaggle:") and not Path(spec).expanduser().exists():
        raise DataSourceError(f"dataset path {str(Path(spec).expanduser())!r} does not exist. {HOW_TO_GET}")
    return spec


def resolve_dataset(
    spec: str | os.PathLike | None,
    downloader: Callable[[str], Path] | None = None,
) -> Path:
    """The dataset folder (holding styles.csv) for a ``--data`` value.

    Args:
        spec: a folder, a .zip/.tar.gz file, ``kaggle:<owner>/<dataset>``, or None to use ``$FASHION_DATA``.
        downloader: replaces kagglehub's download (tests).
    Returns:
        The folder that holds ``styles.csv`` and ``images/``.
    Raises:
        DataSourceError with instructions when nothing usable is found.
    """
    spec = check_data_spec(spec)
    if spec.startswith("kaggle:"):
        handle = spec[len("kaggle:") :] or PUBLIC_DATASETS["small"]
        folder = (downloader or _kaggle_download)(handle)
        return resolve_dataset(folder, downloader)
    path = Path(spec).expanduser()
    folder = path if path.is_dir() else extract_archive(path)
    root = find_root(folder)
    if root is None:
        raise DataSourceError(f"no styles.csv in {path} (looked two levels down). {HOW_TO_GET}")
    return root


if __name__ == "__main__":
    print(resolve_dataset(sys.argv[1] if len(sys.argv) > 1 else None))
