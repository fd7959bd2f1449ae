"""The thesis grid rehearsed at full size through a real SLURM: 108 cells of the ~400k model on
the full synthetic data set, in packs of 8 (``slurm.cells_per_job``), then the forecast.

Starts a one-node SLURM cluster (Debian's packages, ``tests/slurmcluster.py``; root only, as in
``make test``) and a tracking server of its own, both under a temporary folder, and rehearses
``configs/grids/binning_vs_direct.yaml --scale full --backend slurm --wait``, with the grid's
``slurm:`` section pointed at that cluster: its partition, CPU jobs (no GPU here), one core and
8G per job (two jobs at once on a 2-core node of ~19 GB); ``time``, ``cells_per_job``, ``signal_before_end_s`` and
``max_requeues`` as the grid file sets them. Prints the wall time, the peak memory of any job
(``sacct``-free: the cells' own ``cost.peak_rss_mb``) and the forecast table.

    sudo .venv/bin/python benchmarks/rehearse_full_slurm.py [--steps 20] [--keep]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--grid", default=str(ROOT / "configs" / "grids" / "binning_vs_direct.yaml"))
    ap.add_argument("--keep", action="store_true", help="leave the temporary folder (server, cluster logs, job logs)")
    args = ap.parse_args()
    from tests import slurmcluster

    why = slurmcluster.why_not()
    if why:
        print(f"cannot start a SLURM cluster here: {why}")
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="rehearse-full-"))
    os.environ.update({"THESIS_MLFLOW_OUTPUTS": str(tmp / "outputs"), "THESIS_MLFLOW_ALLOW_DIRTY": "1",
                       "MLFLOW_EXPERIMENT_NAME": "rehearse-full", "HOME": str(tmp / "home")})
    from thesis_mlflow.forecast.rehearse import rehearse
    from thesis_mlflow.grid.rehearsal import Rehearsal
    from thesis_mlflow.server import logins
    from thesis_mlflow.server import process as server

    def stop(signum, frame):  # a killed benchmark stops its cluster and server (the finally below)
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, stop)
    cluster = slurmcluster.start(tmp / "slurm")
    os.environ["SLURM_CONF"] = str(cluster.conf)
    srv = server.start(tmp / "srv", auth=True, workers=2, experiment="rehearse-full")
    try:
        logins.provision_jobs_user(srv.uri, srv.root, "rehearse-full")
        (tmp / "home").mkdir(exist_ok=True)
        logins.install_client_credentials(srv.root, tmp / "home", srv.uri)
        os.environ["MLFLOW_TRACKING_URI"] = srv.uri
        doc = yaml.safe_load(Path(args.grid).read_text())
        data = Path(doc.get("data", "data/4tops_synthetic.h5"))
        doc["data"] = str(data if data.is_absolute() else ROOT / data)
        doc["slurm"] = {**doc.get("slurm", {}), "partition": cluster.partition, "account": None, "qos": None, "gpus_per_job": 0,
                        "gpu_type": None, "cpus_per_job": 1, "mem": "8G", "job_dir": str(tmp / "jobs")}  # two jobs at once on this node
        gfile = tmp / "thesis.yaml"
        gfile.write_text(yaml.safe_dump(doc))
        t0 = time.perf_counter()
        r = rehearse(str(gfile), "full", "slurm", Rehearsal(steps=args.steps), wait=True, echo=print, poll_s=15)
        wall = time.perf_counter() - t0
        peak = max((c.memory_mb for c in r.forecast.packs), default=0)
        print(f"\nrehearsal of {len(r.forecast.cells)} cells through SLURM: {wall / 60:.1f} min wall on {os.cpu_count()} cores; "
              f"forecast peak per pack {peak / 1024:.2f} GB; exit status {r.forecast.exit_code}")
        return r.forecast.exit_code
    finally:
        srv.stop()
        cluster.stop()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
