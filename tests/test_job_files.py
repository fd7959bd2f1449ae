"""Grid files a colleague might hand over, or a typo might produce, against the job files they
become: every value is refused at load with one line naming the key, or rendered so that the
script (``bash -n``, run with a stand-in Python) and the submit file (``htcondor2.Submit``, the
new-syntax parser of ``tests/condorsyntax.py``) keep the allow-list and run nothing extra. The
real ``sbatch --test-only`` over the same rows: tests/test_slurm.py."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest
import yaml

from tests import condorsyntax
from thesis_mlflow.errors import BadSetting
from thesis_mlflow.grid.condor.submit import write_dag
from thesis_mlflow.grid.gridfile import load_grid
from thesis_mlflow.grid.slurm import submit as slurm
from thesis_mlflow.paths import ROOT
from thesis_mlflow.permissions import UnsafePath

GRID = ROOT / "configs" / "grids" / "binning_vs_direct.yaml"


def grid_doc(tmp_path, **top) -> dict:
    doc = yaml.safe_load(GRID.read_text())
    doc["factors"] = {"tokenizer": ["direct"], "pooling": ["mean", "max"], "met": [True], "vect": [4]}
    doc["slurm"] = {**doc["slurm"], "job_dir": str(tmp_path / "jobs"), "gpus_per_job": 0, "cells_per_job": 1}
    doc["condor"] = {**doc["condor"], "log_dir": str(tmp_path / "condor-logs"), "dag_dir": str(tmp_path / "dag"), "cells_per_job": 1}
    for k, v in top.items():
        if isinstance(v, dict) and isinstance(doc.get(k), dict):
            doc[k] = {**doc[k], **v}
        else:
            doc[k] = v
    return doc


def write(tmp_path, doc, name="g.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(doc, allow_unicode=True))
    return p


# (id, grid-file changes, the words of the one-line refusal)
REFUSED = [
    ("name-newline", {"name": "bvd\nexport LEAK=1"}, "name 'bvd\\nexport LEAK=1' holds '\\n'"),
    ("name-space", {"name": "binning vs direct"}, "holds a space"),
    ("name-dollar-paren", {"name": "x$(touch pwned)"}, "holds '$'"),
    ("name-backtick", {"name": "x`id`"}, "holds '`'"),
    ("name-semicolon", {"name": "x;id"}, "holds ';'"),
    ("name-sbatch", {"name": "#SBATCH --export=ALL"}, "starts with '#'"),
    ("name-leading-dash", {"name": "-o/tmp/x"}, "starts with '-'"),
    ("name-slash", {"name": "../outside"}, "starts with '.'"),
    ("name-slash-inside", {"name": "a/../../b"}, "holds '/'"),
    ("name-dotdot", {"name": ".."}, "starts with '.'"),
    ("name-long", {"name": "x" * 65}, "is 65 characters long (at most 64)"),
    ("name-line-separator", {"name": "a\u2028b"}, "line separator"),
    ("name-space-and-slash", {"name": "my grid/2"}, "holds a space"),
    ("job-dir-newline", {"slurm": {"job_dir": "jobs\n#SBATCH --export=ALL"}}, "slurm.job_dir 'jobs\\n#SBATCH --export=ALL' holds '\\n'"),
    ("job-dir-space", {"slurm": {"job_dir": "my jobs"}}, "slurm.job_dir 'my jobs' holds a space"),
    ("export-all", {"slurm": {"export": ["ALL"]}}, "slurm.export must list variable names"),
    ("export-comma", {"slurm": {"export": ["PATH,LD_PRELOAD"]}}, "slurm.export must list variable names"),
    ("export-value", {"slurm": {"export": ["PATH=/tmp/evil"]}}, "slurm.export must list variable names"),
    ("extra-two-options", {"slurm": {"extra": ["--constraint=x --export=ALL"]}}, "one sbatch option per item"),
    ("extra-short-output", {"slurm": {"extra": ["-o/tmp/leak.out"]}}, "sets -o, which the grid sets itself"),
    ("extra-short-error", {"slurm": {"extra": ["-e/tmp/leak.err"]}}, "sets -e, which the grid sets itself"),
    ("extra-prefix", {"slurm": {"extra": ["--exp=ALL"]}}, "sets --export, which the grid sets itself"),
    ("extra-grouped-flags", {"slurm": {"extra": ["-vo/tmp/x"]}}, "groups -v with more options"),
    ("extra-newline", {"slurm": {"extra": ["--constraint=x\nid"]}}, "one sbatch option per item"),
    ("partition-newline", {"slurm": {"partition": "gpu\n#SBATCH --export=ALL"}}, "slurm.partition must be a name without spaces"),
    ("account-dollar", {"slurm": {"account": "$(id)"}}, "slurm.account must be a name without spaces"),
    ("python-newline", {"slurm": {"python": "/usr/bin/python3\nid"}}, "slurm.python '/usr/bin/python3\\nid' holds '\\n'"),
    ("condor-category-newline", {"condor": {"job_category": "long\nexecutable = /bin/sh"}}, "condor.job_category 'long\\nexecutable = /bin/sh'"),
    ("condor-getenv-bool-list", {"condor": {"getenv": [True]}}, "condor.getenv must list variable names"),
    ("condor-getenv-all", {"condor": {"getenv": ["*"]}}, "condor.getenv would copy"),
    ("condor-os-space", {"condor": {"use_os": "el9 extra"}}, "condor.use_os 'el9 extra' holds a space"),
    ("condor-memory-newline", {"condor": {"request_memory": "16GB\nqueue 100"}}, "condor.request_memory must be a size"),
    ("condor-cpus-text", {"condor": {"request_cpus": "8; rm"}}, "condor.request_cpus must be an integer"),
    ("condor-log-dir-macro", {"condor": {"log_dir": "logs/$(Cluster)"}}, "HTCondor expands as a macro"),
    ("condor-python-newline", {"condor": {"python": "/usr/bin/python3\nqueue"}}, "condor.python"),
    ("data-newline", {"data": "data/x.h5\nJOB evil evil.sub"}, "data 'data/x.h5\\nJOB evil evil.sub' holds '\\n'"),
    ("data-line-separator", {"data": "data/x\u2029.h5"}, "paragraph separator"),
]


@pytest.mark.parametrize(("changes", "words"), [r[1:] for r in REFUSED], ids=[r[0] for r in REFUSED])
def test_a_hostile_value_is_refused_at_load_with_one_line_naming_it(tmp_path, changes, words):
    p = write(tmp_path, grid_doc(tmp_path, **changes))
    with pytest.raises(BadSetting) as e:
        load_grid(p, "demo", base_dir=ROOT)
    msg = str(e.value)
    assert words in msg and "\n" not in msg.replace("\\n", ""), msg
    assert not (tmp_path / "jobs").exists() and not (tmp_path / "dag").exists()  # nothing written


# odd but harmless: rendered, and each scheduler reads them back whole
ODD = [
    ("data-with-space-and-shell", {"data": "my data/$(touch PWNED) `id`;x 'q'.h5"}),
    ("python-with-space", {"slurm": {"python": "PYDIR/my python"}}),
    ("dotted-name", {"name": "bvd.v2_final-3"}),
]


def _recorder(path) -> None:
    """A stand-in Python that writes its arguments and environment as JSON beside itself."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!{sys.executable}\nimport json, os, sys\n"
                    "open(os.path.join(os.path.dirname(sys.argv[0]), 'called.json'), 'w').write(json.dumps({'argv': sys.argv[1:], "
                    "'env': dict(os.environ)}))\n")
    path.chmod(0o700)


def render_odd(tmp_path, changes, monkeypatch):
    monkeypatch.setenv("THESIS_MLFLOW_OUTPUTS", str(tmp_path / "out"))
    monkeypatch.chdir(tmp_path)
    doc = grid_doc(tmp_path, **changes)
    if "python" in doc["slurm"] and doc["slurm"]["python"]:
        doc["slurm"]["python"] = str(tmp_path / doc["slurm"]["python"])
    p = write(tmp_path, doc)
    g = load_grid(p, "demo", base_dir=tmp_path)
    runs = {c: f"{i:032x}" for i, c in enumerate(g.cells())}
    return g, p, runs


@pytest.mark.parametrize("changes", [r[1] for r in ODD], ids=[r[0] for r in ODD])
def test_an_odd_value_renders_a_script_that_runs_exactly_its_command(tmp_path, changes, monkeypatch):
    """``bash -n`` accepts every script; run with a stand-in Python, the pack script calls it with
    the cell's arguments whole (the data path with its blanks, quotes and shell words intact),
    creates nothing else, and hands on no variable outside the allow-list."""
    g, p, runs = render_odd(tmp_path, changes, monkeypatch)
    scripts = slurm.write_scripts(g, runs, "http://login01:5000", "7", p, environ={"PATH": os.environ["PATH"], "HOME": "/h"})
    for s in scripts:
        assert subprocess.run(["bash", "-n", str(s.path)], capture_output=True).returncode == 0, s.text
        directives = [ln for ln in s.text.splitlines()[1:] if ln.startswith("#SBATCH ")]
        assert directives and all(len(ln.split()) == 2 for ln in directives), directives  # one word each: sbatch reads them whole
        export = [ln for ln in directives if ln.startswith("#SBATCH --export=")]
        assert len(export) == 1 and "PATH" in export[0].split("=", 1)[1].split(",") and "ALL" not in export[0]
    pack = next(s for s in scripts if s.kind == "pack")
    rec = tmp_path / "rec" / "python"
    _recorder(rec)
    text = pack.text.replace(f"exec {__import__('shlex').quote(g.slurm.python or sys.executable)} ", f"exec {rec} ")
    run = subprocess.run(["bash", "-c", text], capture_output=True, text=True, cwd=tmp_path,
                         env={"PATH": os.environ["PATH"], "SLURM_JOB_ID": "1", "PLANTED": "x"})
    assert run.returncode == 0, run.stderr
    called = json.loads((rec.parent / "called.json").read_text())
    assert called["argv"][:3] == ["-m", "steps.grid", "pack"] and called["argv"][3] == str(p)
    assert not list(tmp_path.rglob("PWNED")) and not (tmp_path / "id").exists()
    assert called["env"]["MLFLOW_TRACKING_URI"] == "http://login01:5000"
    cell_runs = dict(kv.split("=") for kv in called["argv"][called["argv"].index("--runs") + 1].split(","))
    assert set(cell_runs) <= {c.name for c in g.cells()}


@pytest.mark.parametrize("changes", [r[1] for r in ODD], ids=[r[0] for r in ODD])
def test_an_odd_value_reads_back_whole_from_the_submit_files(tmp_path, changes, monkeypatch):
    """The Condor files of the same rows: every submit file parses (``htcondor2.Submit``), a
    train node's arguments read back (HTCondor's new syntax, the DAG's variable expanded) as the
    local backend's command, and no DAG line is other than DAGMan's keywords."""
    import htcondor2

    g, p, runs = render_odd(tmp_path, changes, monkeypatch)
    if "$(" in g.data:
        with pytest.raises(BadSetting, match="HTCondor expands as a macro"):
            write_dag(g, runs, "http://login01:5000", "7", tmp_path, p, out_dir=tmp_path / "dag" / g.run_name)
        return
    dag = write_dag(g, runs, "http://login01:5000", "7", tmp_path, p, out_dir=tmp_path / "dag" / g.run_name)
    keywords = ("JOB", "VARS", "RETRY", "PARENT", "FINAL", "NODE_STATUS_FILE", "#", "SCRIPT", "CATEGORY", "MAXJOBS", "CONFIG")
    lines = [ln for ln in dag.read_text().splitlines() if ln.strip()]
    assert all(ln.startswith(keywords) for ln in lines), lines
    for f in dag.parent.glob("*.sub"):
        sub = htcondor2.Submit(f.read_text())
        condorsyntax.words(sub["arguments"])
        env = condorsyntax.environment(sub["environment"])
        assert env["MLFLOW_TRACKING_URI"] == "http://login01:5000"
    train = htcondor2.Submit((dag.parent / "train.sub").read_text())
    node_vars = dict(__import__("re").findall(r'(\w+)="((?:[^"\\]|\\.)*)"', next(ln for ln in lines if ln.startswith("VARS train"))))
    args = node_vars["args"].replace('\\"', '"').replace("\\\\", "\\")
    argv = condorsyntax.words(train["arguments"].replace("$(args)", args))
    cell = next(c for c in g.cells() if runs[c] == node_vars["run_id"])
    assert argv == ["-m", "steps.train", *g.train_args(cell.replace(device="cuda"))]
    assert g.data in argv


@pytest.mark.parametrize("uri", ["http://jobs:hunter2@login01:5000", "http://login01:5000/?password=hunter2",
                                 "https://login01:5000/?token=hunter2", "postgresql://db/mlflow?sslmode=require&password=hunter2"])
def test_a_uri_with_a_secret_writes_no_file_and_prints_it_masked(tmp_path, monkeypatch, uri):
    monkeypatch.setenv("THESIS_MLFLOW_OUTPUTS", str(tmp_path / "out"))
    p = write(tmp_path, grid_doc(tmp_path))
    g = load_grid(p, "demo", base_dir=ROOT)
    runs = {c: f"{i:032x}" for i, c in enumerate(g.cells())}
    with pytest.raises(BadSetting, match="holds a login") as e:
        slurm.write_scripts(g, runs, uri, "7", p)
    assert "hunter2" not in str(e.value)
    with pytest.raises(BadSetting, match="holds a login") as e:
        write_dag(g, runs, uri, "7", ROOT, p, out_dir=tmp_path / "dag" / "x")
    assert "hunter2" not in str(e.value)
    assert not (tmp_path / "jobs").exists() and not (tmp_path / "dag").exists()


def test_dry_runs_with_a_secret_in_the_uri_refuse_before_contacting_the_store(tmp_path, monkeypatch):
    """``grid run --dry-run`` on both batch backends: refused in one line, the password masked,
    before any store is contacted (the URI's database host does not even resolve)."""
    from click.testing import CliRunner

    from steps.cli import main

    monkeypatch.setenv("THESIS_MLFLOW_OUTPUTS", str(tmp_path / "out"))
    p = write(tmp_path, grid_doc(tmp_path))
    for backend in ("slurm", "condor"):
        monkeypatch.setenv("MLFLOW_TRACKING_URI", "postgresql://u@db.nonexistent.invalid/mlflow?password=hunter2")
        res = CliRunner().invoke(main, ["grid", "run", str(p), "--backend", backend, "--scale", "demo", "--dry-run"])
        assert res.exit_code != 0 and "holds a login" in res.output and "hunter2" not in res.output, res.output
        assert res.output.strip().count("\n") == 0 and "Traceback" not in res.output
        monkeypatch.setenv("MLFLOW_TRACKING_URI", "postgresql://db.nonexistent.invalid/mlflow")
        res = CliRunner().invoke(main, ["grid", "run", str(p), "--backend", backend, "--scale", "demo", "--dry-run"])
        assert res.exit_code != 0 and "cannot be reached" in res.output and "does not resolve" in res.output, res.output
        assert "Traceback" not in res.output
    assert not (tmp_path / "jobs").exists()


def test_the_caller_sbatch_variables_do_not_reach_sbatch_and_defaults_fill_only_null_keys(tmp_path, monkeypatch):
    monkeypatch.setenv("THESIS_MLFLOW_OUTPUTS", str(tmp_path / "out"))
    env = {"PATH": "/bin", "SBATCH_EXPORT": "ALL", "SBATCH_OUTPUT": "/tmp/leak.out", "SLURM_EXPORT_ENV": "ALL", "SLURM_CONF": "/c/slurm.conf",
           "SBATCH_PARTITION": "gpu_a100", "SBATCH_ACCOUNT": "phd123"}
    clean = slurm.sbatch_environment(env)
    assert clean == {"PATH": "/bin", "SLURM_CONF": "/c/slurm.conf"}
    doc = grid_doc(tmp_path, slurm={"partition": "gpu_h100"})
    p = write(tmp_path, doc)
    g = load_grid(p, "demo", base_dir=ROOT)
    assert slurm.shell_defaults(g, env) == {"account": ("phd123", "SBATCH_ACCOUNT")}  # the grid's partition wins
    scripts = slurm.write_scripts(g, {c: "0" * 32 for c in g.cells()}, "http://login01:5000", "7", p, environ=env)
    text = scripts[0].text
    assert "#SBATCH --partition=gpu_h100" in text and "#SBATCH --account=phd123" in text and "gpu_a100" not in text
    with pytest.raises(BadSetting, match="SBATCH_ACCOUNT"):
        slurm.shell_defaults(g, {"SBATCH_ACCOUNT": "phd\n#SBATCH --export=ALL"})


def test_a_job_folder_open_to_others_or_below_a_folder_others_can_swap_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("THESIS_MLFLOW_OUTPUTS", str(tmp_path / "out"))
    p = write(tmp_path, grid_doc(tmp_path))
    g = load_grid(p, "demo", base_dir=ROOT)
    runs = {c: "0" * 32 for c in g.cells()}
    folder = slurm.job_dir(g)
    folder.mkdir(parents=True, mode=0o755)
    os.chmod(folder, 0o755)  # readable by all: the scripts, the record and the logs would be
    with pytest.raises(UnsafePath, match="open to group or others"):
        slurm.write_scripts(g, runs, "http://login01:5000", "7", p)
    os.chmod(folder, 0o700)
    os.chmod(folder.parent, 0o777)  # a folder above it others can write: they could swap the job folder
    with pytest.raises(UnsafePath, match="a folder above the SLURM job folder"):
        slurm.write_scripts(g, runs, "http://login01:5000", "7", p)
    os.chmod(folder.parent, 0o700)
    assert slurm.write_scripts(g, runs, "http://login01:5000", "7", p)
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700


def test_a_job_folder_swapped_for_a_link_is_not_followed(tmp_path, monkeypatch):
    """The scripts written, then the folder replaced by a symbolic link to a folder the attacker
    reads: the jobs record is not written through it, nor read from it."""
    monkeypatch.setenv("THESIS_MLFLOW_OUTPUTS", str(tmp_path / "out"))
    p = write(tmp_path, grid_doc(tmp_path))
    g = load_grid(p, "demo", base_dir=ROOT)
    slurm.write_scripts(g, {c: "0" * 32 for c in g.cells()}, "http://login01:5000", "7", p)
    folder = slurm.job_dir(g)
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    folder.rename(tmp_path / "moved")
    folder.symlink_to(theirs)
    with pytest.raises(UnsafePath, match="not a real folder of yours"):
        slurm._record(folder, {"prepare": "1", "packs": []})
    assert list(theirs.iterdir()) == []
    (theirs / "jobs.json").write_text(json.dumps({"submissions": [{"prepare": "666", "packs": []}]}))
    with pytest.raises(UnsafePath, match="not a real folder of yours"):
        slurm.read_jobs(folder)
