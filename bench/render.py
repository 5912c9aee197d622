#!/usr/bin/env python3
"""Render bench/report.sh's measurements (cni.json from cni-scale, scale.json from scale.py) into
REPORT.md and SVG charts in the same directory. Nothing is copied in by hand: every number comes
from the two JSON files of one run.

  bench/render.py DIR [--command CMD] [--wall SECONDS]
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from svg import cdf, chart  # noqa: E402


def pct(v, p):
    s = sorted(x for x in v if x is not None)
    if not s:
        return float("nan")
    return s[max(1, min(len(s), -(-len(s) * p // 100))) - 1]


def trio(v):
    return "%.2f / %.2f / %.2f" % (pct(v, 50), pct(v, 90), pct(v, 99))


class Report:
    def __init__(self, d, cni, sc):
        self.d, self.cni, self.sc, self.md, self.targets = d, cni, sc, [], []

    def w(self, s=""):
        self.md.append(s)

    def target(self, what, value, limit, unit="", lower_is_better=True, show=None):
        """A row of the targets table; missed ones say by how much."""
        ok = value is not None and (value <= limit if lower_is_better else value >= limit)
        shown = show or ("—" if value is None else "%.3g %s" % (value, unit))
        if value is None:
            verdict = "❌ not reached (see below)"
        elif ok:
            verdict = "✅ met"
        elif lower_is_better:
            verdict = "❌ missed by %.3g %s" % (value - limit, unit) + (" (%.0f%% over)" % (100 * (value / limit - 1)) if limit else "")
        else:
            verdict = "❌ missed by %.3g %s (%.0f%% under)" % (limit - value, unit, 100 * (1 - value / limit))
        self.targets.append("| %s | %s | %s%g %s | %s |" % (what, shown, "≤ " if lower_is_better else "≥ ", limit, unit, verdict))

    def check(self, what, ok, shown):
        self.targets.append("| %s | %s | all | %s |" % (what, shown, "✅ met" if ok else "❌ failed"))

    def save_svg(self, name, svg):
        with open(os.path.join(self.d, name), "w") as f:
            f.write(svg)
        self.w("![%s](%s)" % (name, name))
        self.w()


def density(rp):
    dn = rp.cni.get("density")
    if not dn:
        return
    sides = {s["name"]: s for s in dn["sides"]}
    f, p, k = sides["ferry"], sides["ptp"], 25 if dn["n"] >= 50 else max(1, dn["n"] // 5)
    rp.w("## Pod density: %d pods on one node, added one after another, then removed" % dn["n"])
    rp.w()
    rp.w("Whole-process time of each CNI call (spawn to reaped exit), ferry and ptp + host-local interleaved "
         "(order alternating per pod), each plugin in a node namespace of its own (as on a node, which runs one "
         "pod network), %d untimed warm-up pairs first; DELs in the order of the ADDs. "
         "p50 / p90 / p99 in ms." % dn["warmup"])
    rp.w()
    rp.w("| plugin | ADD first %d | ADD last %d | DEL first %d | DEL last %d | failed | distinct IPs | /32 routes | left after DEL |" % (k, k, k, k))
    rp.w("|---|---|---|---|---|---|---|---|---|")
    for s in (f, p):
        rp.w("| %s | %s | %s | %s | %s | %d | %d/%d | %d/%d | %s |" % (
            s["label"], trio(s["add_ms"][:k]), trio(s["add_ms"][-k:]), trio(s["del_ms"][:k]), trio(s["del_ms"][-k:]),
            s["add_failed"] + s["del_failed"], s["distinct_ips"], dn["n"], s["routes_present"], dn["n"], s["leftover"]))
    fl = dn.get("floor")
    if fl:
        rp.w("| %s | %s | %s | %s | %s | | | | |" % (
            fl["label"], trio(fl["add_ms"][:k]), trio(fl["add_ms"][-k:]), trio(fl["del_ms"][:k]), trio(fl["del_ms"][-k:])))
    rp.w()
    growth = pct(f["add_ms"][-k:], 50) / pct(f["add_ms"][:k], 50)
    if fl:
        f_first, f_last = pct(fl["add_ms"][:k], 50), pct(fl["add_ms"][-k:], 50)
        own_first = pct(f["add_ms"][:k], 50) - f_first
        own_last = pct(f["add_ms"][-k:], 50) - f_last
        rp.w("The kernel floor over the same pod count (a bare veth pair per pod in a third node namespace, "
             "timed after the plugins' calls for that pod): ADD p50 %.2f → %.2f ms (**%.2f ×**). Ferry's ADD above the floor: %.2f → %.2f ms "
             "(%+.2f ms from the first %d pods to the last; the floor is an `ip` process, dynamically linked, "
             "so it can cost more than a whole ferry ADD)." % (f_first, f_last, f_last / f_first, own_first,
                                                                 own_last, own_last - own_first, k))
        rp.w()
    r_first = pct(f["add_ms"][:k], 50) / pct(p["add_ms"][:k], 50)
    r_last = pct(f["add_ms"][-k:], 50) / pct(p["add_ms"][-k:], 50)
    rp.w("Ratios (p50): ferry ADD last %d / first %d = **%.2f**; ferry / ptp ADD: first %d **%.3f**, last %d **%.3f**; "
         "ferry / ptp DEL: first %d %.2f, last %d %.2f." % (
             k, k, growth, k, r_first, k, r_last, k, pct(f["del_ms"][:k], 50) / pct(p["del_ms"][:k], 50),
             k, pct(f["del_ms"][-k:], 50) / pct(p["del_ms"][-k:], 50)))
    rp.w()
    rp.target("density: ferry ADD p50, last %d / first %d pods" % (k, k), growth, 1.2, "×")
    rp.target("density: ferry / ptp ADD p50 (worst of first, last %d)" % k, max(r_first, r_last), 0.25, "×")
    rp.check("density: all calls succeed, distinct IPs, routes present, nothing left",
             all(s["add_failed"] + s["del_failed"] == 0 and s["distinct_ips"] == dn["n"] and s["routes_present"] == dn["n"]
                 and not any(s["leftover"].values()) for s in (f, p)), "ferry and ptp")
    for verb in ("add", "del"):
        series = [{"name": "%s %s" % (s["name"], verb.upper()), "mode": "points",
                   "points": list(enumerate(s[verb + "_ms"], 1))} for s in (f, p)]
        if fl:
            series.append({"name": "kernel floor %s" % verb.upper(), "mode": "points",
                           "points": [(i, v) for i, v in enumerate(fl[verb + "_ms"], 1) if v is not None]})
        rp.save_svg("density_%s.svg" % verb, chart("CNI %s latency against pod count (%s)" % (verb.upper(), "one node"),
                                                   "pod number (order of %s)" % verb.upper(), "ms per call", series, logy=True))
    series = [{"name": "%s %s" % (s["name"], v.upper()), "points": cdf(s[v + "_ms"])} for v in ("add", "del") for s in (f, p)]
    rp.save_svg("cni_cdf.svg", chart("CNI latency distribution (density run)", "ms per call (log)", "% of calls ≤ x",
                                     series, logx=True))


def storm(rp):
    st = rp.cni.get("storm")
    if not st:
        return
    rp.w("## Parallel storm: %d ADDs at once, then %d DELs at once" % (st["n"], st["n"]))
    rp.w()
    rp.w("One thread per call, released together by a barrier; wall time from the first spawn to the last exit. "
         "Rounds alternate which plugin goes first.")
    rp.w()
    rp.w("| round | plugin | ADD wall ms | ADD per-call p50 / p99 | DEL wall ms | DEL per-call p50 / p99 | failed | distinct IPs | routes | left |")
    rp.w("|---|---|---:|---|---:|---|---|---|---|---|")
    walls = {"ferry": [], "ptp": []}
    p99 = {"ferry": [], "ptp": []}
    ok = True
    for i, r in enumerate(st["rounds"]):
        for s in r["sides"]:
            rp.w("| %d | %s | %.0f | %.1f / %.1f | %.0f | %.1f / %.1f | %d | %d | %d | %s |" % (
                i, s["label"], s["add_wall_ms"], pct(s["add_ms"], 50), pct(s["add_ms"], 99), s["del_wall_ms"],
                pct(s["del_ms"], 50), pct(s["del_ms"], 99), s["add_failed"] + s["del_failed"], s["distinct_ips"],
                s["routes_present"], s["leftover"]))
            walls[s["name"]].append((s["add_wall_ms"], s["del_wall_ms"]))
            p99[s["name"]].append((pct(s["add_ms"], 99), pct(s["del_ms"], 99)))
            ok &= s["add_failed"] + s["del_failed"] == 0 and s["distinct_ips"] == st["n"] and not any(s["leftover"].values())
    rp.w()
    mean = lambda v: sum(v) / len(v)
    ra = mean([a for a, _ in walls["ferry"]]) / mean([a for a, _ in walls["ptp"]])
    rd = mean([b for _, b in walls["ferry"]]) / mean([b for _, b in walls["ptp"]])
    pa = mean([a for a, _ in p99["ferry"]]) / mean([a for a, _ in p99["ptp"]])
    rp.w("Ratios ferry / ptp (mean over rounds): ADD wall **%.2f**, DEL wall **%.2f**, ADD per-call p99 **%.2f**." % (ra, rd, pa))
    rp.w()
    rp.check("storm: %d ADDs + %d DELs at once succeed, distinct IPs, nothing left" % (st["n"], st["n"]), ok,
             "ferry ADD wall %.2f× ptp" % ra)
    last = st["rounds"][-1]["sides"]
    series = [{"name": "%s %s" % (s["name"], v), "points": cdf(s[v.lower() + "_ms"])} for v in ("ADD", "DEL") for s in last]
    rp.save_svg("storm_cdf.svg", chart("Storm: per-call latency, %d calls at once" % st["n"], "ms per call (log)",
                                       "% of calls ≤ x", series, logx=True))


def scale(rp):
    sc = rp.sc
    rows = sc.get("scale", [])
    rp.w("## Cold start against the number of nodes (leases)")
    rp.w()
    rp.w("A fresh node namespace (eth0 on a 172.16.0.0/12 underlay bridge; every lease's public IP is on it, the "
         "peers need not exist), ferryd started with the store already holding the leases (network 10.0.0.0/8, "
         "/24 subnets). Start-up = spawn (`nsenter` + ferryd) to the arrival of the last route's netlink event in "
         "that namespace. RSS 1 s after; steady RSS and idle CPU over the %s s after that (the default `--resync` "
         "is 60 s, so the window holds no sweep); then one sweep asked for with SIGUSR2 and its CPU over 2 s, and the "
         "RSS after it (the sweep's code faulted back in). "
         "etcd %s, data on %s." % (next((str(r["idle_window_s"]) for r in rows if "idle_window_s" in r), "10"),
                                   sc.get("etcd_version", "?"), sc.get("etcd_data", "?")))
    rp.w()
    rp.w("| store | leases | start-up s | routes | RSS KiB 1 s after (peak) | steady RSS KiB | idle CPU (window) | one sweep | RSS KiB after it |")
    rp.w("|---|---:|---:|---|---|---:|---|---|---:|")
    for r in rows:
        idle = "%.1f ms, %d ticks of 1/%d s (%d s)" % (r.get("idle_cpu_ms", float("nan")), r["idle_ticks"], r["hz"],
                                                      r["idle_window_s"]) if "idle_ticks" in r else ""
        sweep = "%.1f ms" % r["sweep_cpu_ms"] if "sweep_cpu_ms" in r else ""
        su = "%.3f" % r["startup_s"] if r["startup_s"] is not None else "did not converge"
        rp.w("| %s | %d | %s | %d/%d | %d (%d) | %s | %s | %s | %s |" % (
            r["store"], r["leases"], su, r["routes_in_table"], r["expected_routes"], r["rss_kib"], r["hwm_kib"],
            r.get("rss_idle_kib") or "", idle, sweep, r.get("rss_after_sweep_kib") or ""))
    rp.w()
    idle = [r for r in rows if "idle_ticks" in r and r["startup_s"] is not None]
    if idle:
        rp.w("Idle CPU (per-thread schedstat, exact; ticks as `ps` counts them) is what the window holds besides "
             "waiting. No timer runs in ferryd on either store (inotify, netlink events; with etcd the watch "
             "streams wait for etcd, and the kernel's TCP keepalive watches the connections). The safety-net sweep "
             "(`--resync`, default 60 s: a dump of every route and nexthop, the plan against the wanted set, "
             "the node files re-checked; nft runs only if nftables' generation moved) costs, per sweep: %s, "
             "so at the default period %s of a core." % (", ".join(
                 "%s %d leases %.1f ms" % (r["store"], r["leases"], r["sweep_cpu_ms"]) for r in idle if "sweep_cpu_ms" in r),
                 ", ".join("%.3f%%" % (r["sweep_cpu_ms"] / 600.0) for r in idle if "sweep_cpu_ms" in r)))
        rp.w()
    for r in rows:
        if r.get("log_tail"):
            rp.w("**%s with %d leases never converged** (%d/%d routes after 120 s); ferryd's log ends:" % (
                r["store"], r["leases"], r["routes_seen"], r["expected_routes"]))
            rp.w()
            rp.w("```\n%s\n```" % r["log_tail"].strip())
            rp.w()
    for f in sc.get("floor", []):
        rp.w("Kernel floor: `ip -batch` adding %d routes via on-link gateways to a fresh namespace: **%.3f s**." % (f["routes"], f["seconds"]))
    rp.w()
    sizes = sorted({r["leases"] for r in rows})
    for kind in ("etcd", "file"):
        for n, limit_s, limit_kib in ((5000, 0.2, 5120), (50000, 2.0, 20480)):
            r = [x for x in rows if x["store"] == kind and abs(x["leases"] - n) <= n // 50]
            if r:
                rp.target("%d nodes, %s: cold start to all routes" % (r[0]["leases"], kind), r[0]["startup_s"], limit_s, "s")
                conv = r[0]["startup_s"] is not None
                steady = r[0].get("rss_idle_kib") or r[0]["rss_kib"]
                rp.target("%d nodes, %s: steady RSS" % (r[0]["leases"], kind), steady / 1024 if conv else None,
                          limit_kib / 1024, "MiB")
                if "idle_ticks" in r[0]:
                    rp.target("%d nodes, %s: idle CPU (%d s, ticks)" % (r[0]["leases"], kind, r[0]["idle_window_s"]),
                              r[0]["idle_ticks"], 0, "ticks")
    series = [{"name": "ferryd %s" % k, "points": [(r["leases"], r["startup_s"]) for r in rows if r["store"] == k]}
              for k in ("etcd", "file")]
    series.append({"name": "kernel floor", "mode": "points", "r": 4,
                   "points": [(f["routes"], f["seconds"]) for f in sc.get("floor", [])]})
    rp.save_svg("nodes_startup.svg", chart("Cold start to all routes against node count", "leases (log)", "seconds (log)",
                                           series, logx=True, logy=True))
    series = [{"name": "ferryd %s" % k, "points": [(r["leases"], r["rss_kib"] / 1024) for r in rows if r["store"] == k]}
              for k in ("etcd", "file")]
    rp.save_svg("nodes_rss.svg", chart("ferryd RSS after start-up against node count", "leases (log)", "MiB", series,
                                       logx=True, hlines=[(5, "5 MiB @5k"), (20, "20 MiB @50k")]))
    return sizes


def churn(rp):
    runs = rp.sc.get("churn", [])
    rp.w("## Lease churn")
    rp.w()
    rp.w("Leases written at a fixed rate through the store's own interface (etcd: its v3 JSON gateway on a "
         "keep-alive connection; file store: temp file + rename, unlink), in turn an add, a public-IP move and a "
         "delete, each subnet touched once. Latency: monotonic time just before the write to the arrival of the "
         "matching netlink route event in the node (new route with the new gateway, or its deletion), so it "
         "includes etcd's commit; the listener only timestamps, resolution ~µs plus its scheduling delay. "
         "Afterwards the node's proto-113 table is compared with the store.")
    rp.w()
    rp.w("| store | leases | ops (rate/s) | write→route p50 / p90 / p99 / max ms | add / move / del p99 | store write p50 / p99 | missed | end: missing / extra / wrong gw | ferryd CPU |")
    rp.w("|---|---:|---|---|---|---|---:|---|---|")
    for c in [c for c in runs if "skipped" in c]:
        rp.w("Churn with %s at %d leases: not run, %s (see the cold start above)." % (c["store"], c["leases"], c["skipped"]))
        rp.w()
        rp.target("churn %d leases, %s: write→route p99" % (c["leases"], c["store"]), None, 20, "ms")
    runs = [c for c in runs if "skipped" not in c]
    for c in runs:
        lat = c["lat_ms"]
        f = c["final"]
        bk = " / ".join("%.1f" % pct(c["by_kind"][k], 99) for k in ("add", "move", "del"))
        rp.w("| %s | %d | %d (%.0f) | %s / %.1f | %s | %.1f / %.1f | %d | %d / %d / %d | %.2f s in %.0f s (%.1f%%) |" % (
            c["store"], c["leases"], len(lat), c["achieved_rate"], trio(lat), pct(lat, 100), bk,
            pct(c["write_ms"], 50), pct(c["write_ms"], 99), c["missed"], f["missing"], f["extra"], f["wrong_gw"],
            c["ferryd_cpu_s"], c["cpu_window_s"], 100 * c["ferryd_cpu_s"] / c["cpu_window_s"]))
        if c["store"] == "etcd":
            rp.target("churn %d leases, etcd: write→route p99" % c["leases"], pct(lat, 99), 20, "ms")
        rp.check("churn %d leases, %s: no missed, missing or extra route" % (c["leases"], c["store"]),
                 c["missed"] == 0 and f["missing"] == f["extra"] == f["wrong_gw"] == 0,
                 "%d missed, %d/%d/%d" % (c["missed"], f["missing"], f["extra"], f["wrong_gw"]))
    rp.w()
    for c in runs:
        lat = [x for x in c["lat_ms"] if x is not None]
        slow = [x for x in lat if x > 20]
        if lat and pct(lat, 99) > 20:
            rp.w("%s at %d leases: %d of %d changes (%.1f%%) took over 20 ms; p50 %.2f ms. The slow ones arrive while "
                 "a resync sweep's plan and its changes run on the event loop (one sweep every 10 s; its dump is "
                 "taken on another thread, store events are applied meanwhile)." % (
                     c["store"], c["leases"], len(slow), len(lat), 100.0 * len(slow) / len(lat), pct(lat, 50)))
            rp.w()
    series = [{"name": "%s %dk" % (c["store"], round(c["leases"] / 1000)) if c["leases"] >= 1000 else "%s %d" % (c["store"], c["leases"]),
               "points": cdf(c["lat_ms"])} for c in runs]
    rp.save_svg("churn_cdf.svg", chart("Lease churn: store write → route change", "ms (log)", "% of changes ≤ x",
                                       series, logx=True))


def datapath(rp):
    dp = rp.sc.get("datapath")
    if not dp:
        return
    med = {k: pct(v, 50) for k, v in dp["gbps"].items()}
    rp.w("## Datapath: 3 real nodes among %d leases" % dp["leases"])
    rp.w()
    rp.w("Three ferryd nodes on the same etcd (%s routes each, %d expected), one ferry pod each. Pings pod → pod "
         "across nodes: %s. iperf3 (%d s, %d rounds, order rotating) node 1 → node 2: the underlay itself (node to "
         "node), ferry pod to pod, and ptp + host-local pods with static routes between the nodes." % (
             dp["routes"], dp["routes_expected"],
             ", ".join("%s→%s %s%s" % (p["src"], p["dst"], "ok" if p["ok"] else "FAILED",
                                     " (%.2f ms)" % p["rtt_ms"] if p["rtt_ms"] else "") for p in dp["pings"]),
             dp["iperf_seconds"], dp["rounds"]))
    rp.w()
    rp.w("| path | Gbit/s per round | median | / underlay |")
    rp.w("|---|---|---:|---:|")
    for k in ("underlay", "ferry", "ptp"):
        rp.w("| %s | %s | %.2f | %.3f |" % (k, ", ".join("%.2f" % x for x in dp["gbps"][k] if x), med[k], med[k] / med["underlay"]))
    rp.w()
    rp.check("3 real nodes among the leases: pods ping across", all(p["ok"] for p in dp["pings"]),
             "%d/%d pings" % (sum(p["ok"] for p in dp["pings"]), len(dp["pings"])))
    rp.target("datapath: ferry / underlay throughput", med["ferry"] / med["underlay"], 0.95, "×", lower_is_better=False)


def daemons(rp):
    dm = rp.sc.get("daemons")
    if not dm:
        return
    conv = [c for c in dm["converge_s"] if c is not None]
    rp.w("## %d ferryd on one etcd (%d leases)" % (dm["n"], dm["leases"]))
    rp.w()
    rp.w("%d node namespaces on the underlay, all started at once against one etcd that holds synthetic leases up "
         "to %d once the daemons have claimed theirs. Converged = the node has every other lease routed (polled)." % (dm["n"], dm["leases"]))
    rp.w()
    rp.w("| metric | value |")
    rp.w("|---|---|")
    rp.w("| converged | %d/%d (slowest %.2f s after its spawn; median %.2f s) |" % (len(conv), dm["n"], max(conv or [0]), pct(conv, 50)))
    rp.w("| distinct subnets | %d/%d |" % (dm["distinct_subnets"], dm["n"]))
    rp.w("| etcd requests at steady state (%d s) | %.1f unary calls/s, %.1f stream messages/s |" % (dm["window_s"], dm["etcd_unary_per_s"], dm["etcd_stream_msgs_per_s"]))
    rp.w("| etcd CPU / RSS | %.1f%% / %.0f MiB |" % (dm["etcd_cpu_pct"], dm["etcd_rss_kib"] / 1024))
    rp.w("| daemons' total RSS | %.0f MiB (%.2f MiB each) |" % (dm["daemons_rss_kib"] / 1024, dm["daemons_rss_kib"] / 1024 / dm["n"]))
    rp.w("| daemons' total CPU | %.1f%% of one core |" % dm["daemons_cpu_pct"])
    p = dm["propagate_ms"]
    rp.w("| one new lease → route on all | %s ms for all %d (median daemon %.1f ms; %d never saw it) |" % (
        "%.1f" % max(p) if p else "—", dm["n"], pct(p, 50), dm["propagate_missed"]))
    rp.w()
    rp.check("%d daemons on one etcd: all converge, distinct subnets" % dm["n"],
             len(conv) == dm["n"] == dm["distinct_subnets"] and dm["propagate_missed"] == 0 and dm["alive"] == dm["n"],
             "%d converged, %d distinct" % (len(conv), dm["distinct_subnets"]))


def profile(rp):
    pr = rp.sc.get("profile")
    if not pr:
        return
    rp.w("## Profile: cold start at %d leases (%s)" % (pr["leases"], pr["store"]))
    rp.w()
    rp.w("`perf record -F 1999 -g` on an unstripped ferryd (same code, `strip=false`, frame pointers) from spawn "
         "until all routes were in (%s s under perf), self time:" % ("%.2f" % pr["startup_under_perf_s"] if pr["startup_under_perf_s"] else "?"))
    rp.w()
    rp.w("| share by DSO | |")
    rp.w("|---|---:|")
    for d in pr["by_dso"]:
        rp.w("| %s | %.1f%% |" % (d["dso"], d["pct"]))
    rp.w()
    rp.w("| self % | dso | symbol |")
    rp.w("|---:|---|---|")
    for t in pr["top"]:
        rp.w("| %.1f | %s | `%s` |" % (t["pct"], t["dso"], t["sym"].replace("|", "\\|")))
    rp.w()


def main():
    d = sys.argv[1]
    args = dict(zip(sys.argv[2::2], sys.argv[3::2]))
    cni = json.load(open(os.path.join(d, "cni.json")))
    sc = json.load(open(os.path.join(d, "scale.json")))
    rp = Report(d, cni, sc)
    density(rp)
    storm(rp)
    scale(rp)
    churn(rp)
    datapath(rp)
    daemons(rp)
    profile(rp)
    head = ["# Ferry benchmark report%s" % (" (quick mode)" if sc.get("quick") else ""), "",
            "Machine: %s. Load average %s before, %s after the CNI part." % (cni["machine"], cni["load_before"], cni["load_after"]),
            "Taken %s, commit %s; command `%s`; wall time %s s. The reference tools run in the same invocation, "
            "interleaved where possible, and ratios are given: they hold when the 2 cores are shared, absolute "
            "times do not (the load average after the CNI part is the storms' own)." % (
                args.get("--date", "?"), args.get("--commit", "?"), args.get("--command", "bench/report.sh"), args.get("--wall", "?")),
            "", "Binaries (a private copy taken at the start; sha256 prefix, build time): %s." % "; ".join(
                l.strip() for l in open(os.path.join(d, "binaries.txt"))) if os.path.exists(os.path.join(d, "binaries.txt")) else "",
            "", "## Targets", "", "| target | measured | goal | verdict |", "|---|---|---|---|"] + rp.targets + [""]
    with open(os.path.join(d, "REPORT.md"), "w") as f:
        f.write("\n".join(head + rp.md) + "\n")


if __name__ == "__main__":
    main()
