"""Grid definition: YAML -> cells (``CellSpec``) -> the exact commands a cell runs, and its packs.

MLflow-free: the driver (``thesis_mlflow.grid.driver``) creates the runs and hands their ids in here.
A ``demo`` and a ``full`` scale are selections of one YAML file (``scales:``), not copies.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml

from thesis_mlflow.errors import BadSetting, MissingInput
from thesis_mlflow.grid.condor.settings import CONDOR_DEFAULTS, PER_CELL, CondorSpec, condor_spec, pack_resources  # noqa: F401 (re-exported)
from thesis_mlflow.grid.quoting import check_name, check_path
from thesis_mlflow.grid.rehearsal import SUFFIX, Rehearsal
from thesis_mlflow.grid.slurm.settings import SlurmSpec, slurm_spec
from thesis_mlflow.spec import (
    CODEBOOK_SIZE,
    DEFAULT_DATA,
    FACTORS,
    METS,
    POOLINGS,
    TASKS,
    TOKENIZERS,
    VECTS,
    VQVAE_EPOCHS,
    CellSpec,
    check_margin,
)

TOP_KEYS = {"name", "description", "factors", "binned_ambre_path", "data", "task", "binning", "scales", "condor", "slurm", "report"}
REPORT_KEYS = {"margin"}  # the summary's settings: the equivalence margin in AUC (``report.equivalence``)
TRAIN_KEYS = {"epochs", "batch_size", "lr", "weight_decay", "warmup_steps", "dropout", "d_model", "n_layers", "n_heads", "d_ff",
              "max_train_events", "max_eval_events", "device", "step_mode"}
VQVAE_KEYS = {"epochs", "codebook_size", "max_events"}
BINNING_KEYS = {"n_bins", "phi", "fit_on"}
@dataclass
class Grid:
    name: str
    scale: str
    factors: dict
    seeds: list
    data: str
    task: str
    binned_ambre: dict  # vect -> path of the colleague's file
    binning: dict
    train: dict
    vqvae: dict
    condor: CondorSpec = field(default_factory=CondorSpec)
    slurm: SlurmSpec = field(default_factory=SlurmSpec)
    report: dict = field(default_factory=dict)  # {"margin": AUC} when the grid file sets it
    source: Path | None = None
    rehearsal: Rehearsal | None = None  # a rehearsal of this scale (``grid.rehearsal``): its own runs, few steps per cell

    @property
    def run_name(self) -> str:
        """``grid.name`` tag: the YAML name, suffixed by the scale unless it is ``full``, and by
        ``-rehearsal`` for a rehearsal (its own parent, children, jobs and folders)."""
        name = self.name if self.scale == "full" else f"{self.name}-{self.scale}"
        return name + SUFFIX if self.rehearsal else name

    def closing_argv(self, grid_file: str | Path, backend: str) -> list[str]:
        """The job after every pack (``python`` + these): the report, or a rehearsal's forecast for ``backend``."""
        if self.rehearsal:
            return ["-m", "steps.grid", "forecast", str(grid_file), *self.load_args(), "--backend", backend]
        return ["-m", "steps.report", "--grid", self.run_name]

    def load_args(self) -> list[str]:
        """How a job's command names this grid's scale (and rehearsal) after the grid file."""
        return ["--scale", self.scale, *(self.rehearsal.args() if self.rehearsal else [])]

    @property
    def tokenizers(self) -> list[str]:
        toks = list(self.factors["tokenizer"])
        if self.binned_ambre and "binned_ambre" not in toks:
            toks.append("binned_ambre")
        return toks

    def cells(self) -> list[CellSpec]:
        """Every cell of the grid at this scale, each a complete, validated train spec."""
        base = {"task": self.task, "data": self.data, **self.train, **self.binning}
        vq = {"vqvae_epochs": self.vqvae.get("epochs", VQVAE_EPOCHS), "codebook_size": self.vqvae.get("codebook_size", CODEBOOK_SIZE),
              "vqvae_max_events": self.vqvae.get("max_events", 0)}
        out = []
        for seed, tok, pool, met, vect in itertools.product(self.seeds, self.tokenizers, self.factors["pooling"], self.factors["met"],
                                                            self.factors["vect"]):
            if tok == "binned_ambre" and vect not in self.binned_ambre:
                continue  # the colleague's file exists for these vects only
            out.append(CellSpec(tokenizer=tok, pooling=pool, met=bool(met), vect=int(vect), seed=int(seed), **base,
                                **(vq if tok == "vqvae" else {}), binned_path=self.binned_ambre.get(vect, "") if tok == "binned_ambre" else ""))
        return out

    def train_args(self, cell: CellSpec) -> list[str]:
        """Arguments of ``python -m steps.train`` for one cell: the same locally and on Condor."""
        return cell.cli_args()

    def packs(self, cells: list[CellSpec] | None = None, per_job: int | None = None) -> list[list[CellSpec]]:
        """``cells`` (default: all) in packs of ``per_job`` (default ``condor.cells_per_job``; SLURM
        passes ``slurm.cells_per_job``), one GPU job each.

        With more than one cell per job a pack holds whole configurations (all the seeds of each
        that are in ``cells``), as many as fit in ``cells_per_job`` and at least one: the seeds of a
        configuration train as one stacked model on the job's GPU (``--stack-seeds``), and the
        model is compiled once per configuration, not once per seed."""
        k = int(per_job if per_job is not None else self.condor.cells_per_job)
        cells = self.cells() if cells is None else cells
        configs = [[c for c, _ in seeds] for seeds in by_configuration([(c, "") for c in cells]).values()]  # in grid order
        if k <= 1:
            return [[c] for seeds in configs for c in seeds]
        packs: list[list[CellSpec]] = []
        for seeds in configs:
            if packs and len(packs[-1]) + len(seeds) <= k:
                packs[-1].extend(seeds)
            else:
                packs.append(list(seeds))
        return packs


def _check(keys, allowed, where):
    bad = set(keys) - set(allowed)
    if bad:
        raise BadSetting(f"{where}: unknown keys {sorted(bad)}; allowed: {sorted(allowed)}")


def load_grid(path: str | Path, scale: str = "full", base_dir: str | Path | None = None, rehearsal: Rehearsal | None = None) -> Grid:
    """Read and validate a grid YAML; every mistake is named before anything runs. ``rehearsal``:
    the grid as a rehearsal runs it (``grid.rehearsal``).

    Relative data paths are made absolute against ``base_dir`` (the project directory, where
    the jobs run), so the driver, local jobs and Condor jobs all read the same file.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingInput(f"grid file {path} not found")
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise BadSetting(f"{path}: not valid YAML ({e})") from e
    check_path(str(path), "the grid file's path")  # it is written into every job's command line
    if not isinstance(doc, dict):
        raise BadSetting(f"{path}: a grid file is a mapping of keys (name, factors, scales, ...); got {type(doc).__name__}")
    _check(doc, TOP_KEYS, str(path))
    if not doc.get("name"):
        raise BadSetting(f"{path}: 'name' is required")
    # the name becomes job names, file and folder names, tags: one safe set of characters, checked first
    check_name(doc["name"], f"{path}: name")
    if str(doc["name"]).endswith(SUFFIX):
        raise BadSetting(f"{path}: name {doc['name']!r} ends in {SUFFIX!r}, which names a grid's rehearsal; choose another name")
    scales = doc.get("scales") or {}
    if scale not in scales:
        raise BadSetting(f"{path}: scale {scale!r} not defined; defined scales: {', '.join(scales) or 'none'}")
    check_name(scale, f"{path}: scales key")
    check_name(doc["name"] if scale == "full" else f"{doc['name']}-{scale}", f"{path}: name with its scale")
    sc = scales[scale] or {}
    _check(sc, {"seeds", "train", "vqvae"}, f"{path}: scales.{scale}")
    f = doc.get("factors") or {}
    _check(f, FACTORS, f"{path}: factors")
    allowed = {"tokenizer": [t for t in TOKENIZERS if t != "binned_ambre"], "pooling": list(POOLINGS), "met": list(METS), "vect": list(VECTS)}
    factors = {}
    for k in FACTORS:
        levels = f.get(k, allowed[k])
        if not isinstance(levels, list) or not levels:
            raise BadSetting(f"{path}: factors.{k} must be a non-empty list")
        for lv in levels:
            if lv not in allowed[k]:
                raise BadSetting(f"{path}: factors.{k} has level {lv!r}; allowed: {allowed[k]} (binned_ambre comes from binned_ambre_path)")
        factors[k] = levels
    seeds = sc.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and s >= 0 for s in seeds):
        raise BadSetting(f"{path}: scales.{scale}.seeds must be a list of integers >= 0")
    ambre = doc.get("binned_ambre_path")
    if ambre is None:
        ambre = {}
    elif isinstance(ambre, str):
        ambre = {4: ambre}  # the colleague's file is a 4-vector binning unless said otherwise
    elif isinstance(ambre, dict):
        ambre = {int(k): str(v) for k, v in ambre.items() if v}
        if set(ambre) - {4, 5}:
            raise BadSetting(f"{path}: binned_ambre_path keys must be 4 and/or 5")
    else:
        raise BadSetting(f"{path}: binned_ambre_path must be a path or a mapping {{4: path, 5: path}}")
    task = doc.get("task", "4t_vs_bg")
    if task not in TASKS:
        raise BadSetting(f"{path}: task must be one of {', '.join(TASKS)}; got {task!r}")
    train = dict(sc.get("train") or {})
    _check(train, TRAIN_KEYS, f"{path}: scales.{scale}.train")
    vq = dict(sc.get("vqvae") or {})
    _check(vq, VQVAE_KEYS, f"{path}: scales.{scale}.vqvae")
    binning = dict(doc.get("binning") or {})
    _check(binning, BINNING_KEYS, f"{path}: binning")
    condor = condor_spec(doc.get("condor"), str(path))
    base = Path(base_dir) if base_dir is not None else Path.cwd()

    def absolute(p, key: str) -> str:
        p = Path(check_path(p, f"{path}: {key}")).expanduser()  # written into the jobs' command lines (quoted there)
        return str(p if p.is_absolute() else (base / p).resolve())

    ambre = {k: absolute(v, f"binned_ambre_path[{k}]") for k, v in ambre.items()}
    report = dict(doc.get("report") or {})
    _check(report, REPORT_KEYS, f"{path}: report")
    if "margin" in report:
        try:
            report["margin"] = check_margin(report["margin"])
        except BadSetting as e:
            raise BadSetting(f"{path}: report.{e}") from e
    g = Grid(name=str(doc["name"]), scale=scale, factors=factors, seeds=seeds, data=absolute(doc.get("data", DEFAULT_DATA), "data"),
             task=task, binned_ambre=ambre, binning=binning, train=train, vqvae=vq, condor=condor,
             slurm=slurm_spec(doc.get("slurm"), str(path)), report=report, source=path)
    if rehearsal is not None:
        g = replace(g, train=rehearsal.train(train), vqvae=rehearsal.vqvae(vq, int(train.get("batch_size", CellSpec.batch_size))),
                    rehearsal=rehearsal)
        check_name(g.run_name, f"{path}: name with its scale and rehearsal")
    try:
        g.cells()  # every cell is a valid train spec, or nothing runs
    except (TypeError, ValueError) as e:
        raise BadSetting(f"{path}: scales.{scale}: {e}") from e
    return g


def by_configuration(todo: list[tuple[CellSpec, str]]) -> dict[CellSpec, list[tuple[CellSpec, str]]]:
    """``todo`` grouped by configuration (the cell with seed 0 as key), seeds in order, configurations in the given order."""
    out: dict[CellSpec, list[tuple[CellSpec, str]]] = {}
    for cell, rid in todo:
        out.setdefault(replace(cell, seed=0), []).append((cell, rid))
    return {k: sorted(v, key=lambda cr: cr[0].seed) for k, v in out.items()}
