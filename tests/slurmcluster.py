"""A real one-node SLURM cluster for the tests, started from Debian's packages (munge,
slurmctld, slurmd) in a folder of its own, on free ports, with its own munge socket and key:
nothing of the machine's own SLURM or munge (if any) is used or touched. Root only (slurmd
launches jobs as their users); ``why_not()`` says why it cannot start here."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

PROGRAMS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel")
SBIN = ("/usr/sbin", "/sbin")


def _which(name: str) -> str | None:
    return shutil.which(name) or next((f"{d}/{name}" for d in SBIN if os.access(f"{d}/{name}", os.X_OK)), None)


def why_not() -> str | None:
    """None when a cluster can be started here, else the reason (the tests then skip, saying it)."""
    if os.geteuid() != 0:
        return "a SLURM cluster needs root here (slurmd launches jobs as their users); run `make test` as root, as CI does"
    missing = [p for p in PROGRAMS if not _which(p)]
    if missing:
        return f"SLURM is not installed ({', '.join(missing)} missing): `make test` installs Debian's slurmctld slurmd slurm-client munge as root"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Cluster:
    root: Path
    conf: Path
    partition: str
    cpus: int
    memory_mb: int

    @property
    def env(self) -> dict[str, str]:
        return {"SLURM_CONF": str(self.conf)}

    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(list(cmd), capture_output=True, text=True, timeout=60, check=check, env={**os.environ, **self.env})

    def stop(self) -> None:
        self.run("scancel", "--me", check=False)
        for name in ("slurmd", "slurmctld", "munge/munged"):
            pid_file = self.root / f"{name}.pid"
            try:
                pid = int(pid_file.read_text().strip())
            except (OSError, ValueError):
                continue
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            for _ in range(100):
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)
            else:  # still there after 10 s (slurmd waits for its job steps): nothing of ours outlives the session
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for pid in self._leftovers():  # a job step cancelled as slurmd stopped retries "job complete" forever
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def _leftovers(self) -> list[int]:
        """The pids of this cluster's slurmstepd processes (their working folder is under its root)
        and of its jobs' processes (``SLURM_CONF`` in their environment names this cluster's file):
        a job whose step daemon was killed is re-parented to init and would run on, logging to a
        server that is gone, after the session."""
        out, mine = [], f"SLURM_CONF={self.conf}".encode()
        for d in Path("/proc").iterdir():
            if not d.name.isdigit() or int(d.name) == os.getpid():
                continue
            try:
                if (d / "cmdline").read_bytes().startswith(b"slurmstepd"):
                    cwd = os.readlink(d / "cwd").removesuffix(" (deleted)")
                    if cwd == str(self.root) or cwd.startswith(str(self.root) + "/"):
                        out.append(int(d.name))
                else:
                    env = (d / "environ").read_bytes().split(b"\0")
                    if mine in env and any(v.startswith(b"SLURM_JOB_ID=") for v in env):
                        out.append(int(d.name))
            except OSError:
                continue
        return out


CONF = """\
ClusterName=thesis{port}
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={port}
SlurmdPort={dport}
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
# the test's own munge daemon; requeued jobs may start again after 10 s (cred_expire; 120 s by default)
AuthInfo=socket={root}/munge/munge.sock,cred_expire=10
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# memory limits enforced without cgroups: the step daemon samples each job every second
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=1
JobAcctGatherParams=OverMemoryKill
MpiDefault=none
ReturnToService=2
KillWait=10
MinJobAge=3600
SchedulerParameters=sched_interval=2
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={mem} State=UNKNOWN
PartitionName={partition} Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


def start(root: Path, partition: str = "thesis") -> Cluster:
    """munged, slurmctld and slurmd under ``root``; returns once the node takes jobs."""
    root = Path(root)
    for d in ("munge", "state", "spool"):
        (root / d).mkdir(parents=True, exist_ok=True)
    os.chmod(root / "munge", 0o700)
    key = root / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    os.chmod(key, 0o400)
    host = socket.gethostname().split(".")[0]
    cpus = os.cpu_count() or 1
    with open("/proc/meminfo") as f:
        total_kb = int(next(line for line in f if line.startswith("MemTotal")).split()[1])
    mem = int(total_kb / 1024 * 0.8)
    conf = root / "slurm.conf"
    conf.write_text(CONF.format(root=root, host=host, port=_free_port(), dport=_free_port(), cpus=cpus, mem=mem, partition=partition))
    m = root / "munge"
    subprocess.run([_which("munged"), f"--socket={m / 'munge.sock'}", f"--key-file={key}", f"--pid-file={m / 'munged.pid'}",
                    f"--log-file={m / 'munged.log'}", f"--seed-file={m / 'seed'}", "--force"], check=True, capture_output=True, timeout=30)
    subprocess.run([_which("slurmctld"), "-f", str(conf), "-i"], check=True, capture_output=True, timeout=30)
    subprocess.run([_which("slurmd"), "-f", str(conf)], check=True, capture_output=True, timeout=30)
    c = Cluster(root, conf, partition, cpus, mem)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        out = c.run("sinfo", "-h", "-o", "%t", check=False)
        if out.returncode == 0 and out.stdout.strip() in ("idle", "mix", "alloc"):
            return c
        time.sleep(0.3)
    c.stop()
    raise RuntimeError(f"the test SLURM cluster did not come up in 30 s: {out.stdout} {out.stderr}; logs in {root}")
