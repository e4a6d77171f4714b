"""What every command shares: the typer app and its table of commands, consoles, progress
bars, one-line errors and the --data option.

Nothing here loads torch or the library: `noiseshift --help` lists the commands from
`COMMANDS` and imports a command's module only when that command runs (click's LazyGroup
pattern), so each command pays only for what it uses.
"""

from __future__ import annotations

import importlib
import json
import sys
from contextlib import contextmanager
from difflib import get_close_matches
from typing import NoReturn

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
from typer.core import TyperCommand, TyperGroup
from typer.main import get_command_from_info

from ..errors import NoiseshiftError

#: Each command: its module in this package, and the summary `noiseshift --help` lists (one
#: line at 80 columns; the command's own docstring says the rest). The order is the order
#: `--help` lists them: the story's order. tests/test_startup.py checks it against the modules.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("demo", "The whole story on built-in data, end to end."),
    "train": ("train", "Train a denoiser and save it."),
    "train-estimator": ("train_estimator", "Train a noise-level estimator for your data."),
    "sample": ("sample", "Sample from a denoiser and record the trajectory."),
    "estimate": ("estimate", "Read the noise level t' of every recorded state."),
    "report": ("report", "Tables and figures of every run's noise shift."),
    "inspect": ("inspect", "List the runs in a trajectory file; validate it."),
    "probe": ("probe", "Does the model read its noise level from t or from x?"),
    "audit": ("audit", "The sampler's own shift, with a perfect model."),
    "decompose": ("decompose", "Split a run's shift into sampler and network parts."),
    "encode": ("encode", "Encode images into VAE latents for an estimator."),
    "tune": ("tune", "At a budget of model evaluations, which correction to use."),
    "retime": ("retime", "A time grid whose states read at their labels."),
}


class LazyGroup(TyperGroup):
    """The `noiseshift` group: lists the commands from `COMMANDS`, and imports a command's
    module (which registers it on `app`) the first time the command is looked up to run."""

    #: True while the group's own help is drawn: the list then shows the table's help.
    listing = False

    def list_commands(self, ctx: typer.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: typer.Context, cmd_name: str) -> TyperCommand | None:
        if cmd_name not in COMMANDS:
            return None
        if self.listing:  # the list shows the table's summary, loaded or not
            summary = COMMANDS[cmd_name][1]
            return TyperCommand(cmd_name, help=summary, short_help=summary)
        if cmd_name not in self.commands:
            self.commands[cmd_name] = _load_command(cmd_name)
        return self.commands[cmd_name]

    def resolve_command(self, ctx: typer.Context, args: list[str]):
        # typer suggests from the commands loaded so far; suggest from all of them.
        name = args[0] if args else "-"
        matches = [] if name in COMMANDS or name.startswith("-") else \
            get_close_matches(name, list(COMMANDS))
        if matches:
            ctx.fail(f"No such command {name!r}. Did you mean {', '.join(map(repr, matches))}?")
        return super().resolve_command(ctx, args)

    def format_help(self, ctx: typer.Context, formatter) -> None:
        self.listing = True
        try:
            super().format_help(ctx, formatter)
        finally:
            self.listing = False


def _load_command(name: str) -> TyperCommand:
    """Import the command's module and build its click command as typer would have."""
    importlib.import_module(f"{__package__}.{COMMANDS[name][0]}")
    info = next(c for c in app.registered_commands if c.name == name)
    return get_command_from_info(info, pretty_exceptions_short=app.pretty_exceptions_short,
                                 rich_markup_mode=app.rich_markup_mode)


app = typer.Typer(
    name="noiseshift",
    help="Diagnose and correct noise shift in diffusion and flow-matching samplers.\n\n"
    "Typical session: `noiseshift sample --nag-scale 1.5`, then "
    "`noiseshift estimate trajectories.h5`, then `noiseshift report --plot`.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    cls=LazyGroup,
)


@app.callback()
def _group() -> None:
    # No options of its own: a callback makes typer build the group even before any command
    # module has registered a command on it.
    pass


console = Console()
err_console = Console(stderr=True)


def fail(problem: str, path=None, code: int = 2) -> NoReturn:
    """Print one line naming the file and the problem, exit non-zero."""
    msg = str(NoiseshiftError(problem, path))  # one line, whatever the path holds
    err_console.print(f"[bold red]error:[/] {escape(msg)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def print_json(obj) -> None:
    """Plain JSON on stdout for scripts (no rich markup, no wrapping)."""
    sys.stdout.write(json.dumps(obj, indent=2, default=_json_default) + "\n")
    sys.stdout.flush()


def _json_default(o):
    # numpy scalars and arrays: `tolist` gives plain numbers (asked for by name, so that the
    # CLI's start does not import numpy).
    if hasattr(o, "tolist"):
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
