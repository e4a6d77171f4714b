"""`noiseshift inspect`: what is in a trajectory (or estimates) file, and is it valid."""

from __future__ import annotations

from pathlib import Path

import typer
from rich import box
from rich.table import Table
from rich.text import Text

from ..errors import NoiseshiftError
from ..io import validate
from .common import app, console, err_console, fail, print_json, progress

# Below this size a scan is quick enough that a progress bar would only flicker.
_BAR_BYTES = 256 * 2**20


@app.command("inspect")
def inspect_cmd(
    file: Path = typer.Argument(..., help="A trajectory file (.h5), or an estimates file."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    quick: bool = typer.Option(
        False, "--quick", help="Check structure only; skip reading every state for NaN/Inf."),
) -> None:
    """List the runs in FILE (steps, N, shape, schedule, sampler, guidance, seed, complete)
    and check the file against trajectory format v1 (docs/trajectory-format.md).

    A run marked INCOMPLETE stopped before it finished (killed or crashed): its recorded
    steps are intact and usable. A bad file gets one line naming the problem and exit code 2.
    """
    try:
        summary = _validate(file, scan=not quick, quiet=as_json)
    except NoiseshiftError as e:
        fail(e.problem, e.path)
    if as_json:
        print_json(summary)
    elif summary["kind"] == "estimates":
        _print_estimates(summary)
    else:
        _print_trajectories(summary)


def _validate(file: Path, scan: bool, quiet: bool) -> dict:
    show = scan and not quiet and err_console.is_terminal and _size(file) > _BAR_BYTES
    if not show:
        return validate(file, scan=scan)
    with progress() as p:
        task = p.add_task("checking states", total=None)
        return validate(file, scan=scan,
                        progress=lambda done, total: p.update(task, completed=done, total=total))


def _size(file: Path) -> int:
    try:
        return file.stat().st_size
    except OSError:
        return 0


def _short(d: dict, main: str = "name", none: str = "-") -> str:
    """{'name': 'nag', 'scale': 1.5} -> 'nag (scale=1.5)', every value in full."""
    if not d:
        return none
    rest = ", ".join(f"{k}={_fmt(v)}" for k, v in d.items() if k != main)
    head = str(d.get(main, ""))
    return f"{head} ({rest})" if head and rest else head or rest


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}={_fmt(x)}" for k, x in v.items()) + "}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(map(_fmt, v)) + "]"
    return str(v)


_RUN = ("run", {"style": "bold", "no_wrap": True})
_WHAT = (("steps", {"justify": "right"}), ("N", {"justify": "right"}), ("shape", {}),
         ("seed", {"justify": "right"}), ("status", {"no_wrap": True}))
_HOW = (("schedule", {}), ("sampler", {}), ("guidance", {}))


def _table(title: str, columns, rows: list[dict]) -> Table:
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD)
    for col, kw in columns:
        table.add_column(col, min_width=len(col), overflow="fold", **kw)
    for r in rows:
        table.add_row(*(r[col] for col, _ in columns))
    return table


def _trajectory_tables(s: dict) -> list:
    """One table when the terminal is wide enough for it; else what each run is (steps, N,
    shape, seed, status) in a table and how it was made (schedule, sampler, guidance) as a
    list below, so that no run name or status is cut and the settings wrap whole."""
    rows = [{"run": r["name"], "steps": str(r["steps"]), "N": str(r["n"]),
             "shape": "×".join(map(str, r["shape"])), "schedule": _short(r["schedule"]),
             "sampler": _short(r["sampler"]),
             "guidance": _short(r["guidance"], main="kind", none="none"),
             "seed": "-" if r["seed"] is None else str(r["seed"]),
             "status": "complete" if r["complete"] else "[bold yellow]INCOMPLETE[/]"}
            for r in s["runs"]]
    one = _table(str(s["path"]), (_RUN, *_WHAT[:3], *_HOW, *_WHAT[3:]), rows)
    natural = console.measure(one, options=console.options.update_width(10**4)).maximum
    if natural <= console.width:
        return [one]
    out: list = [_table(str(s["path"]), (_RUN, *_WHAT), rows),
                 Text("How each run was made:", style="bold")]
    for r in rows:
        grid = Table.grid(padding=(0, 1))
        grid.add_column(no_wrap=True)
        grid.add_column(overflow="fold")
        for col, _ in _HOW:
            grid.add_row(f"  {col}", Text(r[col]))
        out += [Text(r["run"], style="bold"), grid]
    return out


def _print_trajectories(s: dict) -> None:
    for table in _trajectory_tables(s):
        console.print(table)
    what = "checked, every state finite" if s["scanned"] else "structure checked (--quick)"
    console.print(f"[green]valid[/] {s['format']} v{s['version']} file, {len(s['runs'])} "
                  f"run(s); {what}.", highlight=False)
    if any(not r["complete"] for r in s["runs"]):
        console.print("[yellow]INCOMPLETE[/] runs stopped before they finished (killed or "
                      "crashed): their recorded steps are usable, their samples are not.",
                      highlight=False)


def _print_estimates(s: dict) -> None:
    table = Table(title=f"{s['path']} (estimates of {s['source']})", title_justify="left",
                  box=box.SIMPLE_HEAD)
    for col in ("run", "estimator", "steps", "N", "mean Δ", "max |Δ|"):
        table.add_column(col, justify="left" if col in ("run", "estimator") else "right",
                         no_wrap=col in ("run", "estimator"))
    for r in s["runs"]:
        table.add_row(r["run"], r["estimator"], str(r["steps"]), str(r["n"]),
                      f"{r['mean_delta']:+.4f}", f"{r['max_abs_delta']:.4f}")
    console.print(table)
    console.print(f"[green]valid[/] {s['format']} v{s['version']} file: noise-level estimates "
                  f"(t' per recorded state) made by `noiseshift estimate`. Δ = t' - "
                  f"reference(t), the shift; max |Δ|: the largest |mean Δ| of any step.",
                  highlight=False)
