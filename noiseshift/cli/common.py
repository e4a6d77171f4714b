"""What every command shares: the typer app, consoles, progress bars, one-line errors and
loading the denoiser with a bar while the default one trains."""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from typing import NoReturn

import numpy as np
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from ..data import parse_data_spec
from ..recording import load_denoiser, needs_training

app = typer.Typer(
    name="noiseshift",
    help="Diagnose and correct noise shift in diffusion and flow-matching samplers.\n\n"
    "Typical session: `noiseshift sample --nag-scale 1.5`, then "
    "`noiseshift estimate trajectories.h5`, then `noiseshift report --plot`.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)
console = Console()
err_console = Console(stderr=True)


def fail(problem: str, path=None, code: int = 2) -> NoReturn:
    """Print one line naming the file and the problem, exit non-zero."""
    msg = f"{path}: {problem}" if path is not None else problem
    err_console.print(f"[bold red]error:[/] {escape(msg)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def print_json(obj) -> None:
    """Plain JSON on stdout for scripts (no rich markup, no wrapping)."""
    sys.stdout.write(json.dumps(obj, indent=2, default=_json_default) + "\n")
    sys.stdout.flush()


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


#: Not a terminal: seconds between a running stage's lines, and the shortest stage that
#: gets a line at all (a log needs the stages that take time, not every file check).
LINE_EVERY = 30.0
LINE_MIN = 1.0


class _StageLines(Progress):
    """Progress for a log or a pipe, where a bar would vanish: a line on stderr when a stage
    ends and every LINE_EVERY seconds while it runs, with its elapsed time and an estimate
    of what is left (rich's own task timing)."""

    def __init__(self):
        super().__init__(console=err_console, disable=True)
        self._last: dict = {}  # task id -> time of its last line; None once its end is said
        self._t0 = self.get_time()

    def update(self, task_id, **kw) -> None:
        super().update(task_id, **kw)
        self._say(task_id)

    def advance(self, task_id, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._say(task_id)

    def close(self) -> None:
        """The end line of every stage still open (the command finished without error)."""
        for task in self.tasks:
            self._say(task.id, ended=True)

    def _say(self, task_id, ended: bool = False) -> None:
        task, now = self._tasks[task_id], self.get_time()
        last = self._last.get(task_id, task.start_time)
        if last is None or task.start_time is None:
            return
        elapsed = now - task.start_time
        if task.finished or ended:
            self._last[task_id] = None
            if elapsed >= LINE_MIN:
                self._line(f"{task.description}: done in {_clock(elapsed)}")
        elif now - last >= LINE_EVERY:
            self._last[task_id] = now
            left = task.time_remaining
            size = "" if task.total is None else f"{task.completed:.0f}/{task.total:.0f}, "
            self._line(f"{task.description}: {size}{_clock(elapsed)} elapsed"
                       + ("" if left is None else f", about {_clock(left)} left"))

    def _line(self, text: str) -> None:
        err_console.print(f"[{_clock(self.get_time() - self._t0)}] {text}", markup=False,
                          highlight=False, soft_wrap=True)


def _clock(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}m{s:02d}s" if m else f"{s}s"


@contextmanager
def progress(quiet: bool = False):
    """A rich progress bar on a terminal; in a log or a pipe, a line per stage with its
    elapsed time and what is left (`_StageLines`); nothing with quiet (for --json)."""
    if not quiet and not err_console.is_terminal:
        lines = _StageLines()
        with lines:
            yield lines
        lines.close()
        return
    p = Progress(
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        disable=quiet,
        transient=False,
    )
    with p:
        yield p


@contextmanager
def training_bar(quiet: bool, description: str):
    """A progress bar fed by a training loop's ``on_step(info)`` ({"step", "steps"}): yields
    that callback. An info with a "note" (what trains, where it is cached) prints it once."""
    with progress(quiet) as p:
        task = p.add_task(description, total=None)

        def on_step(info):
            if "note" in info:
                print_note(info["note"], quiet)
            p.update(task, completed=info.get("step"), total=info.get("steps"))

        yield on_step


def print_note(note: str, quiet: bool = False) -> None:
    """One line on stderr (never on stdout, which --json keeps for the JSON)."""
    if not quiet:
        err_console.print(f"[dim]note:[/] {note}", highlight=False, soft_wrap=True)


#: The one help text of --data, shared by every command.
DATA_HELP = ("The data: a built-in (`digits`, `gmm` (64-d Gaussian mixture), `photos` (32x32 "
             "RGB patches of scikit-learn's sample photos; `photos:test` the held-out region)), "
             "an array file (`x.npy`, `x.npz[:KEY]`, `x.h5[:KEY]`; (N, d), (N, H, W) or "
             "(N, C, H, W)), an image folder (PNG/JPEG/WebP, resized and centre-cropped to "
             "--size, labels from subfolders), or `latents:PATH` (VAE latents with their "
             "scaling factor).")


def data_option(default: str | None, extra: str = ""):
    """The --data option, the same grammar in every command (`data.parse_data_spec`)."""
    return typer.Option(default, "--data", help=DATA_HELP + (" " + extra if extra else ""))


def size_option(default: int | None = None):
    return typer.Option(default, "--size", min=8, max=1024, help="Image side for image data "
                        "(digits 16, photos and folders 32 by default).")


def data_spec(text: str | None, size: int | None = None, dim: int | None = None) -> dict | None:
    """A --data value as a spec dict (None stays None)."""
    return None if text is None else parse_data_spec(text, size=size, dim=dim)


def denoiser_with_progress(path: str | None, device: str = "auto", quiet: bool = False):
    """`recording.load_denoiser`, with a progress bar when the default model trains."""
    if not needs_training(path):
        return load_denoiser(path, device)
    with training_bar(quiet, "training the default model (first use only)") as on_step:
        return load_denoiser(None, device, progress=on_step)
