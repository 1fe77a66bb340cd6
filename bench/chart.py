"""The benchmark chart (docs/bench.png): req/s per scenario, latency at a fixed rate, the ratios."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib as mpl

mpl.use("Agg")

import matplotlib.pyplot as plt
from matplotlib.patches import Patch

__all__ = ["draw"]

_COLORS = {"grpc": "#4C72B0", "envoy": "#55A868"}
_BASELINES = {
    "grpc_noop",
    "envoy_direct_response",
    "envoy_jwt_authn",
    "envoy_noop_ext_authz",
    "envoy_noop_http_ext_authz",
    "envoy_noop_http_uvloop_ext_authz",
}


def draw(results: Mapping[str, Any], path: Path) -> None:
    scenarios = results["scenarios"]
    names = list(scenarios)
    rps = [scenarios[n]["rps"] for n in names]
    low = [scenarios[n]["rps"] - scenarios[n]["rps_min"] for n in names]
    high = [scenarios[n]["rps_max"] - scenarios[n]["rps"] for n in names]
    colors = ["#999999" if n in _BASELINES else _COLORS[scenarios[n]["group"]] for n in names]

    fig = plt.figure(figsize=(12, 9))
    grid = fig.add_gridspec(2, 2, height_ratios=[1.5, 1], width_ratios=[1, 1.15])
    bars = fig.add_subplot(grid[0, :])
    lat = fig.add_subplot(grid[1, 0])
    notes = fig.add_subplot(grid[1, 1])
    notes.axis("off")
    y = range(len(names))
    bars.barh(y, rps, xerr=[low, high], color=colors, capsize=3)
    bars.set_yticks(list(y), names, fontsize=9)
    bars.invert_yaxis()
    bars.set_xlabel("requests/s (median; bars: min-max of the runs)")
    bars.set_title("throughput")
    bars.set_xscale("log")
    for i, name in enumerate(names):
        bars.text(scenarios[name]["rps_max"] * 1.03, i, f"{rps[i]:,.0f}", va="center", fontsize=8)
    bars.grid(axis="x", alpha=0.3, which="both")
    legend = [
        ("our gRPC server alone (h2load)", _COLORS["grpc"]),
        ("Envoy + ours (wrk)", _COLORS["envoy"]),
        ("baselines: Envoy alone, jwt_authn, do-nothing ext_authz", "#999999"),
    ]
    bars.legend(handles=[Patch(color=c, label=label) for label, c in legend], loc="upper right", fontsize=8)

    latency = results["latency"]
    kinds = ("envoy_direct_response", "envoy_ours_warm")
    width = 0.35
    for j, pct in enumerate(("p50_ms", "p99_ms")):
        values = [latency[k][pct] for k in kinds]
        xs = [i + (j - 0.5) * width for i in range(len(kinds))]
        lat.bar(xs, values, width, label=pct.replace("_ms", ""))
        for x, v in zip(xs, values, strict=True):
            lat.text(x, v, f"{v:.2f}", ha="center", va="bottom", fontsize=8)
    lat.set_xticks(range(len(kinds)), ["Envoy alone", "Envoy + ours (warm)"], fontsize=9)
    lat.set_ylabel("ms")
    lat.set_title(f"latency at a fixed {latency['rate']:.0f} req/s", fontsize=10)
    lat.legend()

    ratio_lines = []
    for name, r in results["ratios"].items():
        mark = ""
        if "meets" in r:
            sign = ">=" if r.get("sense", "min") == "min" else "<="
            mark = f"  target {sign} {r['target']}: {'met' if r['meets'] else 'MISSED'}"
        ratio_lines.append(f"{name:<30} {r['value']:6.2f}{mark}")
    memory = results["memory"]
    ratio_lines += [
        "",
        f"memory: RSS {memory['rss_mib']} MiB after {memory['tokens']} distinct tokens,",
        f"  cache {memory['cache_entries']}/{memory['cache_max_entries']}, hit rate {memory['hit_rate']:.2f}",
        "abuse (distinct tokens), rejections/s:",
        *(f"  {k:<16} {v['rejections_per_s']:7.0f}" for k, v in results["abuse"].items()),
    ]
    notes.text(
        0.0, 1.0, "\n".join(ratio_lines), transform=notes.transAxes, fontsize=8, va="top", family="monospace"
    )

    m, s = results["machine"], results["settings"]
    fig.suptitle(f"envoy-jwe-authz benchmark, {results['date'][:10]} ({s['mode']} run)", fontsize=13)
    fig.text(
        0.01,
        0.01,
        f"{m['cores']} cores, {m['cpu']}, Linux {m['kernel']}, Python {m['python']}, Envoy {m['envoy']} "
        f"(--concurrency 1); {s['wrk']}; {s['h2load']}; median of {s['runs']} interleaved runs; "
        f"token {s['token_pair']}; all on 127.0.0.1",
        fontsize=7.5,
    )
    fig.tight_layout(rect=(0, 0.03, 1, 0.96))
    fig.savefig(path, dpi=110)
    plt.close(fig)
