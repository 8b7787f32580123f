"""A crash and a double start, on a real store: ``kill -9`` of a smoke grid in its second cell, the run
states, the same command again, the run states; then two identical grids started at once (docs/reliability.md).

Runs in the current folder's store unless MLFLOW_TRACKING_URI says otherwise; logs go to ./crash-*.log.

    MLFLOW_TRACKING_URI=sqlite:////tmp/crash/mlflow.db python bench/crash_rerun.py DATA [kill] [twice]
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parents[1]
DATA = (
    sys.argv[1] if len(sys.argv) > 1 else str(ROOT.parent / "shared" / "data" / "fashion-product-images-small.tar.gz")
)
URI = os.environ.get("MLFLOW_TRACKING_URI", f"sqlite:///{Path('mlflow.db').resolve()}")
ENV = {
    **os.environ,
    "MLFLOW_TRACKING_URI": URI,
    "PYTHONPATH": str(ROOT),
    "FASHION_PROGRESS": "0",
    "PYTHONUNBUFFERED": "1",
}
PY = sys.executable
LOGS = Path.cwd()


def cmd(exp):
    return [
        PY,
        "-m",
        "fashion_core.cli.commands",
        "grid",
        "--data",
        DATA,
        "--profile",
        "smoke",
        "--techniques",
        "pretrain/baseline,pretrain/focal,finetune/ncm",
        "--seeds",
        "0",
        "--no-register",
        "--experiment",
        exp,
    ]


def states(exp, title):
    mlflow.set_tracking_uri(URI)
    df = mlflow.search_runs(experiment_names=[exp], order_by=["attributes.start_time ASC"])
    cols = [
        c
        for c in ["run_id", "tags.mlflow.runName", "status", "tags.killed_reason", "tags.grid_restarts"]
        if c in df.columns
    ]
    df = df[cols].rename(
        columns={
            "tags.mlflow.runName": "name",
            "tags.killed_reason": "killed_reason",
            "tags.grid_restarts": "grid_restarts",
        }
    )
    df["run_id"] = df["run_id"].str[:8]
    print(f"\n== {title}: mlflow.search_runs(experiment_names=[{exp!r}])")
    print(df.fillna("").to_string(index=False), flush=True)


def kill_and_rerun(exp="crash-real"):
    print("$ " + " ".join(cmd(exp)), flush=True)
    t0 = time.time()
    with open(f"{LOGS}/crash-{exp}-1.log", "w") as log:
        proc = subprocess.Popen(
            cmd(exp), env=ENV, cwd=LOGS, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    client = MlflowClient(URI)
    while True:
        assert proc.poll() is None, "the grid ended before it was killed"
        try:
            e = client.get_experiment_by_name(exp)
            runs = client.search_runs([e.experiment_id]) if e else []
        except Exception:  # noqa: BLE001 - the store or the experiment is still being created
            runs = []
        fin = [r for r in runs if r.data.tags.get("stage") == "pretrain" and r.info.status == "FINISHED"]
        run = [
            r
            for r in runs
            if r.data.tags.get("stage") == "pretrain" and r.info.status == "RUNNING" and "worker_pid" in r.data.tags
        ]
        if fin and run:
            break
        time.sleep(1)
    time.sleep(5)  # in the middle of the second cell
    os.killpg(os.getpgid(proc.pid), signal.SIGKILL)
    proc.wait()
    print(f"kill -9 of the grid's process group after {time.time() - t0:.0f} s (rc {proc.returncode})", flush=True)
    states(exp, "after kill -9")
    t1 = time.time()
    out = subprocess.run(cmd(exp), env=ENV, cwd=LOGS, capture_output=True, text=True, check=False)
    print(f"\n$ (same command again) rc {out.returncode} in {time.time() - t1:.0f} s; its lines about the crash:")
    for line in (out.stdout + out.stderr).splitlines():
        if any(w in line for w in ("ended run", "continuing", "before the restart", "reusing", "grid run", "done in")):
            print("  " + line)
    states(exp, "after the rerun")


def two_at_once(exp="crash-real-twice"):
    print("\n$ two identical grids started at once: " + " ".join(cmd(exp)), flush=True)
    t0 = time.time()
    procs = [
        subprocess.Popen(cmd(exp), env=ENV, cwd=LOGS, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(2)
    ]
    outs = [p.communicate()[0] for p in procs]
    print(f"both ended (rc {[p.returncode for p in procs]}) in {time.time() - t0:.0f} s")
    for k, o in enumerate(outs):
        Path(f"{LOGS}/crash-{exp}-{k}.log").write_text(o)
        for line in o.splitlines():
            if any(w in line for w in ("another grid", "reusing run", "done in", "claiming")):
                print(f"  grid {k + 1}: {line}")
    states(exp, "after both")


if __name__ == "__main__":
    which = sys.argv[2:] or ["kill", "twice"]
    if "kill" in which:
        kill_and_rerun()
    if "twice" in which:
        two_at_once()
