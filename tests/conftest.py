"""Shared fixtures: a tiny generated catalogue (styles.csv + images) and isolated MLflow / cache folders."""
from __future__ import annotations

import contextlib
import io
import os
import signal
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

HEADER = "id,gender,masterCategory,subCategory,articleType,baseColour,season,year,usage,productDisplayName"
REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "fashion-product-images-small.tar.gz"


class ConceptEncoder:
    """A stand-in for the packaged sentence encoder (``text_encoder.load_encoder``) in logic tests: each word is a
    fixed random direction (synonyms share one: "Nightdress" means Baby Dolls, "Deo" Deodorant), a text the unit
    mean of its words'."""

    SYNONYMS = {"nightdress": "babydoll", "baby": "babydoll", "doll": "babydoll", "deo": "deodorant"}
    source = {"package": "concept-stub", "version": "0", "file": "none", "sha256": "concept-stub-1"}

    def __init__(self, dim: int = 256):
        self.dim = dim

    def _vector(self, word: str) -> np.ndarray:
        import zlib

        if word not in self.SYNONYMS and len(word) > 3 and word.endswith("s"):
            word = word[:-1]
        word = self.SYNONYMS.get(word, word)
        return np.random.default_rng(zlib.crc32(word.encode())).standard_normal(self.dim)

    def encode(self, texts) -> np.ndarray:
        import re

        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, t in enumerate(texts):
            words = re.findall("[a-z]+", str(t).lower())
            if words:
                v = np.mean([self._vector(w) for w in words], axis=0)
                out[i] = v / np.linalg.norm(v)
        return out


# A few WordNet noun synsets: (lemmas, lexicographer file, gloss); 6 noun.artifact, 27 noun.substance,
# 18 noun.person, 15 noun.location
SYNSETS = [
    (["compact", "compact_car"], 6, "a small and economical car"),
    (["compact", "powder_compact"], 6, "a small cosmetics case with a mirror; to be carried in a woman's purse"),
    (["compact", "covenant"], 10, "a signed written agreement"),
    (["doll"], 18, "informal terms for a (young) woman"),
    (["doll", "dolly"], 6, "a small replica of a person; used as a toy"),
    (["deodorant", "deodourant"], 6, "a toiletry applied to the skin in order to mask unpleasant odors"),
    (["nail_polish", "nail_enamel", "nail_varnish"], 6, "a cosmetic lacquer applied to the nails"),
    (["capri"], 15, "an island in the Bay of Naples"),
    (["kit", "outfit"], 6, "gear consisting of a set of articles or tools for a specified purpose"),
    (["bootee", "bootie"], 6, "a slipper that is soft and wool (for babies)"),
    (["booty", "loot"], 21, "goods or money obtained illegally"),
]


def make_wordnet(folder: Path) -> Path:
    """Write index.noun / data.noun / noun.exc in WordNet's database format (byte offsets and all): a stand-in for
    the WordNet 3.0 files of class descriptions (zeroshot/lexicon.py) in logic tests."""
    folder.mkdir(parents=True, exist_ok=True)
    header = "  1 This is a generated stand-in of the WordNet 3.0 database, for tests.\n"
    data, offsets, index = header.encode(), [], {}
    for lemmas, lexfile, gloss in SYNSETS:
        offsets.append(len(data))
        words = " ".join(f"{w} 0" for w in lemmas)
        line = f"{len(data):08d} {lexfile:02d} n {len(lemmas):02x} {words} 000 | {gloss}; \"an example\"  \n"
        data += line.encode()
        for w in lemmas:
            index.setdefault(w, []).append(offsets[-1])
    (folder / "data.noun").write_bytes(data)
    lines = [header] + [f"{w} n {len(o)} 0 {len(o)} 0 {' '.join(f'{x:08d}' for x in o)}  \n"
                        for w, o in sorted(index.items())]
    (folder / "index.noun").write_text("".join(lines))
    (folder / "noun.exc").write_text("dollies dolly\n")
    return folder


@pytest.fixture(scope="session", autouse=True)
def generated_wordnet(tmp_path_factory):
    """Every test reads the generated WordNet above (never the machine's own, if it has one)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("FASHION_WORDNET_DIR", str(make_wordnet(tmp_path_factory.mktemp("wordnet"))))
    yield
    mp.undo()


def real_data_path() -> str | None:
    """FASHION_DATA, else ../shared/data's archive, else None."""
    env = os.environ.get("FASHION_DATA")
    if env and Path(env).exists():
        return env
    return str(REAL_DATA) if REAL_DATA.exists() else None


def write_image(path: Path, cls: int, rng: np.random.Generator, size=(60, 80), mode="RGB") -> None:
    """A synthetic product photo: white background, a class-dependent coloured band, some noise."""
    from PIL import Image

    w, h = size
    arr = np.full((h, w, 3), 255, dtype=np.uint8)
    top = 5 + (cls * 9) % max(1, h - 20)
    colour = np.array([(cls * 67) % 256, (cls * 131) % 256, (cls * 29) % 256], dtype=np.uint8)
    arr[top:top + 12, 4:w - 4] = colour
    arr = np.clip(arr.astype(int) + rng.integers(-8, 9, arr.shape), 0, 255).astype(np.uint8)
    Image.fromarray(arr).convert(mode).save(path, format="PNG" if mode in ("RGBA", "P", "LA") else "JPEG")


def make_dataset(root: Path, n_classes: int = 8, per_class=(40, 40, 30, 30, 10, 8, 6, 4), seed: int = 0,
                 odd_rows: bool = True) -> Path:
    """Write a generated dataset folder; returns it.

    Classes C0..C{n-1}; class i has per_class[i] products, alternating even (2012) and odd (2013) years.
    With ``odd_rows``: a comma inside a name, an NA usage, a row without year, a non-numeric year,
    a row without image, an empty image, a truncated image, a non-image file, a grayscale, a CMYK,
    an RGBA PNG and an odd-size image.
    """
    rng = np.random.default_rng(seed)
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    lines = [HEADER]
    pid = 1000
    for c in range(n_classes):
        for j in range(per_class[c % len(per_class)]):
            year = 2012 if j % 2 == 0 else 2013
            usage = "NA" if j % 7 == 3 else "Casual"
            lines.append(f"{pid},Men,Apparel,Topwear,C{c},Blue,Summer,{year},{usage},Brand Men C{c} shirt {j}")
            write_image(images / f"{pid}.jpg", c, rng)
            pid += 1
    if odd_rows:
        odd = [
            (1, "Women,Apparel,Topwear,C0,Red,Fall,2012,Casual,Acme Women's Yes, its me Red Top", "rgb"),
            (2, "Men,Apparel,Topwear,C0,Red,Fall,,Casual,No Year Shirt", "rgb"),
            (3, "Men,Apparel,Topwear,C0,Red,Fall,20x2,Casual,Bad Year Shirt", "rgb"),
            (4, "Men,Apparel,Topwear,C0,Red,Fall,2012,Casual,No Image Shirt", None),
            (5, "Men,Apparel,Topwear,C0,Red,Fall,2012,Casual,Empty Image Shirt", "empty"),
            (6, "Men,Apparel,Topwear,C1,Red,Fall,2012,Casual,Truncated Image Shirt", "truncated"),
            (7, "Men,Apparel,Topwear,C1,Red,Fall,2012,Casual,Not An Image", "text"),
            (8, "Men,Apparel,Topwear,C1,Grey,Fall,2012,Casual,Gray Shirt", "L"),
            (9, "Men,Apparel,Topwear,C1,Cyan,Fall,2012,Casual,Cmyk Shirt", "CMYK"),
            (10, "Men,Apparel,Topwear,C2,Pink,Fall,2012,Casual,Rgba Shirt", "RGBA"),
            (11, "Men,Apparel,Topwear,C2,Pink,Fall,2012,Casual,Odd Size Shirt", "odd"),
            (12, "Men,Apparel,Topwear,,Pink,Fall,2012,Casual,No Label Shirt", "rgb"),
        ]
        for k, rest, kind in odd:
            oid = 90000 + k
            lines.append(f"{oid},{rest}")
            p = images / f"{oid}.jpg"
            if kind == "rgb":
                write_image(p, 0, rng)
            elif kind == "empty":
                p.write_bytes(b"")
            elif kind == "truncated":
                write_image(p, 1, rng)
                p.write_bytes(p.read_bytes()[:60])
            elif kind == "text":
                p.write_text("this is not an image")
            elif kind in ("L", "CMYK"):
                write_image(p, 1, rng, mode=kind)
            elif kind == "RGBA":
                write_image(p, 2, rng, mode="RGBA")
            elif kind == "odd":
                write_image(p, 2, rng, size=(53, 77))
    (root / "styles.csv").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="session")
def dataset(tmp_path_factory) -> Path:
    """A generated dataset folder, shared by the session (read-only for tests)."""
    return make_dataset(tmp_path_factory.mktemp("data") / "fashion-mini")


def _isolate(path: Path, mp: pytest.MonkeyPatch):
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{path / 'mlflow.db'}")
    mp.setenv("FASHION_CACHE", str(path / "cache"))
    mp.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    mp.setenv("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "false")  # on in real runs; tests/test_tracking.py checks it
    # what `mlflow run` hands its child, and what mlflow.set_experiment exports into os.environ in earlier tests
    for var in ("MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID", "MLFLOW_RUN_ID"):
        mp.delenv(var, raising=False)
    mp.chdir(path)
    # A test that called mlflow.set_tracking_uri() would win over the env variable: clear it, restore after.
    from mlflow.tracking._tracking_service import utils as tracking_utils

    mp.setattr(tracking_utils, "_tracking_uri", None)
    # Nor may an earlier test's mlflow.set_experiment (an experiment id of another store) pick this store's experiment.
    import mlflow.tracking.fluent as fluent

    mp.setattr(fluent, "_active_experiment_id", None)


@pytest.fixture()
def isolated(tmp_path, monkeypatch) -> Path:
    """An MLflow sqlite store, cache folder and working directory of the test's own."""
    _isolate(tmp_path, monkeypatch)
    yield tmp_path
    import mlflow

    while mlflow.active_run():
        mlflow.end_run()


@contextlib.contextmanager
def module_store(tmp_path_factory, name: str = "store"):
    """Like ``isolated``, for a whole test module (a new sqlite store costs seconds of migrations); yields (path, mp)."""
    import mlflow

    path = tmp_path_factory.mktemp(name)
    with pytest.MonkeyPatch.context() as mp:
        _isolate(path, mp)
        yield path, mp
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


def write_tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    """A .tar.gz of hand-made members (payload None: no data, e.g. links and folders) - hostile archives too."""
    with tarfile.open(path, "w:gz") as tf:
        for info, payload in members:
            if payload is not None:
                info.size = len(payload)
                tf.addfile(info, io.BytesIO(payload))
            else:
                tf.addfile(info)
    return path


def kill_first_running_cell(stop: threading.Event, killed: list) -> None:
    """Wait for a grid's pretrain cell to be RUNNING, then SIGKILL its worker process (the run's tag worker_pid).

    For the grid tests that kill a worker in the middle of a cell (a Ray worker or a --jobs pool worker);
    ``killed`` gets the run id, ``stop`` ends the wait.
    """
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    while not stop.is_set():
        for exp in client.search_experiments():
            for run in client.search_runs([exp.experiment_id], "attributes.status = 'RUNNING'"):
                pid = run.data.tags.get("worker_pid")
                if pid and run.data.tags.get("stage") == "pretrain" and int(pid) != os.getpid():
                    os.kill(int(pid), signal.SIGKILL)
                    killed.append(run.info.run_id)
                    return
        time.sleep(0.2)


def run_grid_killing_one_cell(tasks, dataset, **grid_options):
    """``run_grid`` while ``kill_first_running_cell`` kills one pretrain cell's worker, and the checks every such
    grid must pass: the killed attempt ends KILLED, every cell FINISHED exactly once, and the killed attempt is not a
    cell's result. Returns the grid's result and its child runs."""
    from mlflow.tracking import MlflowClient

    from fashion_core.grid import run_grid

    stop, killed = threading.Event(), []
    killer = threading.Thread(target=kill_first_running_cell, args=(stop, killed), daemon=True)
    killer.start()
    try:
        res = run_grid(tasks, str(dataset), register=False, log=lambda m: None, **grid_options)
    finally:
        stop.set()
    client = MlflowClient()
    assert len(killed) == 1, "no cell was seen running, so none was killed"
    assert client.get_run(killed[0]).info.status == "KILLED"
    assert (res.runs["status"] == "FINISHED").all() and len(res.runs) == len(tasks)
    children = client.search_runs([res.experiment_id], f"tags.grid_run_id = '{res.parent_run_id}'")
    finished = [r.data.tags["config_hash"] for r in children if r.info.status == "FINISHED"]
    assert sorted(finished) == sorted(res.runs["config_hash"])  # every cell FINISHED exactly once
    assert killed[0] not in set(res.runs["run_id"])  # the killed attempt is not the cell's result
    return res, children
