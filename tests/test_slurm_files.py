"""The SLURM backend without a scheduler: the grid file's ``slurm:`` section, the job scripts
(the chain, the requeue and its warning, an environment without secrets, private files), and how
SLURM's words and a job's log become each cell's state. The real scheduler: tests/test_slurm.py."""

from __future__ import annotations

import stat

import pytest
import yaml

from thesis_mlflow.errors import BadSetting
from thesis_mlflow.grid import jobs
from thesis_mlflow.grid.gridfile import load_grid
from thesis_mlflow.grid.slurm import commands, injob
from thesis_mlflow.grid.slurm import state as slurmstate
from thesis_mlflow.grid.slurm import submit as slurm
from thesis_mlflow.grid.slurm.settings import SlurmSpec, slurm_spec
from thesis_mlflow.paths import ROOT

GRID = ROOT / "configs" / "grids" / "binning_vs_direct.yaml"


def _grid_file(tmp_path, **slurm_keys):
    doc = yaml.safe_load(GRID.read_text())
    doc["slurm"] = {**doc.get("slurm", {}), "job_dir": str(tmp_path / "jobs"), **slurm_keys}
    p = tmp_path / "g.yaml"
    p.write_text(yaml.safe_dump(doc))
    return p


@pytest.mark.parametrize(("given", "words"), [
    ({"partitio": "gpu"}, "slurm: unknown keys ['partitio']"),
    ({"time": "12h"}, "slurm.time must be HH:MM:SS"),
    ({"time": "00:00:00"}, "slurm.time must be HH:MM:SS"),
    ({"time": "1:61:00"}, "slurm.time must be HH:MM:SS"),
    ({"mem": "lots"}, "slurm.mem must be a size"),
    ({"cpus_per_job": 0}, "slurm.cpus_per_job must be an integer >= 1"),
    ({"gpus_per_job": -1}, "slurm.gpus_per_job must be an integer >= 0"),
    ({"gpus_per_job": True}, "slurm.gpus_per_job must be an integer"),
    ({"cells_per_job": "8"}, "slurm.cells_per_job must be an integer >= 1"),
    ({"partition": "gpu a100"}, "slurm.partition must be a name without spaces"),
    ({"signal_before_end_s": 5}, "slurm.signal_before_end_s must be an integer >= 10"),
    ({"time": "00:05:00", "signal_before_end_s": 300}, "must be shorter than slurm.time"),
    ({"extra": "--constraint=a100"}, "slurm.extra must be a list"),
    ({"extra": ["--export=ALL"]}, "sets --export, which the grid sets itself"),
    ({"extra": ["#SBATCH --time=1:00:00"]}, "sets --time, which the grid sets itself"),
    ({"extra": ["--comment=MLFLOW_TRACKING_PASSWORD=hunter2"]}, "looks like it carries a secret"),
    ({"extra": ["--comment=token:abc"]}, "looks like it carries a secret"),
    ({"extra": ["constraint=a100"]}, "must be one sbatch option"),
    ({"export": ["PATH", "MLFLOW_*"]}, "slurm.export would copy"),
    ({"export": ["AWS_SECRET_ACCESS_KEY"]}, "slurm.export would copy"),
    ({"export": "PATH"}, "slurm.export must be true, false or a list"),
])
def test_a_wrong_slurm_key_is_refused_naming_it(given, words):
    with pytest.raises(BadSetting, match=None) as e:
        slurm_spec(given)
    assert words in str(e.value), str(e.value)


def test_slurm_defaults_and_a_valid_section():
    d = slurm_spec(None)
    assert d == SlurmSpec() and d.seconds == 12 * 3600 and d.gpus_per_job == 1 and d.partition is None
    s = slurm_spec({"partition": "gpu_h100", "account": "phd123", "time": "1-02:03:04", "mem": "64g", "extra": ["#SBATCH --constraint=h100"]})
    assert s.seconds == ((24 + 2) * 60 + 3) * 60 + 4 and s.mem == "64G" and s.extra == ("--constraint=h100",)
    assert slurm_spec({"time": "00:05:00"}).signal_before_end_s == 75  # not set: a quarter of a short limit, not 300 s of 300


def test_job_scripts_chain_requeue_and_carry_no_secret(tmp_path, monkeypatch):
    """One script per job, the pack's warning before its time limit reaching Python itself (exec,
    B:USR1), requeueable, an allow-list of variables from the shell (never the MLflow login that is
    in it), the tracking URI refused when it holds a login; folder 0700, files 0600."""
    monkeypatch.setenv("THESIS_MLFLOW_OUTPUTS", str(tmp_path / "out"))
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "hunter2-secret")
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "thesis-jobs")
    p = _grid_file(tmp_path, partition="gpu_h100", account="phd123", extra=["--constraint=h100"])
    g = load_grid(p, "full", base_dir=ROOT)
    cells = g.cells()
    runs = {c: f"{i:032x}" for i, c in enumerate(cells)}
    with pytest.raises(BadSetting, match="holds a login"):
        slurm.write_scripts(g, runs, "http://u:pw@login01:5000", "7", p)
    scripts = slurm.write_scripts(g, runs, "http://login01:5000", "7", p, stack_seeds="on")
    kinds = [s.kind for s in scripts]
    assert kinds == ["prepare"] + ["pack"] * 18 + ["report"]  # 108 cells in packs of whole configurations (8 per job: 2 x 3 seeds)
    assert sorted(c for s in scripts for c in s.cells) == sorted(c.name for c in cells)  # each cell in exactly one pack
    pack = scripts[1].text
    for line in ("#SBATCH --job-name=binning_vs_direct-pack-000", "#SBATCH --requeue", "#SBATCH --signal=B:USR1@300",
                 "#SBATCH --time=12:00:00", "#SBATCH --gres=gpu:1", "#SBATCH --partition=gpu_h100", "#SBATCH --account=phd123",
                 "#SBATCH --constraint=h100", "#SBATCH --open-mode=append", "export MLFLOW_TRACKING_URI=http://login01:5000",
                 "export MLFLOW_EXPERIMENT_ID=7", "#SBATCH --cpus-per-task=8", "export OMP_NUM_THREADS=8", "export MKL_NUM_THREADS=8"):
        assert line + "\n" in pack, line
    # a warning while Python starts does not end the job (trap), and reaches Python itself (exec)
    assert "\ntrap '' USR1\nexec " in pack and "-m steps.grid pack" in pack and "--slurm-requeues 3" in pack and "--device cuda" in pack
    assert "--stack-seeds on" in pack
    export = next(ln for ln in pack.splitlines() if ln.startswith("#SBATCH --export="))
    assert "PATH" in export and "HOME" in export and "MLFLOW" not in export and "ALL" not in export
    assert "--signal" not in scripts[0].text and "--gres" not in scripts[-1].text  # the report needs no GPU
    assert "steps.report --grid binning_vs_direct" in scripts[-1].text
    folder = slurm.job_dir(g)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    for f in folder.glob("*.sh"):
        assert stat.S_IMODE(f.stat().st_mode) == 0o600 and "hunter2" not in f.read_text() and "thesis-jobs" not in f.read_text()
    # a CPU grid: no GPU asked for, and a pack that trains on the CPU
    g0 = load_grid(_grid_file(tmp_path, gpus_per_job=0, export=False), "full", base_dir=ROOT)
    cpu = slurm.write_scripts(g0, runs, "http://login01:5000", "7", p)[1].text
    assert "--gres" not in cpu and "--device cuda" not in cpu and "#SBATCH --export=NONE" in cpu
    # its threads held to the cores it asked for (a node that does not bind jobs to cores would otherwise
    # give each job's torch a thread per core of the node: planted without the limits, this fails)
    one = slurm.write_scripts(load_grid(_grid_file(tmp_path, gpus_per_job=0, cpus_per_job=1), "full", base_dir=ROOT), runs,
                              "http://login01:5000", "7", p)
    assert all("export OMP_NUM_THREADS=1\n" in s.text and "export TORCHINDUCTOR_COMPILE_THREADS=1\n" in s.text for s in one)
    # a typed GPU where the cluster names them
    typed = slurm.write_scripts(load_grid(_grid_file(tmp_path, gpu_type="h100"), "full", base_dir=ROOT), runs, "http://login01:5000", "7", p)
    assert "#SBATCH --gres=gpu:h100:1\n" in typed[1].text


def test_a_job_folder_others_can_write_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("THESIS_MLFLOW_OUTPUTS", str(tmp_path / "out"))
    shared = tmp_path / "jobs"
    shared.mkdir()
    shared.chmod(0o777)
    g = load_grid(_grid_file(tmp_path), "full", base_dir=ROOT)
    with pytest.raises(Exception, match="others|writ"):
        slurm.write_scripts(g, {c: "0" * 32 for c in g.cells()[:3]}, "http://login01:5000", "7", g.source)


SQUEUE = """\
11|g-prepare|COMPLETED|None|0|
12|g-pack-000|PENDING|BeginTime|1|
13|g-pack-001|RUNNING|None|0|
14|g-pack-002|PENDING|Resources|0|
15|g-pack-003|PENDING|Dependency|0|
16|g-pack-004|TIMEOUT|None|0|
17|g-pack-005|CANCELLED|DependencyNeverSatisfied|0|
18|g-pack-006|FAILED|JobLaunchFailure|0|
19|g-pack-007|NODE_FAIL|None|0|
20|g-pack-008|PENDING|JobHeldUser|0|
21|g-pack-009|OUT_OF_MEMORY|None|0|
22|g-pack-010|CANCELLED|None|0|
23|g-pack-011|COMPLETED|None|2|
"""


def test_slurm_states_become_the_grids_phases_and_causes():
    known = slurmstate.parse_squeue(SQUEUE)
    got = {k: (v.phase, v.cause) for k, v in ((k, slurmstate.view(k, j, None, True)) for k, j in known.items())}
    assert got == {"11": (jobs.DONE, None), "12": (jobs.REQUEUED, None), "13": (jobs.RUNNING, None), "14": (jobs.QUEUED, None),
                   "15": (jobs.WAITING, None), "16": (jobs.ENDED, jobs.TIMED_OUT), "17": (jobs.ENDED, jobs.NEVER),
                   "18": (jobs.ENDED, jobs.FAILED), "19": (jobs.ENDED, jobs.NODE_FAILURE), "20": (jobs.HELD, None),
                   "21": (jobs.ENDED, jobs.OUT_OF_MEMORY), "22": (jobs.ENDED, jobs.CANCELLED), "23": (jobs.DONE, None)}
    assert slurmstate.view("14", known["14"], None, True).label() == "14 pending (Resources)"
    assert known["23"].restarts == 2 and slurmstate.view("23", known["23"], None, True).retries == 2
    # without cgroups a memory kill is FAILED (JobLaunchFailure): the step daemon's line in the log says which
    oom_log = ["thesis-mlflow: job 18 (pack) attempt 1 started on n1 at x",
               "slurmstepd-n1: error: StepId=18.batch exceeded memory limit (434991104 > 104857600), being killed"]
    v = slurmstate.view("18", known["18"], oom_log, True)
    assert (v.phase, v.cause) == (jobs.ENDED, jobs.OUT_OF_MEMORY) and "exceeded memory limit" in v.reason


def test_sacct_lines_are_read_where_the_cluster_keeps_accounting():
    text = "31|g-pack-000|TIMEOUT|None\n32|g-pack-001|CANCELLED by 1234|None\n33|g-report|COMPLETED|None\n"
    known = slurmstate.parse_sacct(text)
    assert {k: v.state for k, v in known.items()} == {"31": "TIMEOUT", "32": "CANCELLED", "33": "COMPLETED"}


@pytest.mark.parametrize(("lines", "cause"), [
    (["*** JOB 5 ON n1 CANCELLED AT 2026-12-07T14:26:30 DUE TO TIME LIMIT ***"], jobs.TIMED_OUT),
    (["slurmstepd-n1: error: *** JOB 5 ON n1 CANCELLED AT 2026-12-07T14:26:30 DUE TO NODE FAILURE ***"], jobs.NODE_FAILURE),
    (["slurmstepd-n1: error: *** JOB 5 ON n1 CANCELLED AT 2026-12-07T14:26:30 DUE TO PREEMPTION ***"], jobs.PREEMPTED),
    (["slurmstepd-n1: error: *** JOB 5 ON n1 CANCELLED AT 2026-12-07T14:26:30 ***"], jobs.CANCELLED),
    (["slurmstepd-n1: error: Detected 1 oom-kill event(s) in StepId=5.batch."], jobs.OUT_OF_MEMORY),
    (["Error: thesis-mlflow: TIME LIMIT: job 5 reached its time limit after 3 requeue(s)"], jobs.TIMED_OUT),
    (["thesis-mlflow: DONE: all 8 cells of the pack finished"], jobs.DONE),
    (["Error: 1 of 2 cells not finished: x (a retry resumes them)"], jobs.FAILED),
    (["pack of 2 cells: 0 finished, 2 to train"], None),
])
def test_a_forgotten_job_is_read_from_its_log(lines, cause):
    """SLURM has forgotten the job (MinJobAge) and keeps no accounting: its log's last attempt says how it ended."""
    log = ["thesis-mlflow: job 5 (pack) attempt 1 started on n1 at x", "*** JOB 5 ON n1 CANCELLED AT x DUE TO TIME LIMIT ***",
           "thesis-mlflow: job 5 (pack) attempt 2 started on n1 at y", *lines]
    got, _ = slurmstate.from_log(slurmstate.last_attempt_lines(log))
    assert got == cause


def test_dry_run_prints_the_scripts_and_submits_nothing(mlflow_env, tmp_path, monkeypatch):
    """``grid run --backend slurm --dry-run`` on a machine without SLURM: the job scripts and the
    sbatch commands that would chain them are printed, no run is created and nothing is submitted."""
    import shutil

    import mlflow
    from click.testing import CliRunner

    from steps.cli import main

    bin_dir = tmp_path / "bin"  # no sbatch even where SLURM is installed: nothing could be submitted
    bin_dir.mkdir()
    (bin_dir / "git").symlink_to(shutil.which("git"))
    monkeypatch.setenv("PATH", str(bin_dir))
    p = _grid_file(tmp_path, partition="gpu_h100")
    res = CliRunner().invoke(main, ["grid", "run", str(p), "--backend", "slurm", "--scale", "demo", "--dry-run"])
    assert res.exit_code == 0, res.output
    out = res.output
    assert out.count("#!/bin/bash") == 1 + 5 + 1  # prepare, 36 demo cells in packs of whole configurations (8 per job), report
    assert "#SBATCH --partition=gpu_h100" in out and "--runs direct-cls-met-4v-s0=RUN_ID_CREATED_AT_SUBMIT" in out
    assert "would submit (nothing was;" in out and "--dependency=afterok:$PREPARE --kill-on-invalid-dep=yes" in out
    assert "sbatch --dependency=afterany:$P0:$P1:$P2:$P3:$P4 " in out
    assert mlflow.search_runs(search_all_experiments=True).empty  # no parent, no child
    assert not (tmp_path / "jobs" / "binning_vs_direct-demo" / "jobs.json").exists()
    # without --dry-run and without SLURM: one line naming what is missing, and still no run
    res = CliRunner().invoke(main, ["grid", "run", str(p), "--backend", "slurm", "--scale", "demo"])
    assert res.exit_code == 1 and "sbatch/squeue are not on the PATH" in res.output, (res.output, repr(res.exception))
    assert mlflow.search_runs(search_all_experiments=True).empty


def test_a_pack_asks_for_its_requeue_up_to_its_cap(monkeypatch):
    """SLURM's warning before the time limit: the pack requeues its job until it has been requeued
    ``max_requeues`` times (an attempt without progress too: SLURM warns up to 60 s early), then
    ends with one line saying why, naming a limit too short for one epoch; outside SLURM there is
    nothing to requeue. (Plant: no cap fails it.)"""
    import signal

    from thesis_mlflow.errors import StepFailed

    asked = []
    monkeypatch.setattr(commands, "run", lambda cmd, check=True: asked.append(cmd))
    before = signal.getsignal(signal.SIGTERM)
    try:
        monkeypatch.delenv("SLURM_JOB_ID", raising=False)
        with pytest.raises(StepFailed, match="outside a SLURM job"):
            injob.requeue_self(True, 3)
        monkeypatch.setenv("SLURM_JOB_ID", "42")
        for restarts, progressed, ok in ((0, True, True), (0, False, True), (2, True, True), (2, False, True), (3, True, False),
                                         (3, False, False)):
            monkeypatch.setenv("SLURM_RESTART_COUNT", str(restarts))
            asked.clear()
            if ok:
                injob.requeue_self(progressed, 3)
                assert asked == [["scontrol", "requeue", "42"]], (restarts, progressed)
            else:
                with pytest.raises(StepFailed, match="TIME LIMIT: job 42 reached its time limit after 3 requeue") as e:
                    injob.requeue_self(progressed, 3)
                assert asked == [] and "raise slurm.time" in str(e.value)
                assert ("too short for one epoch" in str(e.value)) == (not progressed)
    finally:
        signal.signal(signal.SIGTERM, before)
