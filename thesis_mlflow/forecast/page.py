"""A forecast as people read it: the terminal table (warnings first), a CSV per cell and per pack,
and a short HTML page (the same tables, offline) logged on the rehearsal's parent run."""

from __future__ import annotations

import csv
import html
import io

from thesis_mlflow.forecast.arithmetic import Forecast, hms


def summary_lines(fc: Forecast) -> list[str]:
    """The headline numbers, after the warnings."""
    lim = fc.limits
    lines = [
        f"full run: {len(fc.cells)} cells in {len(fc.packs)} packs ({lim.backend}); longest pack {hms(fc.wall_s)} "
        f"(all packs at once), {fc.node_hours:.1f} node-hours" + (f", {fc.gpu_hours:.1f} GPU-hours" if lim.gpus_per_job else ""),
        f"peak memory per pack {max((p.memory_mb for p in fc.packs), default=0) / 1024:.1f} GB"
        + (f" (request: {lim.memory_key} {lim.memory_mb / 1024:.1f} GB)" if lim.memory_mb else ""),
        f"disk for all cells' artifacts {fc.disk_mb / 1024:.2f} GB; tracking server at the peak ~{fc.peak_calls_per_min:.0f} calls/min",
        f"requeues: {sum(p.requeues or 0 for p in fc.packs)} in all" + (f" (time {hms(lim.time_s)} per attempt)" if lim.time_s else
                                                                       " (no time limit known for this backend)"),
    ]
    if fc.prepare_s is not None:
        lines.insert(1, f"prepare job (binning, VQ-VAE pre-training) {hms(fc.prepare_s)}, before the packs")
    return lines


def pack_rows(fc: Forecast) -> list[dict]:
    return [{"pack": p.pack, "cells": len(p.cells), "wall": hms(p.wall_s), "wall_s": round(p.wall_s, 1), "epoch_s": round(p.epoch_s, 2),
             "requeues": "never finishes" if p.attempts is None else p.requeues, "memory_gb": round(p.memory_mb / 1024, 2),
             "ok": "no" if p.fatal else "yes"} for p in fc.packs]


def cell_rows(fc: Forecast) -> list[dict]:
    return [{"cell": c.cell, "pack": c.pack, "step_ms": round(1000 * c.step_s, 2), "epoch_s": round(c.epoch_s, 2), "cell_s": round(c.cell_s, 1),
             "setup_s": round(c.setup_s, 1), "final_eval_s": round(c.final_s, 1), "disk_mb": round(c.disk_mb, 2)} for c in fc.cells]


def table(rows: list[dict]) -> str:
    if not rows:
        return "(none)"
    keys = list(rows[0])
    width = {k: max(len(k), *(len(str(r[k])) for r in rows)) for k in keys}
    lines = ["  ".join(k.ljust(width[k]) for k in keys)]
    lines += ["  ".join(str(r[k]).ljust(width[k]) for k in keys) for r in rows]
    return "\n".join(lines)


def text(fc: Forecast, missing: list[str] | None = None) -> str:
    """What ``grid rehearse`` prints: warnings first, then the headline, the packs, how each number was had."""
    out = [f"WARNING: {w}" for w in fc.warnings]
    out += [f"NOT MEASURED: {m}" for m in (missing or [])]
    out += summary_lines(fc) + ["", table(pack_rows(fc)), "", "how each quantity was had:"]
    out += [f"  {k}: {v}" for k, v in fc.extrapolated.items()]
    out.append(f"exit status {fc.exit_code}: " + ("a pack cannot finish" if fc.exit_code else "every pack can finish"))
    return "\n".join(out)


def csv_text(rows: list[dict]) -> str:
    buf = io.StringIO()
    if rows:
        w = csv.DictWriter(buf, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return buf.getvalue()


def html_page(fc: Forecast, grid: str, missing: list[str] | None = None) -> str:
    def tab(rows: list[dict]) -> str:
        if not rows:
            return "<p>(none)</p>"
        head = "".join(f"<th>{html.escape(k)}</th>" for k in rows[0])
        body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in r.values()) + "</tr>" for r in rows)
        return f"<div class=wide><table><tr>{head}</tr>{body}</table></div>"

    warn = "".join(f"<li class=warn>{html.escape(w)}</li>" for w in fc.warnings + [f"not measured: {m}" for m in missing or []])
    how = "".join(f"<li><b>{html.escape(k)}</b>: {html.escape(v)}</li>" for k, v in fc.extrapolated.items())
    return (f"<!doctype html><meta charset=utf-8><title>Forecast: {html.escape(grid)}</title>"
            "<style>body{font-family:sans-serif;max-width:70em;margin:1em auto}.warn{color:#b00}.wide{overflow-x:auto}"
            "td,th{padding:2px 8px;text-align:right}</style>"
            f"<h1>Forecast of the full run: {html.escape(grid)}</h1>"
            + (f"<ul>{warn}</ul>" if warn else "<p>No warnings: every pack can finish.</p>")
            + "<ul>" + "".join(f"<li>{html.escape(s)}</li>" for s in summary_lines(fc)) + "</ul>"
            + "<h2>Packs</h2>" + tab(pack_rows(fc)) + "<h2>Cells</h2>" + tab(cell_rows(fc)) + f"<h2>How each number was had</h2><ul>{how}</ul>")
