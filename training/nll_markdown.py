"""`quietstar eval nll`'s result dict as markdown tables and as a PNG of NLL against length."""

from __future__ import annotations

from pathlib import Path

LABELS = {
    "base": "base model",
    "base_temperature": "base, temperature-calibrated",
    "base_unigram": "base, unigram blend",
    "no_content": "no content (L = 0: START → END)",
    "thought": "thoughts as trained (sampled)",
    "random": "random thoughts (uniform tokens)",
    "shuffled": "someone else's thoughts",
}


def _pm(entry: dict) -> str:
    return f"{entry['mean']:.4f} ± {entry['se']:.4f}"


def markdown(r: dict) -> str:
    cal = r["calibration"]
    lines = [
        "# Held-out NLL with controls",
        "",
        f"`{r['command']}`",
        "",
        f"* {r['tokens']} next-token targets in {r['docs']} documents; ± is the cluster-robust "
        "standard error by document (CR1).",
        f"* Thoughts trained at {r['model']['trained_length']} tokens "
        f"(heads trained: {r['model']['heads_trained']}).",
        f"* Calibration on the training split ({cal['fit_tokens']} tokens): temperature "
        f"{cal['temperature']:.3f} (fit NLL {cal['fit_base_nll']:.4f} → "
        f"{cal['fit_temperature_nll']:.4f}); unigram blend α {cal['unigram_alpha']:.4f} "
        f"(→ {cal['fit_unigram_nll']:.4f}).",
        f"* Overlap with the heads' training data: {r['overlap']['overlapping_docs']} documents.",
        *[f"* WARNING: {w}" for w in r["overlap"]["warnings"]],
        f"* Machine: {r['machine']}",
        "",
        "| row | NLL | row − thought (paired) | z |",
        "|---|---|---|---|",
    ]
    for name, entry in r["rows"].items():
        diff = r["minus_thought"].get(name)
        cells = [_pm(entry), _pm(diff) if diff else "—", f"{diff['z']:.1f}" if diff else "—"]
        lines.append(f"| {LABELS[name]} | " + " | ".join(cells) + " |")
    lines += ["", *_w_lines(r), "", *_decile_lines(r), "", *_length_lines(r)]
    return "\n".join(lines) + "\n"


def _w_lines(r: dict) -> list[str]:
    parts = [f"{k} {v['mean']:.4f} (sd {v['std']:.4f})" for k, v in r["w"].items() if v]
    return ["Mixing weight w at the trained length: " + "; ".join(parts) + "."]


def _decile_lines(r: dict) -> list[str]:
    names = list(r["rows"])
    lines = [
        "Difficulty deciles by the base model's predictive entropy (boundaries from the training "
        "split). Cells: mean NLL; last columns: base − thought and best control − thought.",
        "",
        "| decile | tokens | " + " | ".join(names) + " | base − thought | control − thought |",
        "|---" * (len(names) + 4) + "|",
    ]
    for d in r["deciles"]:
        if "rows" not in d:
            continue
        cells = [f"{d['rows'][k]:.3f}" for k in names]
        diffs = d["minus_thought"]
        controls = [k for k in ("no_content", "random", "shuffled") if k in diffs]
        best = min(controls, key=lambda k: diffs[k]["mean"]) if controls else None
        tail = [_pm(diffs["base"]), f"{best}: {_pm(diffs[best])}" if best else "—"]
        lines.append(f"| {d['decile']} | {d['tokens']} | " + " | ".join(cells + tail) + " |")
    return lines


def _length_lines(r: dict) -> list[str]:
    lines = [
        "Thought length (sampled tokens) against the base on the same tokens (row − base; "
        "negative helps). The trained length is marked *.",
        "",
        "| L | tokens | thought − base | random − base | someone else's − base |",
        "|---|---|---|---|---|",
    ]
    trained = r["model"]["trained_length"]
    for length, e in r["lengths"].items():
        mark = "*" if int(length) == trained else ""
        cells = [_pm(e[f"{k}_minus_base"]) if f"{k}_minus_base" in e else "—" for k in KINDS]
        lines.append(f"| {length}{mark} | {e['tokens']} | " + " | ".join(cells) + " |")
    return lines


KINDS = ("thought", "random", "shuffled")


def plot_lengths(r: dict, path: Path) -> Path:
    """Δ NLL against the base (same tokens) by thought length, controls on the same axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    lengths = sorted(int(x) for x in r["lengths"])
    for kind, style, dx in zip(KINDS, ("o-", "s--", "^:"), (0.0, -0.15, 0.15), strict=True):
        xs = [x for x in lengths if f"{kind}_minus_base" in r["lengths"][str(x)]]
        if kind != "thought":  # L = 0 has no content: every control equals it
            xs = [x for x in xs if x > 0]
        ys = [r["lengths"][str(x)][f"{kind}_minus_base"] for x in xs]
        xs = [x + dx for x in xs]  # side by side, so the error bars stay readable
        means, errors = [y["mean"] for y in ys], [y["se"] for y in ys]
        ax.errorbar(xs, means, yerr=errors, fmt=style, capsize=2, label=LABELS[kind])
    for name, color in (("base_temperature", "tab:gray"), ("base_unigram", "tab:brown")):
        diff = r["minus_thought"][name]["mean"] - r["minus_thought"]["base"]["mean"]
        ax.axhline(diff, color=color, linestyle="-.", label=LABELS[name])
    ax.axhline(0.0, color="black", linewidth=0.8, label="base model")
    ax.axvline(r["model"]["trained_length"], color="tab:red", linestyle=":", label="trained L")
    ax.set_xlabel("thought length L (sampled tokens; 0 = START → END)")
    ax.set_ylabel("NLL − base NLL (nats/token, same tokens)")
    ax.set_title(f"{r['tokens']} held-out tokens, ± cluster-robust SE", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
