"""Draw docs/scaling.png from docs/scaling.json (written by tools/scaling.sh).

    python3 tools/plot_scaling.py        (needs matplotlib: pip install matplotlib)
"""
import json
import statistics

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

rows = json.load(open("docs/scaling.json"))
cells = {}
for r in rows:
    cells.setdefault((r["peer"], r["workers"]), {}).setdefault(r["conns"], []).append(r)

fig, (rps_ax, cpu_ax) = plt.subplots(1, 2, figsize=(11, 4.2))
style = {"nginx": "tab:green", "splitproxy": "tab:blue"}
for (peer, workers), by_conns in sorted(cells.items()):
    conns = sorted(by_conns)
    rps = [statistics.median(x["rps"] for x in by_conns[c]) for c in conns]
    cpu = [statistics.median(x["cpu_us"] for x in by_conns[c]) for c in conns]
    line = "-" if workers == 1 else "--"
    label = f"{peer}, {workers} worker{'s' if workers > 1 else ''}"
    rps_ax.plot(conns, rps, line, marker="o", color=style[peer], label=label)
    cpu_ax.plot(conns, cpu, line, marker="o", color=style[peer], label=label)
for ax, title in ((rps_ax, "requests/s (higher is better)"), (cpu_ax, "proxy CPU µs per request (lower is better)")):
    ax.set_xscale("log", base=2)
    ax.set_xticks([1, 64, 256, 1024], ["1", "64", "256", "1024"])
    ax.set_xlabel("keep-alive connections")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.set_ylim(bottom=0)
cpu_ax.legend()
fig.suptitle("plain HTTP/1.1, split 50/50, 2-core VM (tools/scaling.sh)")
fig.tight_layout()
fig.savefig("docs/scaling.png", dpi=100)
print("wrote docs/scaling.png")
