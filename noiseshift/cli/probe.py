"""`noiseshift probe`: does a model read its noise level from its t input or from x?"""

from __future__ import annotations

import typer
from rich.table import Table

from ..analysis.probe import probe
from ..data import load_data
from ..errors import NoiseshiftError
from .common import app, console, print_json
from .denoisers import denoiser_with_progress


def _floats(text: str, option: str) -> tuple[float, ...]:
    try:
        vals = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise NoiseshiftError(f"{option} takes comma-separated numbers, got {text!r}") from None
    if not vals:
        raise NoiseshiftError(f"{option} needs at least one number")
    return vals


@app.command("probe")
def probe_command(
    model: str = typer.Option(None, "--model", "-m", help="Model checkpoint; default: the "
                              "built-in digits model."),
    data: str = typer.Option(None, "--data", help="Data to noise (name or file); default: "
                             "what the model was trained on."),
    ts: str = typer.Option("0.2,0.4,0.6,0.8", "--ts", help="Scheduled t values told to the "
                           "model."),
    rhos: str = typer.Option("0.1,0.2,0.3", "--rhos", help="Relative shifts: states are "
                             "truly noised to t' = t (1 + rho)."),
    n: int = typer.Option(256, "--n", min=1, help="States per (t, rho) cell."),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("auto", "--device"),
    json_out: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
):
    """Probe whether a model trusts its t input, the signal classifier-free NAG needs.

    States truly noised to t' = t(1+rho) are fed to the model while it is told t. On the
    directions that hold only noise, the conditional branch's response gain is 1 for a
    model that trusts t, and t/t' for one that reads its noise level from x; the null-t
    branch can only read x. Classifier-free NAG corrects in proportion to the difference
    of the two gains, so if they are equal it has nothing to correct with.
    """
    net = denoiser_with_progress(model, device, quiet=json_out)
    spec = data or net.config.get("data")
    if spec is None:
        raise NoiseshiftError("the model does not say what data it was trained on; pass --data")
    dataset = load_data(spec)
    if tuple(dataset.shape) != tuple(net.config.get("shape", dataset.shape)):
        raise NoiseshiftError(f"data of shape {tuple(dataset.shape)} do not fit a model of "
                              f"shape {tuple(net.config['shape'])}")
    res = probe(net, dataset, rhos=_floats(rhos, "--rhos"), ts=_floats(ts, "--ts"), n=n,
                seed=seed)
    if json_out:
        print_json(res.to_dict())
        return
    null = "gain_null" in res.rows[0]
    table = Table(title=f"Response gain on noise-only directions ({res.directions})",
                  caption="gain 1: the model trusts t; x-reader: the gain of a model that reads "
                  "its noise level from x (t/t' for velocity under the linear schedule); "
                  "CF-NAG's signal is cond - null-t")
    cols = ["t", "rho", "t'", "cond"] + (["null-t"] if null else []) + ["x-reader"] + (
        ["signal"] if null else []) + ["ideal signal"]
    for col in cols:
        table.add_column(col, justify="right")
    for r in res.rows:
        cells = [f"{r['t']:.2f}", f"{r['rho']:.2f}", f"{r['t_true']:.3f}", f"{r['gain_cond']:.3f}"]
        if null:
            cells.append(f"{r['gain_null']:.3f}")
        cells.append(f"{r['ideal_null']:.3f}")
        if null:
            cells.append(f"{r['signal']:+.3f}")
        cells.append(f"{r['ideal_signal']:+.3f}")
        table.add_row(*cells)
    console.print(table)
    console.print(f"[bold]verdict:[/] {res.verdict}", highlight=False)
