"""Step 6a: the retraining report, Markdown beside a PNG of the score histograms."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from .decide import criteria
from .gather import Gathered
from .settings import RetrainSettings


def write_report(md_path: Path, png_path: Path, *, product: str, version: str, active_version: str, family: str,
                 decision: tuple[bool, str], cand: dict[str, Any], act: dict[str, Any],
                 scores: dict[str, tuple[np.ndarray, np.ndarray]], gathered: Gathered,
                 settings: RetrainSettings, timings: dict[str, float]) -> None:
    """Markdown with the metrics side by side and a PNG of the score histograms (atomic writes)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from detector.model_store import atomic_write_bytes

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharex=True, sharey=True)
    allv = np.concatenate([np.r_[sn, sd] for sn, sd in scores.values()] + [[act["threshold"], cand["threshold"]]])
    bins = np.linspace(float(allv.min()), float(allv.max()) + 1e-9, 30)  # same bins: compare side by side
    for ax, (name, (sn, sd)), thr in zip(axes, scores.items(), (act["threshold"], cand["threshold"])):
        ax.hist(sn, bins=bins, alpha=0.6, label=f"normal holdout ({len(sn)})", color="tab:blue")
        if len(sd):
            ax.hist(sd, bins=bins, alpha=0.6, label=f"confirmed defects ({len(sd)})", color="tab:red")
        ax.axvline(thr, color="black", linestyle="--", label=f"threshold {thr:.4g}")
        ax.set_title(name)
        ax.set_xlabel("image score")
        ax.legend(fontsize=8)
    axes[0].set_ylabel("images")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(png_path, buf.getvalue())

    def f(v: Any) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "–"
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    promoted, reason = decision
    since, until = gathered.window
    rows = [("image AUROC (holdout)", "image_auroc"), ("false-alarm rate at threshold", "false_alarm_rate"),
            ("detection rate at threshold", "detection_rate"), ("threshold", "threshold"),
            ("median normal score", "normal_score_p50"), ("max normal score", "normal_score_max"),
            ("holdout normal images", "n_normal"), ("holdout confirmed defects", "n_defect")]
    lines = [
        f"# Retraining report: {product} {version}",
        "",
        f"**Decision: {'PROMOTED' if promoted else 'REJECTED'}** — {reason}",
        "",
        f"| metric | active `{active_version}` | candidate `{version}` |",
        "| --- | ---: | ---: |",
        *[f"| {label} | {f(act.get(k))} | {f(cand.get(k))} |" for label, k in rows],
        "",
        "## Promotion criteria",
        "",
        "| criterion | active | candidate | rule | met |",
        "| --- | ---: | ---: | --- | :---: |",
        *[f"| {c.name} | {f(c.active)} | {f(c.candidate)} | "
          f"{'at least active -' if c.higher_is_better else 'at most active +'} {c.margin} | "
          f"{('yes' if c.passed else '**no**') if c.compared else 'not compared'} |"
          for c in criteria(cand, act, settings)],
        "",
        "False-alarm and detection rates are each model's at its own calibrated threshold, on the same "
        "held-out normals and confirmed defects. Target false-alarm rate for the candidate's threshold: "
        f"{settings.target_far}.",
        "",
        f"![score histograms]({png_path.name})",
        "",
        "## Training data",
        "",
        f"* window: {since.isoformat() if since else 'all captures'} → {until.isoformat()}",
        *[f"* {k.replace('_', ' ')}: {v}" for k, v in gathered.counts.items()],
        f"* fingerprint: `{gathered.fingerprint()}`",
        f"* warm start of {family} from `{active_version}`; {settings.epochs} epochs (as {family} reads them), "
        f"learning rate {settings.lr:g}; "
        f"training {timings.get('train_min', 0) * 60:.0f} s, evaluation {timings.get('eval_min', 0) * 60:.0f} s",
        "",
    ]
    if gathered.skipped:
        lines += ["## Unreadable captures (skipped)", "", *[f"* {s}" for s in gathered.skipped[:50]], ""]
    atomic_write_bytes(md_path, "\n".join(lines).encode("utf-8"))
