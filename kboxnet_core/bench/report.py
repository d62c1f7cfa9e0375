"""Summaries of benchmark samples: medians, ratios to slirp4netns, a text table, a chart."""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from pathlib import Path

import attrs

from .measure import Sample

BASELINE = "slirp4netns"


@attrs.frozen
class Row:
    path: str
    test: str
    mtu: int
    runs: int
    failed: int
    median: float | None  # Gbit/s for up/down, p50 µs for rr
    minimum: float | None
    maximum: float | None
    retransmits: int | None  # median
    p99_us: float | None = None
    conn_per_s: float | None = None
    foreign_pct: float = 0.0  # max foreign CPU during the runs
    flows: int | None = None  # "flows" rows: concurrent flows
    rss_mib: float | None = None  # "flows" rows: median peak RSS of the middle processes
    lost_bytes: int | None = None  # "flows" rows: max bytes written by the client but not received
    ratio: float | None = None  # median / slirp4netns median (rr: inverse, higher is better)

    def as_dict(self) -> dict:
        return attrs.asdict(self)


def _med(vals: list[float]) -> float | None:
    return round(statistics.median(vals), 3) if vals else None


def summarize(samples: Iterable[Sample]) -> list[Row]:
    groups: dict[tuple[str, str, int, int | None], list[Sample]] = {}
    for s in samples:
        groups.setdefault((s.path, s.test, s.mtu, s.flows), []).append(s)
    rows: list[Row] = []
    for (path, test, mtu, nflows), group in groups.items():
        ok = [s for s in group if not s.error]
        foreign = max((s.cpu_foreign_pct for s in group), default=0.0)
        if test == "flows":
            vals = [s.gbps for s in ok if s.gbps is not None]
            rss = _med([s.rss_mib for s in group if s.rss_mib is not None])
            lost = max((s.lost_bytes for s in group if s.lost_bytes is not None), default=None)
            rows.append(Row(path, test, mtu, len(group), len(group) - len(ok), _med(vals),
                            min(vals, default=None), max(vals, default=None), None, foreign_pct=foreign,
                            flows=nflows, rss_mib=rss, lost_bytes=lost))
        elif test == "rr":
            vals = [s.rr_p50_us for s in ok if s.rr_p50_us is not None]
            p99 = _med([s.rr_p99_us for s in ok if s.rr_p99_us is not None])
            conn = _med([s.conn_per_s for s in ok if s.conn_per_s is not None])
            rows.append(Row(path, test, mtu, len(group), len(group) - len(ok), _med(vals),
                            min(vals, default=None), max(vals, default=None), None, p99, conn, foreign))
        else:
            vals = [s.gbps for s in ok if s.gbps is not None]
            retr = [s.retransmits for s in ok if s.retransmits is not None]
            rows.append(Row(path, test, mtu, len(group), len(group) - len(ok), _med(vals),
                            min(vals, default=None), max(vals, default=None),
                            int(statistics.median(retr)) if retr else None, foreign_pct=foreign))
    base = {(r.test, r.mtu, r.flows): r.median for r in rows if r.path == BASELINE}
    out = []
    for r in rows:
        b = base.get((r.test, r.mtu, r.flows))
        ratio = None
        if b and r.median:
            ratio = round(b / r.median if r.test == "rr" else r.median / b, 2)
        out.append(attrs.evolve(r, ratio=ratio))
    return out


def _f(v: float | None, fmt: str = "{:.2f}") -> str:
    return "-" if v is None else fmt.format(v)


def table(rows: list[Row], skipped: dict[str, str]) -> str:
    lines = []
    thr = [r for r in rows if r.test in ("up", "down")]
    if thr:
        lines.append("TCP throughput (iperf3, single stream; up = guest->host, down = host->guest)")
        lines.append(f"{'path':<13}{'mtu':>6} {'dir':<5}{'Gbit/s':>8}{'min':>8}{'max':>8}"
                     f"{'x slirp':>9}{'retr':>9}{'runs':>6}{'fail':>5}{'foreign%':>9}")
        for r in sorted(thr, key=lambda r: (r.mtu, r.test, r.path)):
            lines.append(f"{r.path:<13}{r.mtu:>6} {r.test:<5}{_f(r.median):>8}{_f(r.minimum):>8}"
                         f"{_f(r.maximum):>8}{_f(r.ratio):>9}{_f(r.retransmits, '{:d}'):>9}{r.runs:>6}"
                         f"{r.failed:>5}{r.foreign_pct:>9.0f}")
    rr = [r for r in rows if r.test == "rr"]
    if rr:
        lines.append("")
        lines.append("TCP request/response (64 B ping-pong) and connection setup")
        lines.append(f"{'path':<13}{'mtu':>6}{'p50 us':>9}{'p99 us':>9}{'x slirp':>9}{'conn/s':>9}"
                     f"{'runs':>6}{'fail':>5}")
        for r in sorted(rr, key=lambda r: (r.mtu, r.path)):
            lines.append(f"{r.path:<13}{r.mtu:>6}{_f(r.median, '{:.0f}'):>9}{_f(r.p99_us, '{:.0f}'):>9}"
                         f"{_f(r.ratio):>9}{_f(r.conn_per_s, '{:.0f}'):>9}{r.runs:>6}{r.failed:>5}")
    fl = [r for r in rows if r.test == "flows"]
    if fl:
        lines.append("")
        lines.append("Scale: concurrent TCP flows guest->host (aggregate; RSS = peak of the middle processes)")
        lines.append(f"{'path':<13}{'mtu':>6}{'flows':>7}{'Gbit/s':>8}{'x slirp':>9}{'RSS MiB':>9}"
                     f"{'lost B':>12}{'runs':>6}{'fail':>5}")
        for r in sorted(fl, key=lambda r: (r.mtu, r.flows or 0, r.path)):
            lines.append(f"{r.path:<13}{r.mtu:>6}{r.flows or 0:>7}{_f(r.median):>8}{_f(r.ratio):>9}"
                         f"{_f(r.rss_mib, '{:.1f}'):>9}{_f(r.lost_bytes, '{:d}'):>12}{r.runs:>6}{r.failed:>5}")
    if skipped:
        lines.append("")
        for name, reason in skipped.items():
            lines.append(f"skipped {name}: {reason}")
    return "\n".join(lines)


def chart(rows: list[Row], path: Path) -> str | None:
    """Draw a grouped bar chart of median throughput; returns why not if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install 'kboxnet[chart]')"
    thr = [r for r in rows if r.test in ("up", "down")]
    cases = sorted({(r.mtu, r.test) for r in thr})
    paths = sorted({r.path for r in thr})
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(cases)), 4))
    width = 0.8 / max(len(paths), 1)
    for i, p in enumerate(paths):
        vals = [next((r.median or 0 for r in thr if r.path == p and (r.mtu, r.test) == c), 0) for c in cases]
        ax.bar([k + i * width for k in range(len(cases))], vals, width, label=p)
    ax.set_xticks([k + 0.4 - width / 2 for k in range(len(cases))])
    ax.set_xticklabels([f"{t} mtu {m}" for m, t in cases])
    ax.set_ylabel("Gbit/s (median)")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title("kboxnet bench: TCP throughput")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return None
