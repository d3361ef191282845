"""A bench's outputs: bench.json (schema: bench_result.schema.json), bench.md, and PNG plots.

Summaries use the measured runs that finished and were not flagged as throttled; medians with
min-max and the interquartile range; ratios are MeKi's median over dense's. "paired" ratios divide each
MeKi run by the dense run of the same rep, which ran next to it (the bench alternates them), and take the
median of those: a device whose speed drifts (heat, other load) moves both runs of a pair alike, so this
is the figure to read when whole runs spread more than the difference in question.
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import jsonschema

from contract.atomic import atomic_write_text

from device_tests.results import BenchResult, DeviceReport, RunRecord

SCHEMA_PATH = Path(__file__).with_name("bench_result.schema.json")
# metric -> (column title, unit, higher is better)
PAIRED = ("prefill_tok_s", "decode_tok_s", "ttft_ms")  # per-run speeds: the pair ran back to back
METRICS: dict[str, tuple[str, str, bool]] = {
    "prefill_tok_s": ("prefill", "tok/s", True),
    "decode_tok_s": ("decode", "tok/s", True),
    "ttft_ms": ("TTFT", "ms", False),
    "rss_anon_mib": ("RSS anon", "MiB", False),
    "rss_file_mib": ("RSS file", "MiB", False),
    "pss_mib": ("PSS", "MiB", False),
    "peak_rss_mib": ("peak RSS", "MiB", False),
}


def run_metrics(run: RunRecord) -> dict[str, float | None]:
    """One run's figures: speeds from the runner's JSON; each memory figure the larger of the
    sampler's peak and the runner's own end-of-run reading (a run shorter than the sampling
    period leaves the sampler only its start-up, the runner's reading misses mid-run peaks)."""
    st, mem = run.stats or {}, run.memory or {}
    kib = lambda k: mem[k] / 1024 if mem.get(k) is not None else None  # noqa: E731
    byt = lambda k: st[k] / 2**20 if st.get(k) is not None else None  # noqa: E731
    top = lambda *xs: max((x for x in xs if x is not None), default=None)  # noqa: E731
    return {
        "prefill_tok_s": st.get("prefill_tok_s"),
        "decode_tok_s": st.get("decode_tok_s"),
        "ttft_ms": st["ttft_s"] * 1000 if st.get("ttft_s") is not None else None,
        "rss_anon_mib": top(kib("peak_rss_anon_kb"), byt("rss_anon_bytes")),
        "rss_file_mib": top(kib("peak_rss_file_kb"), byt("rss_file_bytes")),
        "pss_mib": top(kib("peak_pss_kb"), kib("peak_app_pss_kb")),
        "peak_rss_mib": top(kib("peak_vm_hwm_kb"), kib("peak_vm_rss_kb"), byt("rss_peak_bytes")),
    }


def spread(values: list[float]) -> dict[str, float] | None:
    """n, median, min, max, q1, q3 of a sample (None when empty)."""
    if not values:
        return None
    v = sorted(values)
    q1, q3 = (statistics.quantiles(v, n=4, method="inclusive")[i] for i in (0, 2)) if len(v) > 1 else (v[0], v[0])
    return {"n": len(v), "median": statistics.median(v), "min": v[0], "max": v[-1], "q1": q1, "q3": q3}


def summarize(rep: DeviceReport) -> None:
    """Fill rep.summary (label -> metric -> spread) and rep.ratios (MeKi / dense medians)."""
    measured = [r for r in rep.runs if r.ok and not r.warmup]
    clean = [r for r in measured if not r.throttled] or measured  # all throttled: say so, use them
    labels = list(dict.fromkeys(r.label for r in rep.runs))
    rep.summary = {}
    for label in labels:
        runs = [run_metrics(r) for r in clean if r.label == label]
        rep.summary[label] = {m: spread([x[m] for x in runs if x[m] is not None]) for m in METRICS}
        rep.summary[label]["runs"] = len(runs)
        rep.summary[label]["throttled_runs"] = sum(r.throttled for r in measured if r.label == label)
        rep.summary[label]["includes_throttled"] = bool(clean) and clean is measured and any(
            r.throttled for r in measured)
    meki, dense = rep.summary.get("meki"), rep.summary.get("dense")
    rep.ratios = {}
    for m in METRICS:
        a, b = (meki or {}).get(m), (dense or {}).get(m)
        rep.ratios[m] = a["median"] / b["median"] if a and b and b["median"] else None
    by_rep = {(r.label, r.rep): run_metrics(r) for r in clean}
    pairs = [(by_rep[("meki", i)], d) for (label, i), d in by_rep.items() if label == "dense" and ("meki", i) in by_rep]
    rep.paired = {m: spread([a[m] / b[m] for a, b in pairs if a[m] is not None and b[m]]) for m in PAIRED}


def validate(data: dict[str, Any]) -> None:
    """Raise jsonschema.ValidationError when data is not a valid bench result."""
    jsonschema.Draft202012Validator(json.loads(SCHEMA_PATH.read_text())).validate(data)


def write_all(result: BenchResult, out_dir: Path) -> None:
    """Summaries, then bench.md, the plots and bench.json (validated) in out_dir."""
    for rep in result.devices:
        summarize(rep)
    out_dir = Path(out_dir)
    result.outputs = {"json": "bench.json", "markdown": "bench.md", "plots": [], "notes": []}
    try:
        result.outputs["plots"] = write_plots(result, out_dir)
    except ImportError:
        result.outputs["notes"].append("plots skipped: matplotlib missing (pip install 'meki-toolkit[bench]')")
    atomic_write_text(out_dir / "bench.md", markdown(result))
    data = result.to_json()
    validate(data)
    atomic_write_text(out_dir / "bench.json", json.dumps(data, indent=2, default=str) + "\n")


def _fmt(x: float | None) -> str:
    if x is None:
        return "–"
    return f"{x:.0f}" if abs(x) >= 100 else f"{x:.1f}" if abs(x) >= 10 else f"{x:.2f}"


def _cell(s: dict[str, Any] | None) -> str:
    """median [min–max] (the spread is the full range of the kept runs)."""
    if not s:
        return "–"
    return _fmt(s["median"]) if s["n"] == 1 else f"{_fmt(s['median'])} [{_fmt(s['min'])}–{_fmt(s['max'])}]"


def markdown(result: BenchResult) -> str:
    """The report: one summary row per device, then a table per device with every bundle."""
    cfg = result.config
    lines = [f"# MeKi bench ({result.created_utc})", "",
             f"prompt {cfg['prompt_len']} tokens, {cfg['new_tokens']} new tokens, {cfg['warmup']} warm-up + "
             f"{cfg['reps']} measured runs per bundle, alternating; runner `{cfg['runner']}`. "
             "Cells: median [min–max] over unthrottled runs; memory is the peak while the runner ran "
             "(sampled from /proc, or the runner's own reading where larger). MeKi/dense: the medians' "
             "ratio; paired: the median [middle half] of each MeKi run over the dense run beside it.", "",
             "## MeKi / dense per device", ""]
    head = ["device", "runner", "status"] + [f"{t} ({u})" for t, u, _ in METRICS.values()]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for rep in result.devices:
        cells = [f"{_fmt(rep.ratios.get(m))}×" if rep.ratios.get(m) else "–" for m in METRICS]
        lines.append("| " + " | ".join([_device_name(rep), rep.runner or "–", rep.status, *cells]) + " |")
    for rep in result.devices:
        lines += ["", f"## {_device_name(rep)}", ""]
        facts = rep.facts or {}
        desc = ", ".join(str(facts[k]) for k in ("model", "soc", "os_version", "abi") if facts.get(k))
        if desc:
            lines += [f"{facts.get('kind', '')}: {desc}", ""]
        head = ["bundle", "runs"] + [f"{t} ({u})" for t, u, _ in METRICS.values()]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for label, s in rep.summary.items():
            n = f"{s['runs']}" + (f" (+{s['throttled_runs']} throttled)" if s["throttled_runs"] else "")
            lines.append("| " + " | ".join([label, n, *(_cell(s.get(m)) for m in METRICS)]) + " |")
        if rep.ratios and any(rep.ratios.values()):
            lines.append("| MeKi/dense | | " + " | ".join(
                f"{_fmt(rep.ratios[m])}×" if rep.ratios[m] else "–" for m in METRICS) + " |")
        pairs = {m: s for m, s in rep.paired.items() if s}
        if pairs:
            n = max(s["n"] for s in pairs.values())
            lines.append(f"| MeKi/dense, paired | {n} pairs | " + " | ".join(
                f"{_fmt(pairs[m]['median'])}× [{_fmt(pairs[m]['q1'])}–{_fmt(pairs[m]['q3'])}]" if m in pairs else "–"
                for m in METRICS) + " |")
        failed = [r for r in rep.runs if r.error]
        for msg in rep.errors + [f"{r.label} run {r.rep}{' (warm-up)' if r.warmup else ''}: {r.error}" for r in failed]:
            lines.append(f"\n- **error** {' '.join(msg.split())}")
    for note in result.outputs.get("notes", []):
        lines += ["", f"_{note}_"]
    for plot in result.outputs.get("plots", []):
        lines += ["", f"![{plot}]({plot})"]
    return "\n".join(lines) + "\n"


def _device_name(rep: DeviceReport) -> str:
    return f"{rep.device} ({rep.transport})" if rep.transport else rep.device


def write_plots(result: BenchResult, out_dir: Path) -> list[str]:
    """tok_s.png (decode and prefill tok/s per run, MeKi vs dense) and rss.png (RSS over time)."""
    import matplotlib  # noqa: PLC0415 - optional: the bench extra

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    devs = [d for d in result.devices if d.runs]
    if not devs:
        return []
    colors = {"meki": "tab:blue", "dense": "tab:orange"}
    fig, axes = plt.subplots(len(devs), 2, figsize=(11, 3.2 * len(devs)), squeeze=False)
    for row, rep in zip(axes, devs):
        for ax, metric in zip(row, ("decode_tok_s", "prefill_tok_s")):
            for label in dict.fromkeys(r.label for r in rep.runs):
                pts = [(i, run_metrics(r)[metric], r.throttled) for i, r in enumerate(rep.runs)
                       if r.label == label and r.ok and not r.warmup]
                ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=label,
                        color=colors.get(label))
                bad = [p for p in pts if p[2]]
                ax.plot([p[0] for p in bad], [p[1] for p in bad], "x", color="red", markersize=10)
            ax.set(title=f"{rep.device}: {METRICS[metric][0]}", xlabel="run (order on device)",
                   ylabel="tok/s")
            ax.xaxis.get_major_locator().set_params(integer=True)
            _legend(ax)
    fig.tight_layout()
    fig.savefig(out_dir / "tok_s.png", dpi=90)
    plt.close(fig)
    fig, axes = plt.subplots(len(devs), 1, figsize=(11, 3.2 * len(devs)), squeeze=False)
    for (ax,), rep in zip(axes, devs):
        for r in rep.runs:
            samples = [s for s in (r.memory or {}).get("samples") or [] if s[1] is not None]
            if samples and not r.warmup:
                ax.plot([s[0] for s in samples], [s[1] / 1024 for s in samples],
                        color=colors.get(r.label), alpha=0.6,
                        label=r.label if r is next(x for x in rep.runs if x.label == r.label and not x.warmup) else None)
        ax.set(title=f"{rep.device}: VmRSS while running", xlabel="s since start", ylabel="MiB")
        _legend(ax)
    fig.tight_layout()
    fig.savefig(out_dir / "rss.png", dpi=90)
    plt.close(fig)
    return ["tok_s.png", "rss.png"]


def _legend(ax: Any) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
