"""The demo's report: ``report.json`` for machines, ``report.md`` + a plot for people."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def plot_stages(series: list[dict[str, Any]], boundaries: list[int], path: Path) -> bool:
    """Reward and completion length per step, stage boundaries marked (like Figure 1)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    steps = [p["step"] for p in series]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    top.plot(steps, [p.get("reward_mean") for p in series], color="tab:blue")
    top.set_ylabel("reward mean")
    bottom.plot(steps, [p.get("completion_len_mean") for p in series], color="tab:orange")
    bottom.set_ylabel("completion length (tokens)")
    bottom.set_xlabel("GRPO step (all stages)")
    for axis in (top, bottom):
        for boundary in boundaries:
            axis.axvline(boundary, color="grey", linestyle="--", linewidth=1)
    top.set_title("GRPO with PTST: reward and completion length per step")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def markdown(report: dict[str, Any], extra: dict[str, Any], plot: str | None) -> str:
    """A human-readable account of the run."""
    cold, evals = report["coldstart"], report["eval"]
    lines = [
        "# Vision-R1 platform demo (toy world, tiny models)",
        "",
        "Teachers here are tiny **stand-in** models trained on the toy world's reference",
        "texts; they are not Qwen2.5-VL-72B or DeepSeek-R1. The student is a tiny",
        "Qwen2.5-VL-style model. Every step ran as a platform job on embedded defaults.",
        "",
        "## Cold-start data",
        f"- items in: {cold['items_in']}, kept: {cold['kept']}",
        f"- rejected: {json.dumps(cold['rejected'])}",
        f"- export: `{cold['export_dir']}`",
        "",
        "## Evaluation (held-out toy test split, platform eval jobs)",
        "| model | accuracy |",
        "|---|---|",
        f"| base student | {evals['base']:.3f} |",
        f"| after cold-start SFT | {evals['after_sft']:.3f} |",
    ]
    for i, acc in enumerate(evals["after_stages"]):
        lines.append(f"| after GRPO stage {i + 1} | {acc:.3f} |")
    lines += [
        "",
        f"SFT student format rate: {report['sft']['format_rate']:.3f}",
        "",
        "## PTST stages",
        "| stage | cap × group | steps | reward mean | accuracy | completion length |",
        "|---|---|---|---|---|---|",
    ]
    for i, s in enumerate(report["grpo"]["stages"]):
        lines.append(
            f"| {i + 1} | {s['max_completion_tokens']} × {s['group_size']} | {s['steps']} | "
            f"{s['reward_mean']:.3f} | {s['accuracy']:.3f} | {s['completion_len_mean']:.1f} |"
        )
    if plot:
        lines += ["", f"![reward and completion length per step]({plot})"]
    lines += ["", "## Jobs", "```", json.dumps(extra, indent=2), "```", ""]
    return "\n".join(lines)
