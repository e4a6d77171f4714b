"""One table and one figure from the digits experiment's rows (guidance_digits.py, JSON lines).

    python bench/bench_guidance.py --report rows.jsonl [--figure quality.png]

The table has one line per setting (and step count): the change of mean |delta| by the
independent subspace meter and by the learned estimator, and, per seed, dFD with its paired
95% CI; then the mean changes of precision, recall and class accuracy (each with the number
of seeds whose CI excludes 0). The figure plots, for every NAG mode, FD change (%) and shift
change (%) against the scale.
"""

from __future__ import annotations

import gzip
import json
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from guidance_digits import parse_setting  # noqa: E402


def load_rows(paths) -> list[dict]:
    """Rows from JSON-lines files (gzipped when the name ends in .gz)."""
    rows = []
    for p in paths:
        raw = Path(p).read_bytes()
        text = (gzip.decompress(raw) if str(p).endswith(".gz") else raw).decode()
        rows += [json.loads(line) for line in text.splitlines() if line.strip()]
    return rows


def _groups(rows: list[dict]) -> dict:
    out: dict = {}
    for r in rows:
        key = (r["text"], r.get("steps", 16), r.get("n"), r.get("model", "default"),
               r.get("guide", "learned"), r.get("baseline", "unguided"))
        out.setdefault(key, {})[r["seed"]] = r  # a later row of the same seed replaces
    return out


def _ci(v) -> str:
    return f"{v[0]:+.2f} [{v[1]:+.2f}, {v[2]:+.2f}]"


def _mean_change(rs: list[dict], key: str) -> str:
    vals = [r[key] for r in rs]
    lower = sum(v[2] < 0 for v in vals)
    higher = sum(v[1] > 0 for v in vals)
    tag = f" ({lower} lower)" if lower else (f" ({higher} higher)" if higher else "")
    return f"{statistics.mean(v[0] for v in vals):+.3f}{tag}"


def table(rows: list[dict]) -> str:
    """Markdown: one line per (setting, steps, n), seeds side by side."""
    head = ("| setting | steps | n | seeds | shift change, subspace (learned) | "
            "dFD [95% CI] per seed | dFD % | d precision | d recall | d accuracy |")
    lines = [head, "|" + "---|" * 10]
    for (text, steps, n, model, guide, baseline), by_seed in _groups(rows).items():
        rs = [by_seed[s] for s in sorted(by_seed)]
        text += "" if baseline == "unguided" else f" (vs {baseline})"
        text += "" if model == "default" else f" (model {model})"
        text += "" if guide == "learned" else f" (guided by {guide})"
        sub = statistics.mean(r["subspace"]["abs_change_pct"] for r in rs)
        lrn = statistics.mean(r["learned"]["abs_change_pct"] for r in rs)
        dfd = "; ".join(_ci(r["dfd"]) for r in rs)
        pct = statistics.mean(r["dfd_pct"] for r in rs)
        lines.append(
            f"| {text} | {steps} | {n} | {','.join(str(r['seed']) for r in rs)} | "
            f"{sub:+.0f}% ({lrn:+.0f}%) | {dfd} | {pct:+.0f}% | "
            f"{_mean_change(rs, 'dprecision')} | {_mean_change(rs, 'drecall')} | "
            f"{_mean_change(rs, 'daccuracy')} |")
    return "\n".join(lines)


def _pct_ci(r: dict, key: str, base_key: str) -> str:
    """A paired change as a percentage of the baseline's value, with its CI."""
    v = r[key]
    base = r[base_key] - v[0] if base_key in ("fd",) else r[base_key][0] - v[0]
    return f"{100 * v[0] / base:+.0f}% [{100 * v[1] / base:+.0f}, {100 * v[2] / base:+.0f}]"


def testbed_table(rows: list[dict]) -> str:
    """Markdown for one testbed's rows: per setting (seeds side by side), the shift change
    by the independent meter (and the learned one), the quality changes with paired CIs (the
    exact metrics on the mixture), precision/recall, and cost per step over the baseline."""
    mixture = any("dlog_likelihood" in r for r in rows)
    quality = ("d log-lik [CI] | d energy % [CI] | d mode TV | dFD % (raw) [CI]" if mixture
               else "dFD % [CI] | dFD pixels")
    lines = [f"| setting | seeds | shift change, indep. (learned) | {quality} | d precision | "
             f"d recall | cost/step |", "|" + "---|" * (10 if mixture else 8)]
    for (text, _, _, _, _, _), by_seed in _groups(rows).items():
        rs = [by_seed[s] for s in sorted(by_seed)]
        sub = statistics.mean(r["subspace"]["abs_change_pct"] for r in rs)
        lrn = statistics.mean(r["learned"]["abs_change_pct"] for r in rs)
        if mixture:
            q = (f"{'; '.join(_ci(r['dlog_likelihood']) for r in rs)} | "
                 f"{'; '.join(_pct_ci(r, 'denergy', 'energy') for r in rs)} | "
                 f"{statistics.mean(r['dmode_tv'] for r in rs):+.3f} | "
                 f"{'; '.join(_pct_ci(r, 'dfd', 'fd') for r in rs)}")
        else:
            q = (f"{'; '.join(_pct_ci(r, 'dfd', 'fd') for r in rs)} | "
                 f"{statistics.mean(r['dfd_pixels'][0] for r in rs):+.2f}")
        lines.append(
            f"| {text} | {','.join(str(r['seed']) for r in rs)} | {sub:+.0f}% ({lrn:+.0f}%) | "
            f"{q} | {_mean_change(rs, 'dprecision')} | {_mean_change(rs, 'drecall')} | "
            f"{statistics.mean(r.get('cost', float('nan')) for r in rs):.2f}x |")
    return "\n".join(lines)


def _curves(rows: list[dict]) -> dict:
    """{label: [(scale, dFD %, shift %), ...]} for plain NAG settings at 16 steps."""
    curves: dict = {}
    for (text, steps, _, model, guide, _), by_seed in _groups(rows).items():
        opts = parse_setting(text)
        plain = steps == 16 and model == "default" and guide == "learned"
        if not plain or "cfg_scale" in opts or not opts.get("nag_scale"):
            continue
        label = opts["nag_mode"]
        if "interval" in opts:
            label += "@" + "-".join(f"{v:g}" for v in opts["interval"])
        rs = list(by_seed.values())
        curves.setdefault(label, []).append((
            opts["nag_scale"], statistics.mean(r["dfd_pct"] for r in rs),
            statistics.mean(r["subspace"]["abs_change_pct"] for r in rs)))
    return {k: sorted(v) for k, v in curves.items()}


def figure(rows: list[dict], path: str) -> None:
    """FD change and shift change (subspace meter) against the scale, one line per mode."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for label, pts in sorted(_curves(rows).items()):
        w, dfd, shift = zip(*pts, strict=True)
        axes[0].plot(w, dfd, marker="o", label=label)
        axes[1].plot(w, shift, marker="o", label=label)
    axes[0].axhline(0, color="k", lw=0.8)
    axes[0].axhline(-25, color="k", lw=0.8, ls=":")
    axes[1].axhline(-60, color="k", lw=0.8, ls=":")
    n = sorted({r.get("n") for r in rows})
    axes[0].set(xlabel="--nag-scale", ylabel="FD change vs unguided (%)", xscale="log",
                title=f"sample quality (lower is better), n = {n}")
    axes[1].set(xlabel="--nag-scale", ylabel="mean |delta| change (%)", xscale="log",
                title="shift, independent subspace meter")
    axes[0].legend(fontsize=7)
    fig.suptitle("default digits model, Euler-Maruyama 16 steps; means over seeds "
                 f"{sorted({r['seed'] for r in rows})}; dotted: the targets", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
