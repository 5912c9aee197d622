"""Building blocks of bench/scale.py: the sandbox check, namespaces on one underlay bridge, a
netlink route-event listener, the lease stores (etcd through its JSON gateway, the file store),
process accounting. Python 3 standard library only; everything runs inside tests/sandbox.sh.

Addresses: the underlay is 172.16.0.0/12 on bridge `fbr0` in the sandbox's own namespace (never
the machine's root namespace), 172.16.0.1 is the sandbox end (etcd listens there); real nodes
take 172.16.1.x-172.16.9.x; synthetic lease j has public IP 172.17.0.0 + j (on-link, no host
behind it), moved leases 172.18.0.0 + j. The cluster network is 10.0.0.0/8 with /24 subnets:
subnet j is 10.(j >> 8).(j & 255).0/24.
"""

import base64
import ctypes
import http.client
import json
import os
import select
import socket
import struct
import subprocess
import threading
import time

CLONE_NEWNET = 0x40000000
RTMGRP_IPV4_ROUTE = 0x40
RTM_NEWROUTE, RTM_DELROUTE = 24, 25
RTPROT_FERRY = 113
NETWORK = "10.0.0.0/8"
PREFIX = "/coreos.com/network"
CONFIG = {"Network": NETWORK, "SubnetLen": 24, "Backend": {"Type": "host-gw"}}
_libc = ctypes.CDLL(None, use_errno=True)


def require_sandbox():
    me = os.stat("/proc/self/ns/net")
    try:
        init = os.stat("/proc/1/ns/net")
        init = (init.st_ino, init.st_dev)
    except PermissionError:  # PID 1 of a container manager: the inode check below still holds
        init = None
    if os.environ.get("FERRY_SANDBOX") != "1" or me.st_ino == 0xEFFFFFF9 or \
            (me.st_ino, me.st_dev) == init:
        raise SystemExit("refusing to run outside tests/sandbox.sh (FERRY_SANDBOX=1, private netns)")


def run(*args, check=True, inp=None):
    r = subprocess.run(list(args), input=inp, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise RuntimeError("%s failed: %s%s" % (" ".join(args), r.stdout, r.stderr))
    return r.stdout


def ip_batch(lines, force=False):
    if lines:
        run("ip", *(["-force"] if force else []), "-batch", "-", inp="\n".join(lines) + "\n", check=not force)


def subnet(j):
    return "10.%d.%d.0/24" % (j >> 8, j & 255)


def subnet_key(j):
    return "10.%d.%d.0-24" % (j >> 8, j & 255)


def key_subnet(key):
    return key.rsplit("/", 1)[-1].replace("-", "/")


def pub_ip(j, base=17):
    return "172.%d.%d.%d" % (base + (j >> 16), (j >> 8) & 255, j & 255)


def lease_json(ip):
    return json.dumps({"PublicIP": ip, "BackendType": "host-gw", "BackendData": None})


def in_netns(ns, fn):
    """Run fn() with this thread in namespace ns (sockets made there stay there)."""
    cur = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    tgt = os.open("/run/netns/%s" % ns, os.O_RDONLY)
    try:
        if _libc.setns(tgt, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns %s" % ns)
        return fn()
    finally:
        _libc.setns(cur, CLONE_NEWNET)
        os.close(cur)
        os.close(tgt)


class Underlay:
    """Bridge fbr0 in the sandbox namespace; nodes are namespaces with eth0 on it."""

    def __init__(self):
        ip_batch(["link add fbr0 type bridge", "addr add 172.16.0.1/12 dev fbr0", "link set fbr0 up"])
        self.nodes = []

    def add_nodes(self, names_ips):
        lines = []
        for name, addr in names_ips:
            lines += ["netns add %s" % name]
        ip_batch(lines)
        lines = []
        for k, (name, addr) in enumerate(names_ips):
            port = "fv%s" % name
            lines += ["link add %s type veth peer name eth0 netns %s" % (port, name),
                      "link set %s master fbr0 up" % port,
                      "-n %s addr add %s/12 dev eth0" % (name, addr),
                      "-n %s link set eth0 up" % name, "-n %s link set lo up" % name]
        # `ip -batch` has no -n per line: run each namespaced line through `ip -n`.
        plain = [l for l in lines if not l.startswith("-n ")]
        ip_batch(plain)
        per_ns = {}
        for l in lines:
            if l.startswith("-n "):
                _, ns, rest = l.split(" ", 2)
                per_ns.setdefault(ns, []).append(rest)
        for ns, ls in per_ns.items():
            run("ip", "-n", ns, "-batch", "-", inp="\n".join(ls) + "\n")
        self.nodes += [n for n, _ in names_ips]

    def del_nodes(self, names):
        # The bridge ports first (synchronously, both ends): a namespace's own teardown is
        # asynchronous and would leave the name taken for a while.
        ip_batch(["link del fv%s" % n for n in names], force=True)
        ip_batch(["netns del %s" % n for n in names], force=True)
        self.nodes = [n for n in self.nodes if n not in names]

    def close(self):
        self.del_nodes(list(self.nodes))
        run("ip", "link", "del", "fbr0", check=False)


def parse_routes(data):
    """(kind, dst, gw, proto) of each IPv4 route message in a netlink buffer."""
    out, off = [], 0
    while off + 16 <= len(data):
        ln, typ = struct.unpack_from("=IH", data, off)
        if ln < 16:
            break
        if typ in (RTM_NEWROUTE, RTM_DELROUTE) and ln >= 28:
            fam, dlen, _, _, _, proto = struct.unpack_from("=BBBBBB", data, off + 16)
            dst, gw, a = "0.0.0.0", None, off + 28
            while a + 4 <= off + ln:
                alen, atyp = struct.unpack_from("=HH", data, a)
                if alen < 4:
                    break
                if atyp == 1 and alen == 8:
                    dst = socket.inet_ntoa(data[a + 4:a + 8])
                elif atyp == 5 and alen == 8:
                    gw = socket.inet_ntoa(data[a + 4:a + 8])
                a += (alen + 3) & ~3
            if fam == socket.AF_INET:
                out.append(("add" if typ == RTM_NEWROUTE else "del", "%s/%d" % (dst, dlen), gw, proto))
        off += (ln + 3) & ~3
    return out


class Listener:
    """Route events of several namespaces. A thread only receives and timestamps (monotonic, on
    arrival, ~µs resolution, plus this process's scheduling delay); parsing happens on demand."""

    def __init__(self, namespaces):
        self.socks = {}
        for ns in namespaces:
            s = in_netns(ns, lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0))
            s.setsockopt(socket.SOL_SOCKET, 33, 256 << 20)  # SO_RCVBUFFORCE
            s.bind((0, RTMGRP_IPV4_ROUTE))
            self.socks[s.fileno()] = (ns, s)
        self.raw, self.overflows, self.stop = [], 0, False
        self.parsed, self.cursor = [], 0
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self):
        socks = [s for _, s in self.socks.values()]
        while not self.stop:
            for s in select.select(socks, [], [], 0.1)[0]:
                try:
                    data = s.recv(1 << 20)
                except OSError:
                    self.overflows += 1
                    continue
                self.raw.append((time.monotonic(), self.socks[s.fileno()][0], data))

    def events(self):
        """All (t, ns, kind, dst, gw, proto) so far, in arrival order."""
        n = len(self.raw)
        for t, ns, data in self.raw[self.cursor:n]:
            self.parsed += [(t, ns) + r for r in parse_routes(data)]
        self.cursor = n
        return self.parsed

    def close(self):
        self.stop = True
        self.thread.join()
        for _, s in self.socks.values():
            s.close()


def ferry_routes(ns):
    """{dst: gateway} of the proto-113 routes in ns."""
    out = run("ip", "-n", ns, "-j", "route", "show", "proto", str(RTPROT_FERRY))
    return {(r["dst"] if "/" in r["dst"] else r["dst"] + "/32"): r.get("gateway")
            for r in json.loads(out or "[]")}


def route_count(ns):
    return run("ip", "-n", ns, "route", "show", "proto", str(RTPROT_FERRY)).count("\n")


class EtcdStore:
    """etcd v3 through its JSON gateway (one keep-alive HTTP connection)."""

    def __init__(self, port):
        self.port, self.url = port, "etcd://172.16.0.1:%d" % port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def call(self, path, body):
        self.conn.request("POST", "/v3/" + path, json.dumps(body), {"Content-Type": "application/json"})
        r = self.conn.getresponse()
        data = r.read()
        if r.status != 200:
            raise RuntimeError("etcd %s: %s %s" % (path, r.status, data[:300]))
        return json.loads(data)

    @staticmethod
    def b64(s):
        return base64.b64encode(s.encode()).decode()

    def put(self, j, ip):
        self.call("kv/put", {"key": self.b64("%s/subnets/%s" % (PREFIX, subnet_key(j))), "value": self.b64(lease_json(ip))})

    def delete(self, j):
        self.call("kv/deleterange", {"key": self.b64("%s/subnets/%s" % (PREFIX, subnet_key(j)))})

    def put_config(self):
        self.call("kv/put", {"key": self.b64(PREFIX + "/config"), "value": self.b64(json.dumps(CONFIG))})

    def bulk(self, items, batch=1000, ttl=None):
        """Write leases in transactions of `batch`; with `ttl` (s) each key gets its own etcd
        lease, as flannel and ferryd write them (one grant per key: slow, ~1 ms each)."""
        for i in range(0, len(items), batch):
            ops = []
            for j, ip in items[i:i + batch]:
                put = {"key": self.b64("%s/subnets/%s" % (PREFIX, subnet_key(j))), "value": self.b64(lease_json(ip))}
                if ttl:
                    put["lease"] = self.call("lease/grant", {"TTL": ttl})["ID"]
                ops.append({"requestPut": put})
            self.call("kv/txn", {"success": ops})

    def bulk_delete(self, js, batch=1000):
        for i in range(0, len(js), batch):
            ops = [{"requestDeleteRange": {"key": self.b64("%s/subnets/%s" % (PREFIX, subnet_key(j)))}}
                   for j in js[i:i + batch]]
            self.call("kv/txn", {"success": ops})

    def leases(self):
        """{subnet: PublicIP} of every lease, listed in pages."""
        pre = "%s/subnets/" % PREFIX
        end = self.b64(pre[:-1] + chr(ord(pre[-1]) + 1))
        key, out = self.b64(pre), {}
        while True:
            r = self.call("kv/range", {"key": key, "range_end": end, "limit": 5000})
            kvs = r.get("kvs", [])
            for kv in kvs:
                k = base64.b64decode(kv["key"]).decode()
                out[key_subnet(k)] = json.loads(base64.b64decode(kv["value"]))["PublicIP"]
            if not r.get("more"):
                return out
            key = self.b64(base64.b64decode(kvs[-1]["key"]).decode() + "\0")

    def metrics(self):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        c.request("GET", "/metrics")
        return c.getresponse().read().decode()


class FileStore:
    """ferryd's embedded store: one JSON file per lease, written by temp + rename."""

    def __init__(self, path):
        self.dir, self.url = path, "file://" + path
        os.makedirs(path, exist_ok=True)

    def put(self, j, ip):
        tmp = os.path.join(self.dir, ".bench.tmp")
        with open(tmp, "w") as f:
            f.write(lease_json(ip))
        os.rename(tmp, os.path.join(self.dir, subnet_key(j)))

    def delete(self, j):
        os.unlink(os.path.join(self.dir, subnet_key(j)))

    def put_config(self):
        with open(os.path.join(self.dir, "config"), "w") as f:
            f.write(json.dumps(CONFIG))

    def bulk(self, items):
        for j, ip in items:
            with open(os.path.join(self.dir, subnet_key(j)), "w") as f:
                f.write(lease_json(ip))

    def bulk_delete(self, js):
        for j in js:
            os.unlink(os.path.join(self.dir, subnet_key(j)))

    def leases(self):
        out = {}
        for name in os.listdir(self.dir):
            if name[0].isdigit() and name.endswith("-24"):
                with open(os.path.join(self.dir, name)) as f:
                    out[name.replace("-", "/")] = json.load(f)["PublicIP"]
        return out


def proc_status(pid, field):
    """VmRSS / VmHWM (KiB) of a process."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def cpu_ticks(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def cpu_ns(pid):
    """CPU time of every live thread of `pid` in ns (schedstat: exact, where ticks are 10 ms)."""
    total = 0
    for t in os.listdir("/proc/%d/task" % pid):
        try:
            with open("/proc/%d/task/%s/schedstat" % (pid, t)) as f:
                total += int(f.read().split()[0])
        except (FileNotFoundError, ProcessLookupError, ValueError, IndexError):
            pass  # a thread that ended meanwhile
    return total


HZ = os.sysconf("SC_CLK_TCK")
