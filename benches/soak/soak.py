#!/usr/bin/env python3
"""splitproxy soak: the release proxy under steady mTLS load while its world changes.

Run through benches/soak.sh (see `benches/soak.sh --help`). Standard library only.

What runs, all on this machine:
  - the proxy: `splitproxy run --config DIR` (a Proxy document and a TrafficSplit file);
  - B backends, one nginx process each (`master_process off`, so SIGKILL kills the process
    that holds the sockets), answering 200 with `x-backend: vN`;
  - the load: `splitproxy measure --duration INTERVAL --rate R -c C --json` over mTLS,
    one run per interval (a row of the table), back to back.
What happens to them, on a schedule from the start:
  - every --reload-every: new weights, written to a temporary file and renamed over the
    TrafficSplit file (atomic, as editors and ConfigMap tools do);
  - every --kill-every: one backend (in turn) gets SIGKILL, and is started again --down
    later on the same port;
  - every --rotate-every: a new server key and certificate, signed by the same CA, put in
    the proxy's certificate paths at once (a Kubernetes Secret's `..data` swap, or with
    --cert-write rename the key then the certificate renamed over the old files); a fresh
    mTLS handshake then checks that the proxy serves the new certificate.
The first kill comes half a kill period in, the first rotation half a rotation period
(plus half a reload period) in, so each default minute holds two kills and one rotation.
Every failed request (measure's JSON gives its kind and send time) is placed: in flight
at a kill (sent from 50 ms before the SIGKILL to 2 ms after it), while that backend was
down, within 1 s of its restart, within 2 s of a rotation, or elsewhere. Only the first
is a loss a proxy cannot always avoid; any other makes the soak exit 1, as does a
rotation the proxy did not serve or a configuration load error.

Cleanup: every child is ours (PIDs kept, never looked up by name); SIGINT/SIGTERM/SIGHUP
and a normal exit stop them all, and each child also gets SIGKILL from the kernel if this
process dies (PR_SET_PDEATHSIG).
"""

import argparse
import ctypes
import hashlib
import heapq
import json
import os
import random
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request

HOST = "soak"  # the TrafficSplit's root service: the Host header every request carries
NETNS = "spsoak"  # --netns: the backends' network namespace
VETH_HOST, VETH_NS = "spsoak0", "spsoak1"
NET_HOST_IP, NET_NS_IP = "10.213.0.1", "10.213.0.2"
# A failure near a kill is placed in one of three phases: "flight", sent from KILL_LEAD_S
# before the SIGKILL to KILL_EPS_S after it (measure's send times are whole milliseconds),
# so it may have reached the backend; "down", sent while the backend was dead (it never
# reached one: a retry saves it); "back", sent up to KILL_TAIL_S after the restart.
KILL_LEAD_S = 0.05
KILL_EPS_S = 0.002
KILL_TAIL_S = 1.0
PHASES = ("flight", "down", "back")
ROTATE_TAIL_S = 2.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


def parse_duration(text):
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(ms|s|m|h)?\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 500ms, 30s, 10m)")
    value = float(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[m.group(2)]
    if value <= 0:
        raise argparse.ArgumentTypeError(f"duration must be positive: {text!r}")
    return value


def fmt_t(seconds):
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 60}:{seconds % 60:02d}"


def log(msg):
    print(f"soak: {msg}", file=sys.stderr, flush=True)


# --- children -------------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)


def _die_with_parent():
    # PR_SET_PDEATHSIG = 1: the kernel kills the child if this process dies, even by SIGKILL
    _libc.prctl(1, signal.SIGKILL, 0, 0, 0)
    # the soak's own SIGINT (Ctrl-C to the process group) must not reach the children
    # before the soak stops them in order
    os.setpgrp()


class Children:
    """Every process the soak started, by PID; stopped in reverse order."""

    def __init__(self):
        self.procs = []

    def spawn(self, argv, logfile, env=None):
        out = open(logfile, "ab")
        try:
            p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                 env=env, preexec_fn=_die_with_parent)
        finally:
            out.close()
        self.procs.append(p)
        return p

    def spawn_capture(self, argv, stdout_file, stderr_file):
        with open(stdout_file, "wb") as out, open(stderr_file, "wb") as err:
            p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                 preexec_fn=_die_with_parent)
        self.procs.append(p)
        return p

    def kill(self, p, sig=signal.SIGKILL):
        if p.poll() is None:
            try:
                os.kill(p.pid, sig)
            except ProcessLookupError:
                pass

    def reap(self, p, timeout):
        try:
            p.wait(timeout)
            return True
        except subprocess.TimeoutExpired:
            return False

    def forget(self, p):
        if p in self.procs:
            self.procs.remove(p)

    def stop_all(self, term_first=()):
        for p in reversed(self.procs):
            if p in term_first:
                self.kill(p, signal.SIGTERM)
                if not self.reap(p, 10):
                    self.kill(p)
            else:
                self.kill(p)
            self.reap(p, 5)
        self.procs.clear()


# --- certificates (openssl, ECDSA P-256, as shared/bench/certs.sh) ----------------------

def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.PIPE)


def make_ca(d):
    openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", "ca-key.pem", cwd=d)
    openssl("req", "-x509", "-new", "-key", "ca-key.pem", "-sha256", "-days", "30", "-subj", "/CN=soak test CA",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            "-out", "ca.pem", cwd=d)


def sign(d, ca_dir, name, subj, ext_lines):
    """name-key.pem and name.pem in d, signed by the CA in ca_dir; returns the cert's DER sha256."""
    with open(os.path.join(d, f"{name}.ext"), "w") as f:
        f.write("\n".join(ext_lines) + "\n")
    openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", f"{name}-key.pem", cwd=d)
    openssl("req", "-new", "-key", f"{name}-key.pem", "-subj", subj, "-out", f"{name}.csr", cwd=d)
    # a random serial: every rotation's certificate is distinct even within one second
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", os.path.join(ca_dir, "ca.pem"),
            "-CAkey", os.path.join(ca_dir, "ca-key.pem"),
            "-set_serial", str(random.SystemRandom().getrandbits(63)), "-sha256", "-days", "30",
            "-extfile", f"{name}.ext", "-out", f"{name}.pem", cwd=d)
    for junk in (f"{name}.csr", f"{name}.ext"):
        os.remove(os.path.join(d, junk))
    return cert_fingerprint(os.path.join(d, f"{name}.pem"))


def cert_fingerprint(path):
    with open(path) as f:
        return hashlib.sha256(ssl.PEM_cert_to_DER_cert(f.read())).hexdigest()


SERVER_EXT = ["basicConstraints=critical,CA:FALSE", "keyUsage=critical,digitalSignature",
              "extendedKeyUsage=serverAuth", f"subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:{HOST}"]
CLIENT_EXT = ["basicConstraints=critical,CA:FALSE", "keyUsage=critical,digitalSignature",
              "extendedKeyUsage=clientAuth", "subjectAltName=URI:spiffe://cluster.local/ns/default/sa/soak"]


# --- the soak -----------------------------------------------------------------------------

class Soak:
    def __init__(self, a):
        self.a = a
        self.kids = Children()
        self.work = a.workdir
        os.makedirs(self.work, exist_ok=True)
        self.pki = os.path.join(self.work, "pki")  # the CA and the client's identity (the soak's own)
        self.tls = os.path.join(self.work, "tls")  # the proxy's certificate paths
        self.conf = os.path.join(self.work, "config")
        self.gen = os.path.join(self.work, "gen")  # where the next server certificate is made
        for d in (self.pki, self.tls, self.conf, self.gen):
            os.makedirs(d, exist_ok=True)
        self.proxy_port, self.admin_port = a.port_base, a.port_base + 9
        self.backend_ports = [a.port_base + 11 + i for i in range(a.backends)]
        self.backend_ip = NET_NS_IP if a.netns else "127.0.0.1"
        self.backends = [None] * a.backends  # Popen per backend, None while down
        self.proxy = None
        self.netns_made = False
        self.events = []  # (epoch s, kind, detail) of everything done to the proxy's world
        self.kill_windows = []  # dicts: backend, kill and back (epoch s), failures by phase
        self.rotations = []  # dicts: at, fingerprint, seen_after_s
        self.rewrites = 0
        self.rng = random.Random(a.seed)
        self.queue = []  # (monotonic due, seq, fn)
        self.seq = 0
        self.rows = []
        self.samples = []  # (epoch s, RSS KiB, fds, CPU s) of the proxy, every second
        self.netem_note = ""

    # scheduling: one-shot tasks on a heap, run by the main loop
    def at(self, due, fn):
        self.seq += 1
        heapq.heappush(self.queue, (due, self.seq, fn))

    # --- setup ---
    def check_ports(self):
        for port in [self.proxy_port, self.admin_port] + ([] if self.a.netns else self.backend_ports):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    sys.exit(f"soak: port {port} is taken (choose another --port-base)")

    def make_certs(self):
        make_ca(self.pki)
        sign(self.pki, self.pki, "client", "/CN=soak-client", CLIENT_EXT)
        sign(self.gen, self.pki, "server", f"/CN={HOST}", SERVER_EXT)
        self.install_server_cert()

    def install_server_cert(self):
        """Move gen/server*.pem into the proxy's certificate paths, atomically per --cert-write."""
        names = ("server-key.pem", "server.pem")
        if self.a.cert_write == "rename":
            shutil.copy(os.path.join(self.pki, "ca.pem"), os.path.join(self.tls, ".ca.pem.tmp"))
            os.replace(os.path.join(self.tls, ".ca.pem.tmp"), os.path.join(self.tls, "ca.pem"))
            # key first, then the certificate, back to back: a read between the two renames
            # sees a mismatched pair, which the proxy rejects (keeping the old pair) and the
            # second rename's event then fixes
            for n in names:
                os.replace(os.path.join(self.gen, n), os.path.join(self.tls, n))
            return
        # a Kubernetes Secret volume, as kubelet writes it: the files are symlinks through
        # `..data`, a symlink to a timestamped folder; an update fills a new folder and
        # renames a new `..data` over the old one, so every file changes at once
        stamp = time.strftime("..%Y_%m_%d_%H_%M_%S.", time.gmtime()) + f"{time.time_ns() % 10**9:09d}"
        new = os.path.join(self.tls, stamp)
        os.mkdir(new)
        for n in names:
            os.replace(os.path.join(self.gen, n), os.path.join(new, n))
        shutil.copy(os.path.join(self.pki, "ca.pem"), os.path.join(new, "ca.pem"))
        data = os.path.join(self.tls, "..data")
        old = os.readlink(data) if os.path.islink(data) else None
        tmp = os.path.join(self.tls, "..data_tmp")
        os.symlink(stamp, tmp)
        os.replace(tmp, data)
        for n in names + ("ca.pem",):
            link = os.path.join(self.tls, n)
            if not os.path.islink(link):
                os.symlink(os.path.join("..data", n), link)
        if old:
            shutil.rmtree(os.path.join(self.tls, old), ignore_errors=True)

    def setup_netns(self):
        def ip(*args, ns=False):
            cmd = ["ip"] + (["-n", NETNS] if ns else []) + list(args)
            subprocess.run(cmd, check=True, stderr=subprocess.PIPE)

        # a namespace left by a soak that was SIGKILLed goes first (the name is the soak's own)
        subprocess.run(["ip", "netns", "del", NETNS], stderr=subprocess.DEVNULL)
        subprocess.run(["ip", "link", "del", VETH_HOST], stderr=subprocess.DEVNULL)
        ip("netns", "add", NETNS)
        self.netns_made = True
        ip("link", "add", VETH_HOST, "type", "veth", "peer", "name", VETH_NS)
        ip("link", "set", VETH_NS, "netns", NETNS)
        ip("addr", "add", f"{NET_HOST_IP}/30", "dev", VETH_HOST)
        ip("link", "set", VETH_HOST, "up")
        ip("addr", "add", f"{NET_NS_IP}/30", "dev", VETH_NS, ns=True)
        ip("link", "set", VETH_NS, "up", ns=True)
        ip("link", "set", "lo", "up", ns=True)
        if not self.a.netem:
            self.netem_note = "backends in a network namespace behind a veth pair (no netem)"
            return
        spec = self.a.netem.split()
        ok, err = True, ""
        for dev, ns in ((VETH_HOST, False), (VETH_NS, True)):
            cmd = (["ip", "netns", "exec", NETNS] if ns else []) + ["tc", "qdisc", "add", "dev", dev, "root",
                                                                     "netem", *spec]
            r = subprocess.run(cmd, stderr=subprocess.PIPE, text=True)
            if r.returncode != 0:
                ok = False
                err = r.stderr.strip()
                break
        if ok:
            self.netem_note = f"backends in a network namespace, tc netem '{self.a.netem}' both ways"
            return
        # no netem in this kernel (CONFIG_NET_SCH_NETEM): loss alone can still be made with
        # nftables' random numbers; latency cannot
        m = re.search(r"loss\s+(?:random\s+)?([0-9.]+)%", self.a.netem)
        if not m or not shutil.which("nft"):
            sys.exit(f"soak: tc netem failed ({err}); this kernel has no netem"
                     + ("" if m else ", and the spec has no 'loss N%' to emulate with nftables")
                     + ("" if shutil.which("nft") else "; nft (nftables) is not installed either"))
        per_million = int(round(float(m.group(1)) * 10000))
        drop = f"numgen random mod 1000000 < {per_million} drop"
        rules = (f"table inet spsoak {{\n"
                 f"  chain in {{\n    type filter hook prerouting priority 0;\n    {drop}\n  }}\n"
                 f"  chain out {{\n    type filter hook output priority 0;\n    {drop}\n  }}\n}}\n")
        r = subprocess.run(["ip", "netns", "exec", NETNS, "nft", "-f", "-"], input=rules,
                           stderr=subprocess.PIPE, text=True)
        if r.returncode != 0:
            sys.exit(f"soak: tc netem failed ({err}) and nftables too ({r.stderr.strip()})")
        self.netem_note = (f"backends in a network namespace; tc netem unavailable ({err}): "
                           f"{m.group(1)}% packet loss both ways by nftables in the namespace, no added latency")

    def nginx_conf(self, i):
        d = os.path.join(self.work, f"backend-v{i + 1}")
        os.makedirs(d, exist_ok=True)
        name = f"v{i + 1}"
        temp = "\n".join(f"    {k}_temp_path {d}/tmp-{k};" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        conf = f"""# generated by benches/soak: backend {name}, one process (SIGKILL kills the socket holder)
daemon off;
master_process off;
worker_rlimit_nofile 4096;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 2048; }}
http {{
    access_log off;
{temp}
    default_type text/plain;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    server {{
        listen {self.backend_ip}:{self.backend_ports[i]} reuseport backlog=1024;
        location / {{ add_header x-backend {name} always; return 200 "{name}\\n"; }}
    }}
}}
"""
        path = os.path.join(d, "nginx.conf")
        with open(path, "w") as f:
            f.write(conf)
        return d, path

    def start_backend(self, i):
        d, conf = self.nginx_conf(i)
        argv = [self.a.nginx, "-p", d, "-c", conf, "-e", f"{d}/error.log"]
        if self.a.netns:
            argv = ["ip", "netns", "exec", NETNS] + argv
        self.backends[i] = self.kids.spawn(argv, os.path.join(d, "stdout.log"))

    def wait_backend(self, i, limit=10.0):
        end = time.monotonic() + limit
        while time.monotonic() < end:
            p = self.backends[i]
            if p is None or p.poll() is not None:
                raise SystemExit(f"soak: backend v{i + 1} exited; see {self.work}/backend-v{i + 1}/error.log")
            with socket.socket() as s:
                s.settimeout(0.2)
                if s.connect_ex((self.backend_ip, self.backend_ports[i])) == 0:
                    return
            time.sleep(0.01)
        raise SystemExit(f"soak: backend v{i + 1} not listening after {limit}s")

    def proxy_yaml(self):
        services = "\n".join(f'    {HOST}-v{i + 1}: ["{self.backend_ip}:{p}"]' for i, p in enumerate(self.backend_ports))
        return f"""# generated by benches/soak
apiVersion: splitproxy.dev/v1alpha1
kind: Proxy
metadata:
  name: soak
spec:
  listen: 127.0.0.1:{self.proxy_port}
  admin: 127.0.0.1:{self.admin_port}
  tls:
    cert: {self.tls}/server.pem
    key: {self.tls}/server-key.pem
    clientCA: {self.tls}/ca.pem
    clientAuth: require
  access: permissive
  exposeBackend: true
  shutdown:
    grace: 2s
  services:
{services}
"""

    def split_yaml(self, weights):
        lines = [f"# generated by benches/soak: rewrite {self.rewrites}",
                 "apiVersion: split.smi-spec.io/v1alpha2", "kind: TrafficSplit", "metadata:",
                 "  name: soak", "  namespace: default", "spec:", f"  service: {HOST}", "  backends:"]
        for i, w in enumerate(weights):
            lines += [f"  - service: {HOST}-v{i + 1}", f"    weight: {w}"]
        return "\n".join(lines) + "\n"

    def write_split(self, weights):
        # not *.yaml, so the proxy's watch ignores it until the rename makes it split.yaml
        tmp = os.path.join(self.conf, ".split.yaml.tmp")
        with open(tmp, "w") as f:
            f.write(self.split_yaml(weights))
        os.replace(tmp, os.path.join(self.conf, "split.yaml"))

    def start_proxy(self):
        with open(os.path.join(self.conf, "proxy.yaml"), "w") as f:
            f.write(self.proxy_yaml())
        self.write_split([1] * self.a.backends)
        env = dict(os.environ, SPLITPROXY_LOG_FORMAT="json")
        env.setdefault("SPLITPROXY_LOG", "info,notify=warn")
        argv = [self.a.bin, "run", "--config", self.conf, "--workers", str(self.a.workers)]
        self.proxy = self.kids.spawn(argv, os.path.join(self.work, "proxy.log"), env=env)
        end = time.monotonic() + 15
        while time.monotonic() < end:
            if self.proxy.poll() is not None:
                self.fail_proxy("exited at start")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/readyz", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.05)
        self.fail_proxy("not ready after 15 s")

    def fail_proxy(self, why):
        tail = ""
        try:
            with open(os.path.join(self.work, "proxy.log"), errors="replace") as f:
                tail = "".join(f.readlines()[-20:])
        except OSError:
            pass
        raise SystemExit(f"soak: the proxy {why}; last lines of {self.work}/proxy.log:\n{tail}")

    # --- the events ---
    def ev(self, kind, detail=""):
        self.events.append((time.time(), kind, detail))

    def do_reload(self, due):
        weights = [self.rng.randint(1, 100) for _ in range(self.a.backends)]
        self.rewrites += 1
        self.write_split(weights)
        self.ev("reload", ",".join(map(str, weights)))
        self.at(due + self.a.reload_every, lambda: self.do_reload(due + self.a.reload_every))

    def do_kill(self, due, n):
        i = n % self.a.backends
        p = self.backends[i]
        if p is not None:
            t = time.time()
            self.kids.kill(p)
            self.kids.reap(p, 5)
            self.kids.forget(p)
            self.backends[i] = None
            self.ev("kill", f"v{i + 1}")
            self.kill_windows.append({"backend": f"v{i + 1}", "kill": t, "back": None,
                                      "failures": dict.fromkeys(PHASES, 0)})
            self.at(time.monotonic() + self.a.down, lambda: self.do_restart(i))
        self.at(due + self.a.kill_every, lambda: self.do_kill(due + self.a.kill_every, n + 1))

    def do_restart(self, i):
        self.start_backend(i)
        self.wait_backend(i)
        self.ev("restart", f"v{i + 1}")
        for w in self.kill_windows:
            if w["backend"] == f"v{i + 1}" and w["back"] is None:
                w["back"] = time.time()

    def do_rotate(self, due):
        fp = sign(self.gen, self.pki, "server", f"/CN={HOST}", SERVER_EXT)
        t = time.time()
        self.install_server_cert()
        self.ev("rotate", fp[:16])
        rot = {"at": t, "fingerprint": fp, "seen_after_s": None}
        self.rotations.append(rot)
        self.at(time.monotonic() + 0.02, lambda: self.check_rotation(rot, time.monotonic() + 10))
        self.at(due + self.a.rotate_every, lambda: self.do_rotate(due + self.a.rotate_every))

    def served_fingerprint(self):
        ctx = ssl.create_default_context(cafile=os.path.join(self.pki, "ca.pem"))
        ctx.load_cert_chain(os.path.join(self.pki, "client.pem"), os.path.join(self.pki, "client-key.pem"))
        ctx.set_alpn_protocols(["http/1.1"])
        with socket.create_connection(("127.0.0.1", self.proxy_port), timeout=2) as raw:
            with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
                return hashlib.sha256(s.getpeercert(binary_form=True)).hexdigest()

    def check_rotation(self, rot, give_up):
        try:
            if self.served_fingerprint() == rot["fingerprint"]:
                rot["seen_after_s"] = time.time() - rot["at"]
                return
        except (OSError, ssl.SSLError) as e:
            rot.setdefault("check_errors", []).append(str(e))
        if time.monotonic() < give_up:
            self.at(time.monotonic() + 0.05, lambda: self.check_rotation(rot, give_up))

    def sample(self, due):
        if self.proxy.poll() is not None:
            self.fail_proxy(f"exited (status {self.proxy.returncode})")
        pid = self.proxy.pid
        rss, fds, cpu = 0, 0, 0.0
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        rss = int(line.split()[1])
            fds = len(os.listdir(f"/proc/{pid}/fd"))
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            # utime + stime (fields 14 and 15 of stat; 12 and 13 after the command name)
            cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK
        except (OSError, IndexError, ValueError):
            pass
        self.samples.append((time.time(), rss, fds, cpu))
        self.at(due + 1.0, lambda: self.sample(due + 1.0))

    def metrics(self):
        """The proxy's counters that the table shows, summed over their labels."""
        out = {"reloads_ok": 0.0, "reloads_error": 0.0, "retries": None, "ejections": None}
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/metrics", timeout=2) as r:
                text = r.read().decode("utf-8", "replace")
        except OSError:
            return out
        for line in text.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+([0-9.eE+-]+|NaN)", line)
            if not m:
                continue
            name, labels, value = m.group(1), m.group(2) or "", float(m.group(3))
            if name == "splitproxy_config_reloads_total":
                key = "reloads_ok" if 'result="ok"' in labels else "reloads_error"
                out[key] += value
            # names from the retries / outlier-detection work, whatever their exact spelling
            elif name.endswith("_total") and "retr" in name:
                out["retries"] = (out["retries"] or 0) + value
            elif name.endswith("_total") and "eject" in name:
                out["ejections"] = (out["ejections"] or 0) + value
        return out

    # --- the load ---
    def start_measure(self, n):
        tls = self.pki
        argv = [self.a.measure_bin, "measure", "--url", f"https://127.0.0.1:{self.proxy_port}/",
                "--host", HOST, "--cacert", f"{tls}/ca.pem", "--cert", f"{tls}/client.pem",
                "--key", f"{tls}/client-key.pem", "--header", "x-backend",
                "--duration", f"{int(self.a.interval * 1000)}ms", "--rate", str(self.a.rate),
                "-c", str(self.a.connections), "--json", "--log", "warn"]
        if self.a.h2:
            argv.append("--h2")
        base = os.path.join(self.work, f"measure-{n:02d}")
        return self.kids.spawn_capture(argv, base + ".json", base + ".err"), base

    def row(self, n, base, t_start, t_end, m_before, m_after):
        try:
            with open(base + ".json") as f:
                j = json.load(f)
        except (OSError, ValueError):
            with open(base + ".err", errors="replace") as f:
                raise SystemExit(f"soak: measure {n} printed no JSON: {f.read()[-2000:]}")
        if j.get("failures_dropped"):
            log(f"interval {n}: {j['failures_dropped']} failures beyond measure's list are not placed")
        start = j.get("started_unix_ms") or int(t_start * 1000)
        placed = dict.fromkeys(PHASES + ("rotation", "other"), 0)
        for f in j.get("failures", []):
            t = (start + f["t_ms"]) / 1000
            placed[self.place(t)] += 1
        samples = [s for s in self.samples if t_start <= s[0] <= t_end + 0.5] or self.samples[-1:]
        rss = samples[-1][1] if samples else 0
        fds = samples[-1][2] if samples else 0
        # the proxy's CPU over the interval, from the samples that bracket it
        before = [s for s in self.samples if s[0] <= t_start + 0.5]
        first = before[-1] if before else (samples[0] if samples else None)
        cpu_pct = None
        if first and samples and samples[-1][0] > first[0]:
            cpu_pct = 100 * (samples[-1][3] - first[3]) / (samples[-1][0] - first[0])

        def delta(k):
            if m_after[k] is None:
                return None
            return int(m_after[k] - (m_before[k] or 0))

        ev = [e for e in self.events if t_start <= e[0] < t_end]
        r = {
            "interval": n,
            "start_s": t_start - self.t0,
            "end_s": t_end - self.t0,
            "requests": j["requests"],
            "ok": j["ok"],
            "errors": {k: v for k, v in j["errors"].items()},
            "failures_placed": placed,
            "p50_ms": j["latency_ms"]["p50"],
            "p99_ms": j["latency_ms"]["p99"],
            "p999_ms": j["latency_ms"]["p999"],
            "rss_kib": rss,
            "rss_max_kib": max((s[1] for s in samples), default=0),
            "fds": fds,
            "fds_max": max((s[2] for s in samples), default=0),
            "cpu_pct": cpu_pct,
            "rewrites": sum(1 for e in ev if e[1] == "reload"),
            "reloads_ok": delta("reloads_ok"),
            "reloads_error": delta("reloads_error"),
            "kills": sum(1 for e in ev if e[1] == "kill"),
            "rotations": sum(1 for e in ev if e[1] == "rotate"),
            "retries": delta("retries"),
            "ejections": delta("ejections"),
        }
        self.rows.append(r)
        return r

    def place(self, t):
        for w in self.kill_windows:
            back = w["back"] if w["back"] is not None else float("inf")
            if w["kill"] - KILL_LEAD_S <= t < w["kill"] + KILL_EPS_S:
                phase = "flight"
            elif w["kill"] + KILL_EPS_S <= t < back:
                phase = "down"
            elif back <= t <= back + KILL_TAIL_S:
                phase = "back"
            else:
                continue
            w["failures"][phase] += 1
            return phase
        for rot in self.rotations:
            if rot["at"] <= t <= rot["at"] + ROTATE_TAIL_S:
                return "rotation"
        return "other"

    # --- the run ---
    def run(self):
        a = self.a
        intervals = max(1, int(round(a.duration / a.interval)))
        self.check_ports()
        self.make_certs()
        if a.netns:
            self.setup_netns()
        for i in range(a.backends):
            self.start_backend(i)
        for i in range(a.backends):
            self.wait_backend(i)
        self.start_proxy()
        self.print_header(intervals)
        self.t0 = time.time()
        m0 = time.monotonic()
        self.at(m0 + a.reload_every, lambda: self.do_reload(m0 + a.reload_every))
        # the first kill and rotation half a period in, so that with the defaults each minute
        # holds two whole kill windows and one rotation; a rotation also half a reload period
        # off the rewrites, so that it is a load of its own
        first_kill = m0 + a.kill_every / 2
        self.at(first_kill, lambda: self.do_kill(first_kill, 0))
        first_rotation = m0 + a.rotate_every / 2 + a.reload_every / 2
        self.at(first_rotation, lambda: self.do_rotate(first_rotation))
        self.at(m0, lambda: self.sample(m0))
        n = 1
        m_before = self.metrics()
        t_start = time.time()
        proc, base = self.start_measure(n)
        while True:
            now = time.monotonic()
            while self.queue and self.queue[0][0] <= now:
                _, _, fn = heapq.heappop(self.queue)
                fn()
            if proc.poll() is not None:
                t_end = time.time()
                self.kids.forget(proc)
                m_after = self.metrics()
                if n < intervals:
                    nxt = self.start_measure(n + 1)
                r = self.row(n, base, t_start, t_end, m_before, m_after)
                self.print_row(r)
                if n >= intervals:
                    break
                n += 1
                proc, base = nxt
                t_start, m_before = t_end, m_after
            wait = min(0.05, max(0.0, self.queue[0][0] - time.monotonic())) if self.queue else 0.05
            time.sleep(wait)
        self.t_end = time.time()
        return self.summary()

    # --- output ---
    COLS = ["min", "requests", "ok", "errors", "by kind", "kill: flight/down/back", "p50 ms", "p99 ms", "CPU %", "RSS MiB",
            "fds", "rewrites", "reloads ok/err", "kills", "rotations", "retries", "ejections"]

    def print_header(self, intervals):
        a = self.a
        print(f"splitproxy soak: {intervals} x {a.interval:g} s at {a.rate:g} req/s over {a.connections} "
              f"mTLS {'h2' if a.h2 else 'HTTP/1.1'} keep-alive connections, {a.backends} nginx backends, "
              f"proxy --workers {a.workers}")
        print(f"  weights rewritten every {a.reload_every:g} s; a backend SIGKILLed every {a.kill_every:g} s "
              f"and restarted {a.down:g} s later; server certificate rotated every {a.rotate_every:g} s "
              f"({'Secret-style ..data swap' if a.cert_write == 'secret' else 'key then cert renamed'})")
        if self.netem_note:
            print(f"  {self.netem_note}")
        print(f"  proxy {a.bin} (pid {self.proxy.pid}); files and logs in {self.work}")
        print()
        cols = self.COLS if self.per_minute() else ["until"] + self.COLS[1:]
        print("| " + " | ".join(cols) + " |")
        print("|" + "|".join("---:" if c not in ("by kind",) else "---" for c in self.COLS) + "|")
        sys.stdout.flush()

    def per_minute(self):
        return abs(self.a.interval - 60) < 1e-9

    @staticmethod
    def kinds(errors):
        if not errors:
            return "-"
        return ", ".join(f"{k.replace('status ', '')}: {v}" for k, v in sorted(errors.items()))

    @staticmethod
    def opt(v):
        return "-" if v is None else str(v)

    def cells(self, label, r):
        errs = sum(r["errors"].values())
        return [label, str(r["requests"]), str(r["ok"]), str(errs), self.kinds(r["errors"]),
                "/".join(str(r["failures_placed"][k]) for k in PHASES), f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}",
                "-" if r["cpu_pct"] is None else f"{r['cpu_pct']:.0f}", f"{r['rss_kib'] / 1024:.1f}", str(r["fds"]), str(r["rewrites"]),
                f"{self.opt(r['reloads_ok'])}/{self.opt(r['reloads_error'])}", str(r["kills"]),
                str(r["rotations"]), self.opt(r["retries"]), self.opt(r["ejections"])]

    def print_row(self, r):
        label = str(r["interval"]) if self.per_minute() else fmt_t(r["end_s"])
        print("| " + " | ".join(self.cells(label, r)) + " |", flush=True)

    def summary(self):
        rows = self.rows

        def total(k):
            vals = [r[k] for r in rows]
            return None if any(v is None for v in vals) else sum(vals)

        errors = {}
        for r in rows:
            for k, v in r["errors"].items():
                errors[k] = errors.get(k, 0) + v
        placed = {k: sum(r["failures_placed"][k] for r in rows) for k in PHASES + ("rotation", "other")}
        tot = {
            "requests": total("requests"), "ok": total("ok"), "errors": errors, "failures_placed": placed,
            "p50_ms": max(r["p50_ms"] for r in rows), "p99_ms": max(r["p99_ms"] for r in rows),
            "cpu_pct": self.total_cpu_pct(),
            "rss_kib": rows[-1]["rss_kib"], "fds": rows[-1]["fds"], "rewrites": total("rewrites"),
            "reloads_ok": total("reloads_ok"), "reloads_error": total("reloads_error"),
            "kills": total("kills"), "rotations": total("rotations"), "retries": total("retries"),
            "ejections": total("ejections"),
        }
        cells = self.cells("total", tot)
        cells[6], cells[7] = f"≤{cells[6]}", f"≤{cells[7]}"  # the worst interval's percentiles
        print("| " + " | ".join(f"**{c}**" for c in cells) + " |")
        print()
        problems = []
        # flatness: from the end of the first interval (warm-up) to the end
        warm = rows[0] if len(rows) > 1 else None
        if warm:
            rss_a, rss_b = warm["rss_kib"], rows[-1]["rss_kib"]
            fd_a, fd_b = warm["fds"], rows[-1]["fds"]
            after = [r["rss_kib"] for r in rows[1:]]
            print(f"after warm-up (end of interval 1 -> end): RSS {rss_a / 1024:.1f} -> {rss_b / 1024:.1f} MiB "
                  f"({(rss_b - rss_a) / 1024:+.1f}; range {min(after) / 1024:.1f}-{max(after) / 1024:.1f}), "
                  f"fds {fd_a} -> {fd_b} (range {min(r['fds'] for r in rows[1:])}-{max(r['fds'] for r in rows[1:])})")
        kills = self.kill_windows
        if kills:
            per = " ".join("/".join(str(w["failures"][k]) for k in PHASES) for w in kills)
            print(f"kills: {len(kills)} (SIGKILL, restarted {self.a.down:g} s later); failures of each kill, "
                  f"in flight/while down/after the restart: {per}")
        if self.rotations:
            seen = [r["seen_after_s"] for r in self.rotations if r["seen_after_s"] is not None]
            missed = len(self.rotations) - len(seen)
            worst = f", the slowest after {max(seen) * 1000:.0f} ms" if seen else ""
            print(f"certificate rotations: {len(self.rotations)}, served by the proxy: {len(seen)}{worst}")
            if missed:
                problems.append(f"{missed} certificate rotation(s) not served within 10 s")
        try:
            with open(os.path.join(self.work, "proxy.log"), errors="replace") as f:
                lines = f.readlines()
            loud = sum(1 for ln in lines if '"level":"WARN"' in ln or '"level":"ERROR"' in ln)
            print(f"proxy log: {len(lines)} lines, {loud} of them warnings or errors")
        except OSError:
            pass
        applied = tot["reloads_ok"]
        print(f"weight rewrites: {tot['rewrites']}; proxy config loads ok {self.opt(applied)}, errors "
              f"{self.opt(tot['reloads_error'])} (certificate rotations are loads too)")
        print(f"failures: {sum(errors.values())} of {tot['requests']} requests: {placed['flight']} sent to a backend "
              f"as it was killed (in flight), {placed['down']} while it was down, {placed['back']} within "
              f"{KILL_TAIL_S:g} s of its restart, {placed['rotation']} after a rotation, {placed['other']} elsewhere")
        # in flight at a SIGKILL is the one loss a proxy cannot always avoid (a request that
        # may have reached the backend is replayed only when it is a GET, HEAD or OPTIONS);
        # everything else never reached a backend, or met no fault at all
        avoidable = sum(placed[k] for k in ("down", "back", "rotation", "other"))
        if avoidable:
            problems.append(f"{avoidable} failure(s) other than requests in flight at a kill")
        if tot["reloads_error"]:
            problems.append(f"{tot['reloads_error']} configuration load error(s)")
        result = {"args": {k: v for k, v in vars(self.a).items()}, "workdir": self.work, "rows": rows,
                  "total": tot,
                  "kills": [{"backend": w["backend"], "kill_s": w["kill"] - self.t0,
                             "back_s": None if w["back"] is None else w["back"] - self.t0,
                             "failures": w["failures"]} for w in self.kill_windows],
                  "rotations": [{"at_s": r["at"] - self.t0, "seen_after_s": r["seen_after_s"]} for r in self.rotations],
                  "problems": problems, "netem": self.netem_note}
        path = self.a.json or os.path.join(self.work, "soak.json")
        with open(path, "w") as f:
            json.dump(result, f, indent=1)
        print(f"record: {path}")
        for p in problems:
            print(f"PROBLEM: {p}")
        return 1 if problems else 0

    def total_cpu_pct(self):
        if len(self.samples) < 2 or self.samples[-1][0] <= self.samples[0][0]:
            return None
        a, b = self.samples[0], self.samples[-1]
        return 100 * (b[3] - a[3]) / (b[0] - a[0])

    def cleanup(self):
        self.kids.stop_all(term_first=[self.proxy] if self.proxy else [])
        if self.netns_made:
            subprocess.run(["ip", "netns", "del", NETNS], stderr=subprocess.DEVNULL)
            subprocess.run(["ip", "link", "del", VETH_HOST], stderr=subprocess.DEVNULL)


def main():
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    p = argparse.ArgumentParser(
        prog="benches/soak.sh",
        description="Soak the release proxy: steady mTLS load, a weight reload every second, a backend "
                    "SIGKILLed and restarted every 30 s, a server certificate rotation every minute; one "
                    "table row per interval (requests, errors by kind, p99, RSS, open fds).")
    p.add_argument("--minutes", type=float, help="run this many minutes (same as --duration Nm)")
    p.add_argument("--duration", type=parse_duration, default=600.0, help="total time (default 10m)")
    p.add_argument("--interval", type=parse_duration, default=60.0, help="one table row per interval (default 1m)")
    p.add_argument("--rate", type=float, default=500.0, help="requests per second, open loop (default 500)")
    p.add_argument("--connections", "-c", type=int, default=8, help="keep-alive client connections (default 8)")
    p.add_argument("--h2", action="store_true", help="HTTP/2 (ALPN h2) instead of HTTP/1.1")
    p.add_argument("--backends", type=int, default=3, help="backends (nginx processes), 2 or more (default 3)")
    p.add_argument("--reload-every", type=parse_duration, default=1.0, help="weight rewrite period (default 1s)")
    p.add_argument("--kill-every", type=parse_duration, default=30.0, help="backend SIGKILL period (default 30s)")
    p.add_argument("--down", type=parse_duration, default=5.0, help="time a killed backend stays down (default 5s)")
    p.add_argument("--rotate-every", type=parse_duration, default=60.0, help="certificate rotation period (default 1m)")
    p.add_argument("--cert-write", choices=("secret", "rename"), default="secret",
                   help="how a rotation writes the files: 'secret' (default) swaps a `..data` symlink as "
                        "kubelet does for a Secret volume (both files at once); 'rename' renames the key, then "
                        "the certificate, over the old files")
    p.add_argument("--workers", type=int, default=1, help="proxy worker threads (default 1)")
    p.add_argument("--netns", action="store_true", help="put the backends in a network namespace (veth pair)")
    p.add_argument("--netem", nargs="?", const="delay 2ms 1ms loss 0.2%", default=None, metavar="SPEC",
                   help="with the namespace, tc netem SPEC on both veth ends (implies --netns; "
                        "default SPEC: 'delay 2ms 1ms loss 0.2%%')")
    p.add_argument("--bin", default=os.path.join(root, "target/release/splitproxy"),
                   help="the proxy binary (default target/release/splitproxy)")
    p.add_argument("--measure-bin", help="the binary whose `measure` drives the load (default: --bin)")
    p.add_argument("--nginx", default=shutil.which("nginx") or "/usr/sbin/nginx", help="nginx binary")
    p.add_argument("--port-base", type=int, default=18200,
                   help="proxy on PORT, admin PORT+9, backends PORT+11.. (default 18200)")
    p.add_argument("--seed", type=int, default=1, help="seed of the weight sequence (default 1)")
    p.add_argument("--workdir", help="files, logs and the record go here (default: target/soak/UTC-TIMESTAMP)")
    p.add_argument("--json", help="write the record here (default: WORKDIR/soak.json)")
    a = p.parse_args()
    if a.minutes is not None:
        a.duration = a.minutes * 60
    if a.netem:
        a.netns = True
    a.measure_bin = a.measure_bin or a.bin
    a.workdir = a.workdir or os.path.join(root, "target", "soak", time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()))
    if a.backends < 2:
        p.error("--backends must be 2 or more (one is always down for a while)")
    if a.down >= a.kill_every:
        p.error("--down must be shorter than --kill-every")
    if a.interval > a.duration:
        a.interval = a.duration
    for b, what in ((a.bin, "--bin"), (a.measure_bin, "--measure-bin")):
        if not (os.path.isfile(b) and os.access(b, os.X_OK)):
            p.error(f"{what}: no executable at {b} (build it: nice -n 15 cargo build --release)")
    if not os.path.isfile(a.nginx):
        p.error(f"no nginx at {a.nginx} (apt-get install nginx, or shared/bench/setup.sh)")
    if a.netns and os.geteuid() != 0:
        p.error("--netns needs root (ip netns)")

    soak = Soak(a)

    def stop(signum, _frame):
        raise SystemExit(128 + signum)

    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, stop)
    code = 2
    try:
        code = soak.run()
    except SystemExit as e:
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
            code = 2
        else:
            code = e.code if isinstance(e.code, int) else 2
            if code >= 128:
                log(f"stopped by signal {code - 128}")
    finally:
        # no second signal may interrupt the cleanup
        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(s, signal.SIG_IGN)
        soak.cleanup()
    return code


if __name__ == "__main__":
    sys.exit(main())
