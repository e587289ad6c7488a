"""PNG plots for `fleet plan` (matplotlib, imported lazily: plotting is optional)."""

from __future__ import annotations

from pathlib import Path


def plot_plans(path: str | Path, title: str, hetero, homo: dict, buckets) -> list[Path]:
    """Writes <path>_cost.png ($/hour of the heterogeneous plan and of each validated
    single-device-type plan) and <path>_routes.png (share of each prompt bucket's traffic per
    entry pool in the heterogeneous plan). Returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    out = []
    names = ["heterogeneous"] + [f"only {d}" for d in homo]
    costs = [hetero.usd_per_hour if hetero else 0] + [p.usd_per_hour for p in homo.values()]
    fig, ax = plt.subplots(figsize=(8, 4))
    bars = ax.barh(names, costs, color=["tab:green"] + ["tab:gray"] * len(homo))
    ax.bar_label(bars, fmt="$%.2f")
    ax.set_xlabel("$ per hour (validated in simulation)")
    ax.set_title(title, fontsize=9)
    ax.invert_yaxis()
    fig.tight_layout()
    out.append(path.with_name(path.name + "_cost.png"))
    fig.savefig(out[-1], dpi=110)
    plt.close(fig)
    if hetero:
        pools = sorted({s[0] for sl in hetero.routes.values() for s in sl})
        labels = [b.label for b in buckets.buckets]
        fig, ax = plt.subplots(figsize=(8, 4))
        left = [0.0] * len(labels)
        for pool in pools:
            share = [sum(s[0] == pool for s in hetero.routes[b.index]) / len(hetero.routes[b.index])
                     for b in buckets.buckets]
            ax.barh(labels, share, left=left, label=pool)
            left = [a + b for a, b in zip(left, share)]
        ax.set_xlabel("share of the bucket's requests")
        ax.set_ylabel("prompt tokens")
        ax.legend(fontsize=7, loc="lower right")
        ax.set_title("heterogeneous plan: where each prompt-length bucket goes", fontsize=9)
        fig.tight_layout()
        out.append(path.with_name(path.name + "_routes.png"))
        fig.savefig(out[-1], dpi=110)
        plt.close(fig)
    return out
