"""bench/scale.py, continued: the datapath with real nodes, many daemons on one etcd, the profile."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import lab
from lab import Listener, cpu_ticks, proc_status, pub_ip, route_count, run, subnet


def log(msg):
    print("scale: %s" % msg, file=sys.stderr, flush=True)


def wait_routes(nodes, want, timeout):
    """Seconds until every node has `want` proto-113 routes, per node (None: never)."""
    t0, done = time.monotonic(), {}
    while len(done) < len(nodes) and time.monotonic() - t0 < timeout:
        for n in nodes:
            if n.ns not in done and route_count(n.ns) >= want:
                done[n.ns] = time.monotonic() - n.t0
        time.sleep(0.05)
    return [done.get(n.ns) for n in nodes]


def cni(node_ns, plugin, conf, verb, cid, pod, cni_path):
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CNI_COMMAND": verb, "CNI_CONTAINERID": cid,
           "CNI_NETNS": "/run/netns/" + pod, "CNI_IFNAME": "eth0", "CNI_PATH": cni_path}
    r = subprocess.run(["nsenter", "--net=/run/netns/" + node_ns, plugin], input=json.dumps(conf),
                       capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise RuntimeError("%s %s: %s %s" % (plugin, verb, r.stdout, r.stderr))
    return json.loads(r.stdout)["ips"][0]["address"].split("/")[0] if verb == "ADD" else None


def ferry_pod(ctx, node, pod):
    run("ip", "netns", "add", pod)
    conflist = json.load(open(node.dir + "/net.d/10-ferry.conflist"))
    conf = dict(conflist["plugins"][0], cniVersion=conflist["cniVersion"], name=conflist["name"])
    return cni(node.ns, os.path.join(ctx.bin, "ferry"), conf, "ADD", pod, pod, ctx.bin)


def ptp_pod(ctx, node, pod, cidr):
    run("ip", "netns", "add", pod)
    conf = {"cniVersion": "1.0.0", "name": "dpptp", "type": "ptp", "ipMasq": False,
            "ipam": {"type": "host-local", "ranges": [[{"subnet": cidr}]],
                     "routes": [{"dst": "0.0.0.0/0"}], "dataDir": node.dir + "/host-local"}}
    return cni(node.ns, "/usr/lib/cni/ptp", conf, "ADD", pod, pod, "/usr/lib/cni")


def ping(src_ns, dst):
    r = subprocess.run(["ip", "netns", "exec", src_ns, "ping", "-c", "3", "-i", "0.2", "-W", "1", "-q", dst],
                       capture_output=True, text=True)
    m = re.search(r"= [\d.]+/([\d.]+)/", r.stdout)
    return {"ok": r.returncode == 0, "rtt_ms": float(m.group(1)) if m else None}


def iperf(srv_ns, cli_ns, addr, secs):
    srv = subprocess.Popen(["ip", "netns", "exec", srv_ns, "iperf3", "-s", "-1", "-p", "5201"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.3)
    r = subprocess.run(["ip", "netns", "exec", cli_ns, "iperf3", "-c", addr, "-p", "5201", "-t", str(secs), "-J"],
                       capture_output=True, text=True)
    try:
        srv.wait(5)
    except subprocess.TimeoutExpired:
        srv.kill()
        srv.wait()
    try:
        return json.loads(r.stdout)["end"]["sum_received"]["bits_per_second"] / 1e9
    except (ValueError, KeyError):
        return None


def datapath(ctx, store):
    """3 real nodes among the leases: pods ping across; iperf3 pod to pod vs underlay vs ptp."""
    nodes = [ctx.node(store, "r") for _ in range(3)]
    for n in nodes:
        n.start()
    want = len(store.leases()) + 2
    conv = wait_routes(nodes, want, 120)
    pods = [ferry_pod(ctx, n, "fp%d" % k) for k, n in enumerate(nodes)]
    pings = [dict(ping("fp%d" % k, pods[(k + 1) % 3]), src=pods[k], dst=pods[(k + 1) % 3]) for k in range(3)]
    q = [ptp_pod(ctx, nodes[k], "qp%d" % k, "192.168.%d.0/24" % (101 + k)) for k in range(2)]
    run("ip", "-n", nodes[0].ns, "route", "add", "192.168.102.0/24", "via", nodes[1].addr)
    run("ip", "-n", nodes[1].ns, "route", "add", "192.168.101.0/24", "via", nodes[0].addr)
    pings.append(dict(ping("qp0", q[1]), src=q[0], dst=q[1], what="ptp"))
    rounds, secs = (1, 1) if ctx.quick else (5, 4)
    paths = {"underlay": (nodes[1].ns, nodes[0].ns, nodes[1].addr), "ferry": ("fp1", "fp0", pods[1]),
             "ptp": ("qp1", "qp0", q[1])}
    gbps = {k: [] for k in paths}
    for r in range(rounds):
        for name in list(paths)[r % 3:] + list(paths)[:r % 3]:
            gbps[name].append(iperf(*paths[name], secs))
    routes = [route_count(n.ns) for n in nodes]
    for n in nodes:
        ctx.drop(n)
    run("ip", "-force", "-batch", "-", inp="".join("netns del %s\n" % p for p in ("fp0", "fp1", "fp2", "qp0", "qp1")),
        check=False)
    log("datapath: pings %s, Gbit/s %s" % ([p["ok"] for p in pings], gbps))
    return {"leases": want + 1, "converge_s": conv, "routes": routes, "routes_expected": want,
            "pings": pings, "gbps": gbps, "iperf_seconds": secs, "rounds": rounds}


def etcd_stream_methods(store):
    """Stream messages sent+received so far, by gRPC method."""
    by = {}
    for line in store.metrics().splitlines():
        if line.startswith(("grpc_server_msg_sent_total{", "grpc_server_msg_received_total{")) and "stream" in line:
            m = re.search(r'grpc_method="([^"]+)"', line)
            by[m.group(1) if m else "?"] = by.get(m.group(1) if m else "?", 0.0) + float(line.rsplit(" ", 1)[1])
    return by


def etcd_counters(store):
    """(unary calls handled, stream messages sent+received) from etcd's /metrics."""
    unary = stream = 0.0
    for line in store.metrics().splitlines():
        if line.startswith("grpc_server_handled_total{") and 'grpc_type="unary"' in line:
            unary += float(line.rsplit(" ", 1)[1])
        elif line.startswith(("grpc_server_msg_sent_total{", "grpc_server_msg_received_total{")) \
                and "stream" in line:
            stream += float(line.rsplit(" ", 1)[1])
    return unary, stream


def steady(ctx, nodes, secs):
    """etcd request rate, daemons' RSS and CPU over `secs` at steady state."""
    store = ctx.stores["etcd"]
    u0, s0 = etcd_counters(store)
    m0 = etcd_stream_methods(store)
    c0 = sum(cpu_ticks(n.proc.pid) for n in nodes)
    e0 = cpu_ticks(ctx.etcd.pid)
    time.sleep(secs)
    u1, s1 = etcd_counters(store)
    m1 = etcd_stream_methods(store)
    log("etcd stream messages/s by method: %s" % {k: (v - m0.get(k, 0)) / secs for k, v in m1.items()})
    return {"window_s": secs, "etcd_unary_per_s": (u1 - u0) / secs, "etcd_stream_msgs_per_s": (s1 - s0) / secs,
            "etcd_cpu_pct": 100.0 * (cpu_ticks(ctx.etcd.pid) - e0) / lab.HZ / secs,
            "etcd_rss_kib": proc_status(ctx.etcd.pid, "VmRSS"),
            "daemons_cpu_pct": 100.0 * (sum(cpu_ticks(n.proc.pid) for n in nodes) - c0) / lab.HZ / secs,
            "daemons_rss_kib": sum(proc_status(n.proc.pid, "VmRSS") for n in nodes)}


def propagate(ctx, store, nodes):
    """Seconds from one lease put until every daemon has its route (per daemon)."""
    have = store.leases()
    j = ctx.fresh_js(store, have, 1)[0]
    lst = Listener([n.ns for n in nodes])
    t0 = time.monotonic()
    store.put(j, pub_ip(j))
    seen, deadline = {}, t0 + 15
    while len(seen) < len(nodes) and time.monotonic() < deadline:
        for t, ns, kind, dst, _, _ in lst.events():
            if kind == "add" and dst == subnet(j):
                seen.setdefault(ns, (t - t0) * 1000)
        time.sleep(0.005)
    lst.close()
    store.delete(j)
    return sorted(seen.values()), len(nodes) - len(seen)


def daemons(ctx, store, n, total):
    """n ferryd on one etcd holding `total` leases once they have all joined."""
    have = store.leases()
    extra = [s for s, ip in have.items() if ip.startswith("172.17.")][:max(0, len(have) + n - total)]
    store.bulk_delete([int(s.split(".")[1]) * 256 + int(s.split(".")[2]) for s in extra])
    want = len(have) - len(extra) + n - 1  # every other lease, once all n have claimed theirs
    nodes = [ctx.node(store, "d") for _ in range(n)]
    for node in nodes:
        node.start()
    conv = wait_routes(nodes, want, 300)
    subnets = [node.subnet() for node in nodes]
    time.sleep(3)
    st = steady(ctx, nodes, 5 if ctx.quick else 10)
    lat, missed = propagate(ctx, store, nodes)
    alive = sum(1 for node in nodes if node.proc.poll() is None)
    for node in nodes:
        node.stop()
    ctx.under.del_nodes([node.ns for node in nodes])
    log("daemons: %d, converged %d, distinct subnets %d, propagation max %s ms" %
        (n, sum(1 for c in conv if c is not None), len(set(subnets)), lat[-1] if lat else None))
    return dict(st, n=n, leases=want + 1, converge_s=conv, distinct_subnets=len(set(s for s in subnets if s)),
                propagate_ms=lat, propagate_missed=missed, alive=alive)


def perf_top(data):
    """Top symbols (self time) and the share per DSO from a perf.data file."""
    rep = run("perf", "report", "-i", data, "--stdio", "--no-children", "-q", "-g", "none",
              "--sort", "dso,symbol", "--percent-limit", "0.7", check=False)
    top = []
    for line in rep.splitlines():
        m = re.match(r"\s*([\d.]+)%\s+(\S+)\s+\[.\]\s+(.*)", line)
        if m:
            top.append({"pct": float(m.group(1)), "dso": m.group(2), "sym": m.group(3).strip()[:90]})
    dsos = run("perf", "report", "-i", data, "--stdio", "--no-children", "-q", "-g", "none", "--sort", "dso",
               check=False)
    by_dso = [{"pct": float(m.group(1)), "dso": m.group(2)} for m in
              (re.match(r"\s*([\d.]+)%\s+(\S+)", l) for l in dsos.splitlines()) if m]
    return top[:25], by_dso[:8]


def profile(ctx, kind, size, binary):
    """perf record -g of a cold start at `size` leases, with an unstripped ferryd."""
    store = ctx.stores[kind]
    ctx.top_up(store, size)
    expected = len(store.leases())
    node = ctx.node(store, binary=binary)
    data = os.path.join(ctx.tmp, "perf.data")
    node.start(wrap=("perf", "record", "-q", "-F", "1999", "-g", "-o", data, "--"))
    got = wait_routes([node], expected, 120)[0]
    time.sleep(0.5)
    with open("/proc/%d/task/%d/children" % (node.proc.pid, node.proc.pid)) as f:
        kids = [int(p) for p in f.read().split()]
    for pid in kids:  # ferryd, started by this perf; stopping it ends the recording
        os.kill(pid, signal.SIGTERM)
    node.proc.wait(60)
    node.proc = None
    ctx.drop(node)
    top, by_dso = perf_top(data)
    log("profile: %d leases, routes after %s s (under perf)" % (size, got))
    return {"store": kind, "leases": expected + 1, "startup_under_perf_s": got, "top": top, "by_dso": by_dso}
