"""PNG plots of rate and latency over time (matplotlib, Agg backend).

Every series is a list of time bins ``[t, count, p50_ms, p99_ms]`` (see
:class:`loadtests._common.Bins`); ``t`` is seconds on any clock, shifted so
that the plot starts at ``origin``. The top panel shows events/s per bin, the
bottom one p50 (solid) and p99 (dashed) latency on a log scale.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["Series", "plot_timeline"]

#: name -> bins ([t, count, p50_ms, p99_ms], ...)
Series = Mapping[str, Sequence[Sequence[float]]]


def plot_timeline(
    path: str | Path,
    title: str,
    series: Series,
    *,
    bin_s: float,
    origin: float,
    markers: Mapping[str, float] | None = None,
    latency_label: str = "publish → receive latency (ms)",
) -> Path:
    """Write the two-panel PNG to ``path``; ``markers`` are labelled vertical lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    fig, (rate_ax, lat_ax) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    try:
        for name, bins in series.items():
            if not bins:
                continue
            ts = [row[0] - origin for row in bins]
            line = rate_ax.step(ts, [row[1] / bin_s for row in bins], where="post", label=name)[0]
            # Series without latencies (counts only) carry zeros there.
            lat = [(t, row[2], row[3]) for t, row in zip(ts, bins, strict=True) if row[3] > 0]
            if lat:
                color = line.get_color()
                lat_ax.plot(
                    [x[0] for x in lat], [x[1] for x in lat], color=color, label=f"{name} p50"
                )
                lat_ax.plot(
                    [x[0] for x in lat],
                    [x[2] for x in lat],
                    color=color,
                    linestyle="--",
                    label=f"{name} p99",
                )
        for index, (label, at) in enumerate((markers or {}).items()):
            for ax in (rate_ax, lat_ax):
                ax.axvline(at - origin, color="grey", linewidth=0.8, linestyle=":")
            # Alternate heights so that labels of close moments do not overlap.
            rate_ax.annotate(
                label,
                (at - origin, 1.0 if index % 2 == 0 else 0.6),
                xycoords=("data", "axes fraction"),
                rotation=90,
                va="top",
                fontsize=7,
            )
        rate_ax.set_ylabel(f"events/s ({bin_s:g} s bins)")
        rate_ax.set_title(title)
        rate_ax.grid(True, alpha=0.3)
        rate_ax.legend(fontsize=7, loc="best")
        lat_ax.set_ylabel(latency_label)
        lat_ax.set_xlabel("seconds")
        if any(row[3] > 0 for bins in series.values() for row in bins):
            lat_ax.set_yscale("log")
            lat_ax.yaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            lat_ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda y, _pos: f"{y:g}"))
            lat_ax.yaxis.set_minor_formatter(ticker.NullFormatter())
        lat_ax.grid(True, which="both", alpha=0.3)
        lat_ax.legend(fontsize=7, ncol=2, loc="best")
        fig.tight_layout()
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, format="png", dpi=100)
    finally:
        plt.close(fig)
    return out
