#!/usr/bin/env python3
"""ferryd at scale, inside tests/sandbox.sh (bench/report.sh runs it): cold start against N leases
(etcd and the file store), lease churn, 3 real nodes with pods (ping, iperf3 against the underlay
and against ptp + static routes), many daemons on one etcd, a perf profile at the largest size.
Writes every sample as JSON (--json). Sanity is recorded, not asserted (bench_quick.rs asserts).

  bench/scale.py --bin DIR [--quick] [--prof-bin FERRYD] --json FILE
  bench/scale.py --bin DIR --cold etcd:50000,file:50000 --json FILE   (cold starts only)
  FERRY_BENCH_LEASE_TTL=S: synthetic etcd leases get an etcd lease of S seconds each (as real
  nodes' leases do) instead of none (a reservation); FERRY_BENCH_LOG=info keeps ferryd's log;
  FERRY_BENCH_FERRYD_ARGS="--etcd-failover-timeout 5s": extra flags for every ferryd.

etcd is bounded: its data on a private tmpfs of ETCD_TMPFS, --quota-backend-bytes ETCD_QUOTA,
hourly-ish auto-compaction, and a watchdog that kills it (by PID) past ETCD_RSS_LIMIT of RSS
(an unbounded etcd once grew to 24 GB and took the machine down); its peak RSS is reported.
"""

import argparse
import json
import os
import random
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lab  # noqa: E402
from lab import (EtcdStore, FileStore, Listener, Underlay, cpu_ns, cpu_ticks, ferry_routes,  # noqa: E402
                 proc_status, pub_ip, route_count, run, subnet)

SIZES = {"quick": ([200, 500], [2000]), "full": ([500, 1000, 2000, 5000], [10000, 20000, 50000])}
ETCD_TMPFS = "2g"  # etcd's data dir: a private tmpfs of this size
ETCD_QUOTA = 1 << 30  # --quota-backend-bytes (50,000 leases are ~15 MB of history at most here)
ETCD_RSS_LIMIT = 3 << 20  # KiB: the watchdog kills etcd past this


def log(msg):
    print("scale: %s" % msg, file=sys.stderr, flush=True)


class Node:
    """One ferryd in its own namespace on the underlay."""

    def __init__(self, ctx, name, addr, store, binary=None):
        self.ctx, self.ns, self.addr, self.store = ctx, name, addr, store
        self.dir = os.path.join(ctx.tmp, name)
        os.makedirs(self.dir, exist_ok=True)
        self.bin = binary or os.path.join(ctx.bin, "ferryd")
        self.proc = None

    def argv(self):
        return [self.bin, "--store", self.store.url, "--iface", "eth0", "--network", lab.NETWORK,
                "--subnet-file", self.dir + "/subnet.env", "--cni-conf-dir", self.dir + "/net.d",
                "--cni-data-dir", self.dir + "/ipam", "--metrics-address", "off",
                "--log-level", os.environ.get("FERRY_BENCH_LOG", "warn")] + shlex.split(
                    os.environ.get("FERRY_BENCH_FERRYD_ARGS", ""))

    def start(self, wrap=()):
        self.log = open(self.dir + "/log", "w")
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(list(wrap) + ["nsenter", "--net=/run/netns/" + self.ns] + self.argv(),
                                     stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log)

    def subnet(self):
        try:
            for line in open(self.dir + "/subnet.env"):
                if line.startswith("FLANNEL_SUBNET="):
                    a, b, c, _ = line.split("=")[1].split("/")[0].split(".")
                    return "%s.%s.%s.0/24" % (a, b, c)
        except OSError:
            return None

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


class Ctx:
    def __init__(self, args):
        self.bin, self.quick, self.rng = args.bin, args.quick, random.Random(11)
        self.tmp = tempfile.mkdtemp(prefix="ferry-scale-", dir="/run")
        self.disk = tempfile.mkdtemp(prefix="ferry-scale-etcd-", dir="/run")
        run("mount", "-t", "tmpfs", "-o", "size=%s,mode=0700" % ETCD_TMPFS, "ferry-etcd", self.disk)
        self.etcd_peak_kib, self.etcd_killed = 0, None
        self.under = Underlay()
        self.port = 23790 + os.getpid() % 1000
        self.etcd = self.start_etcd()
        self.stores = {"etcd": EtcdStore(self.port), "file": FileStore(self.tmp + "/filestore")}
        for s in self.stores.values():
            s.put_config()
        self.all_nodes = []
        self.next_j, self.node_seq = {}, 0  # per store: the next synthetic subnet number

    def start_etcd(self):
        p, peer = self.port, self.port + 1000
        argv = ["etcd", "--name", "bench", "--data-dir", self.disk + "/data",
                "--listen-client-urls", "http://127.0.0.1:%d,http://172.16.0.1:%d" % (p, p),
                "--advertise-client-urls", "http://172.16.0.1:%d" % p,
                "--listen-peer-urls", "http://127.0.0.1:%d" % peer,
                "--initial-advertise-peer-urls", "http://127.0.0.1:%d" % peer,
                "--initial-cluster", "bench=http://127.0.0.1:%d" % peer,
                "--max-txn-ops", "1000", "--max-request-bytes", "33554432",
                "--quota-backend-bytes", str(ETCD_QUOTA),
                "--auto-compaction-mode", "periodic", "--auto-compaction-retention", "10m",
                "--log-level", "warn"]
        proc = subprocess.Popen(argv, stdout=open(self.tmp + "/etcd.log", "w"), stderr=subprocess.STDOUT)
        for _ in range(300):
            if subprocess.run(["etcdctl", "--endpoints=127.0.0.1:%d" % p, "endpoint", "health"],
                              capture_output=True).returncode == 0:
                threading.Thread(target=self.etcd_watchdog, args=(proc,), daemon=True).start()
                return proc
            time.sleep(0.05)
        proc.kill()
        proc.wait()
        raise RuntimeError("etcd did not start: " + open(self.tmp + "/etcd.log").read()[-2000:])

    def etcd_watchdog(self, proc):
        """Peak RSS of etcd, sampled every 0.5 s; past ETCD_RSS_LIMIT etcd is killed (by PID)."""
        while proc.poll() is None:
            try:
                kib = proc_status(proc.pid, "VmRSS")
            except OSError:
                return
            self.etcd_peak_kib = max(self.etcd_peak_kib, kib)
            if kib > ETCD_RSS_LIMIT:
                self.etcd_killed = "etcd RSS %d KiB over the %d KiB limit: killed" % (kib, ETCD_RSS_LIMIT)
                log(self.etcd_killed)
                proc.kill()
                return
            time.sleep(0.5)

    def node(self, store, prefix="n", binary=None):
        self.node_seq += 1
        k = self.node_seq
        name = "%s%d" % (prefix, k)
        addr = "172.16.%d.%d" % (1 + k // 250, 1 + k % 250)
        self.under.add_nodes([(name, addr)])
        node = Node(self, name, addr, store, binary)
        self.all_nodes.append(node)
        return node

    def drop(self, node):
        node.stop()
        self.under.del_nodes([node.ns])

    def top_up(self, store, target):
        """Add synthetic leases (public IPs 172.17.x.y) until the store holds `target`."""
        have = store.leases()
        js = self.fresh_js(store, have, max(0, target - len(have)))
        t0 = time.monotonic()
        ttl = int(os.environ.get("FERRY_BENCH_LEASE_TTL", "0")) or None  # etcd: one lease per key
        store.bulk([(j, pub_ip(j)) for j in js], **({"ttl": ttl} if ttl and store is self.stores["etcd"] else {}))
        return len(js), time.monotonic() - t0

    def fresh_js(self, store, have, n):
        """n subnet numbers no lease of `store` uses (10.0.1.0/24 .. 10.255.255.0/24)."""
        out, j = [], self.next_j.get(store.url, 1)
        while len(out) < n:
            if j > 65535:
                raise RuntimeError("no free /24 left in %s" % lab.NETWORK)
            if subnet(j) not in have:
                out.append(j)
            j += 1
        self.next_j[store.url] = j
        return out

    def close(self):
        for node in self.all_nodes:  # only what this run started, by PID
            node.stop()
        self.etcd.terminate()
        self.etcd.wait()
        self.under.close()
        shutil.rmtree(self.tmp, ignore_errors=True)
        run("umount", self.disk, check=False)
        shutil.rmtree(self.disk, ignore_errors=True)


def kernel_floor(ctx, n):
    """`ip -batch` adding n routes via on-link gateways in a fresh namespace: the kernel's own cost."""
    ctx.under.add_nodes([("kf", "172.16.15.1")])
    lines = "".join("route add %s via %s proto 113\n" % (subnet(j), pub_ip(j)) for j in range(1, n + 1))
    t0 = time.monotonic()
    run("ip", "-n", "kf", "-batch", "-", inp=lines)
    dt = time.monotonic() - t0
    ctx.under.del_nodes(["kf"])
    return {"routes": n, "seconds": dt}


def wait_converged(lst, node, expected, timeout):
    """Time from spawn to the arrival of the last of `expected` distinct proto-113 routes."""
    seen, last, i, deadline = set(), None, 0, time.monotonic() + timeout
    while time.monotonic() < deadline and node.proc.poll() is None:
        evs = lst.events()
        for t, _, kind, dst, _, proto in evs[i:]:
            if kind == "add" and proto == lab.RTPROT_FERRY and dst not in seen:
                seen.add(dst)
                last = t
        i = len(evs)
        if len(seen) >= expected:
            return len(seen), last - node.t0
        if lst.overflows and route_count(node.ns) >= expected:
            # Events were lost (socket buffer overrun): the table itself says when; poll-bounded.
            return expected, time.monotonic() - node.t0
        time.sleep(0.01)
    return len(seen), None


def cold_start(ctx, kind, size, idle=False, keep=False, binary=None):
    store = ctx.stores[kind]
    added, bulk_s = ctx.top_up(store, size)
    expected = len(store.leases())
    node = ctx.node(store, binary=binary)
    lst = Listener([node.ns])
    node.start()
    got, startup = wait_converged(lst, node, expected, 120)
    lst.close()
    time.sleep(1.0)
    pid = node.proc.pid
    r = {"store": kind, "leases": expected + 1, "expected_routes": expected, "routes_seen": got,
         "startup_s": startup, "rss_kib": proc_status(pid, "VmRSS"), "hwm_kib": proc_status(pid, "VmHWM"),
         "bulk_written": added, "bulk_s": bulk_s, "routes_in_table": route_count(node.ns),
         "timed_by": "poll (events overrun)" if lst.overflows else "netlink events",
         "overflows": lst.overflows}
    if startup is None:
        r["log_tail"] = open(node.dir + "/log").read()[-600:]
    elif os.environ.get("FERRY_BENCH_LOG"):  # phases from the daemon's own log lines
        r["log"] = open(node.dir + "/log").read()[-4000:]
    if idle and startup is not None:
        secs = 3 if ctx.quick else 10
        a, a_ns = cpu_ticks(pid), cpu_ns(pid)
        perf = perf_attach("FERRY_BENCH_IDLE_PERF", pid, 4999)  # a profile of the idle window
        time.sleep(secs)
        perf_stop(perf)
        r.update(idle_ticks=cpu_ticks(pid) - a, idle_cpu_ms=(cpu_ns(pid) - a_ns) / 1e6, idle_window_s=secs,
                 hz=lab.HZ, rss_idle_kib=proc_status(pid, "VmRSS"))
        # One sweep (the default --resync is 60 s, so the window above held none), asked for with
        # SIGUSR2: its CPU over the next 2 s, and what the idle window would hold at --resync 10s.
        a, a_ns = cpu_ticks(pid), cpu_ns(pid)
        os.kill(pid, signal.SIGUSR2)
        time.sleep(2)
        r.update(sweep_ticks=cpu_ticks(pid) - a, sweep_cpu_ms=(cpu_ns(pid) - a_ns) / 1e6,
                 rss_after_sweep_kib=proc_status(pid, "VmRSS"))
    if os.environ.get("FERRY_BENCH_SMAPS") and startup is not None:  # where the RSS is
        r["smaps"] = smaps_top(pid)
        log("RSS by mapping: %s" % r["smaps"])
    log("cold start %s %d leases: %s s, %d/%d routes, RSS %d KiB" %
        (kind, expected + 1, startup, got, expected, r["rss_kib"]))
    if keep:
        return r, node
    ctx.drop(node)
    return r, None


def smaps_top(pid, n=8):
    """The largest resident mappings of a process: (KiB, name)."""
    out, cur = [], None
    with open("/proc/%d/smaps" % pid) as f:
        for line in f:
            parts = line.split()
            if "-" in parts[0] and len(parts) >= 5:
                cur = parts[5] if len(parts) > 5 else "[anon]"
            elif parts[0] == "Rss:":
                out.append((int(parts[1]), os.path.basename(cur)))
    agg = {}
    for kib, name in out:
        agg[name] = agg.get(name, 0) + kib
    return sorted(((k, v) for v, k in agg.items()), reverse=True)[:n]


def perf_attach(env, pid, hz):
    """`perf record -g` of a running process into the file $env names; None if it names none."""
    if not os.environ.get(env):
        return None
    return subprocess.Popen(["perf", "record", "-q", "-F", str(hz), "-g", "-p", str(pid), "-o", os.environ[env]])


def perf_stop(perf):
    if perf:
        perf.send_signal(signal.SIGINT)
        perf.wait(60)


def table_vs_store(store, node):
    """Missing, extra and wrong-gateway routes of node against the store (its own lease excluded)."""
    want = {s: ip for s, ip in store.leases().items() if s != node.subnet()}
    have = ferry_routes(node.ns)
    missing = [s for s in want if s not in have]
    extra = [s for s in have if s not in want]
    wrong = [s for s in want if s in have and have[s] != want[s]]
    return {"want": len(want), "have": len(have), "missing": len(missing), "extra": len(extra),
            "wrong_gw": len(wrong), "examples": (missing + extra + wrong)[:5]}


def churn_ops(ctx, store, node, seconds, rate):
    """Write leases at a fixed rate: add, public IP move, delete in turn; each subnet touched once."""
    have = store.leases()
    synth = [s for s, ip in have.items() if ip.startswith("172.17.") and s != node.subnet()]
    ctx.rng.shuffle(synth)
    n = int(seconds * rate)
    adds = ctx.fresh_js(store, have, n // 3 + 1)
    ops, t_start = [], time.monotonic()
    for k in range(n):
        delay = t_start + k / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        kind = ("add", "move", "del")[k % 3]
        j = adds.pop() if kind == "add" else js_of(synth.pop())
        ip = pub_ip(j, 18 if kind == "move" else 17)
        t0 = time.monotonic()
        store.delete(j) if kind == "del" else store.put(j, ip)
        ops.append((t0, kind, subnet(j), None if kind == "del" else ip, time.monotonic() - t0))
    return ops, time.monotonic() - t_start


def js_of(sub):
    a, b, c, _ = sub.split("/")[0].split(".")
    return int(b) * 256 + int(c)


def match_ops(lst, ops):
    """Per op: ms from the store write to the first matching route event (None: never seen)."""
    by_dst = {}
    for t, _, kind, dst, gw, proto in lst.events():
        if proto == lab.RTPROT_FERRY:
            by_dst.setdefault(dst, []).append((t, kind, gw))
    lat = []
    for t0, kind, dst, ip, _ in ops:
        hit = [t for t, k, gw in by_dst.get(dst, []) if t >= t0 and
               ((kind == "del" and k == "del") or (kind != "del" and k == "add" and gw == ip))]
        lat.append((hit[0] - t0) * 1000 if hit else None)
    return lat


def churn(ctx, kind, node, seconds, rate=100):
    store = ctx.stores[kind]
    lst = Listener([node.ns])
    c0 = cpu_ticks(node.proc.pid)
    perf = perf_attach("FERRY_BENCH_CHURN_PERF", node.proc.pid, 999)  # a profile during churn
    ops, wall = churn_ops(ctx, store, node, seconds, rate)
    perf_stop(perf)
    time.sleep(2)
    cpu = (cpu_ticks(node.proc.pid) - c0) / lab.HZ
    lat = match_ops(lst, ops)
    lst.close()
    check = table_vs_store(store, node)
    by_kind = {k: [l for (o, l) in zip(ops, lat) if o[1] == k] for k in ("add", "move", "del")}
    r = {"store": kind, "leases": len(store.leases()), "seconds": seconds, "rate": rate,
         "achieved_rate": len(ops) / wall, "lat_ms": lat, "by_kind": by_kind,
         "write_ms": [o[4] * 1000 for o in ops], "missed": sum(1 for l in lat if l is None),
         "ferryd_cpu_s": cpu, "cpu_window_s": wall + 2, "final": check, "overflows": lst.overflows}
    ok = sorted(l for l in lat if l is not None)
    pct = lambda q: ok[min(len(ok) - 1, int(q * len(ok)))] if ok else float("nan")
    log("churn %s: %d ops, %d missed, p50 %.2f p99 %.2f max %.2f ms, ferryd CPU %.2f s, final %s"
        % (kind, len(ops), r["missed"], pct(0.5), pct(0.99), pct(1.0), cpu, check))
    return r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--json", required=True)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--prof-bin")
    ap.add_argument("--daemons", type=int)
    ap.add_argument("--cold", help="only cold starts: STORE:SIZE,... (e.g. etcd:50000,file:50000)")
    ap.add_argument("--churn", help="only cold start + churn: STORE:SIZE,... (e.g. etcd:5000)")
    ap.add_argument("--churn-seconds", type=int, default=60)
    ap.add_argument("--daemons-only", type=int, metavar="N", help="only N ferryd on one etcd (5,000 leases)")
    args = ap.parse_args()
    lab.require_sandbox()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("scale: terminated"))  # so cleanup runs
    os.nice(-5)
    ctx = Ctx(args)
    try:
        if args.cold:
            out = cold_only(ctx, args.cold)
        elif args.daemons_only:
            import scale_more
            ctx.top_up(ctx.stores["etcd"], 5000)
            out = {"daemons": scale_more.daemons(ctx, ctx.stores["etcd"], args.daemons_only, 5000)}
        elif args.churn:
            out = churn_only(ctx, args.churn, args.churn_seconds)
        else:
            out = experiments(ctx, args)
        out.update(etcd_peak_rss_kib=ctx.etcd_peak_kib, etcd_killed=ctx.etcd_killed)
    finally:
        ctx.close()
    out["leftover_netns"] = sorted(os.listdir("/run/netns"))
    with open(args.json, "w") as f:
        json.dump(out, f)


def cold_only(ctx, spec):
    """Cold starts only, e.g. "etcd:50000,file:50000" (each size reached by topping up)."""
    out = {"quick": ctx.quick, "etcd_version": run("etcd", "--version").split("\n")[0],
           "etcd_data": "tmpfs (%s)" % ETCD_TMPFS, "scale": []}
    for item in spec.split(","):
        kind, size = item.split(":")
        r, _ = cold_start(ctx, kind, int(size), idle=True)
        r["etcd_rss_kib"] = proc_status(ctx.etcd.pid, "VmRSS") if ctx.etcd.poll() is None else None
        out["scale"].append(r)
    return out


def churn_only(ctx, spec, seconds):
    """Cold start, then churn, e.g. "etcd:5000" (each size reached by topping up)."""
    out = {"quick": ctx.quick, "scale": [], "churn": []}
    for item in spec.split(","):
        kind, size = item.split(":")
        r, node = cold_start(ctx, kind, int(size), idle=True, keep=True)
        out["scale"].append(r)
        if node:
            out["churn"].append(churn(ctx, kind, node, seconds))
            ctx.drop(node)
    return out


def experiments(ctx, args):
    import scale_more
    small, big = SIZES["quick" if ctx.quick else "full"]
    churn_s = 5 if ctx.quick else 60
    out = {"quick": ctx.quick, "etcd_version": run("etcd", "--version").split("\n")[0],
           "etcd_data": "tmpfs (%s)" % ETCD_TMPFS,
           "floor": [kernel_floor(ctx, n) for n in (small[-1], big[-1])], "scale": [], "churn": []}
    for kind in ("etcd", "file"):
        for size in small:
            r, node = cold_start(ctx, kind, size, idle=size == small[-1], keep=size == small[-1])
            out["scale"].append(r)
        out["churn"].append(churn(ctx, kind, node, churn_s))
        ctx.drop(node)
    out["datapath"] = scale_more.datapath(ctx, ctx.stores["etcd"])
    n = args.daemons or (5 if ctx.quick else 100)
    out["daemons"] = scale_more.daemons(ctx, ctx.stores["etcd"], n, small[-1])
    for kind in ("etcd", "file"):
        for size in big:
            last = size == big[-1]
            r, node = cold_start(ctx, kind, size, idle=last, keep=last and kind == "etcd")
            out["scale"].append(r)
        if node and r["startup_s"] is None:
            out["churn"].append({"store": kind, "leases": r["leases"], "skipped": "ferryd never converged"})
        elif node:
            out["churn"].append(churn(ctx, kind, node, churn_s))
        if node:
            ctx.drop(node)
    if args.prof_bin:
        # The store that reached the largest size; etcd first.
        ok = [r["store"] for r in out["scale"] if r["leases"] > big[-1] and r["startup_s"] is not None]
        out["profile"] = scale_more.profile(ctx, (ok or ["etcd"])[0], big[-1], args.prof_bin)
    return out


if __name__ == "__main__":
    main()
