#!/usr/bin/env python3
"""Build every image critest v1.32 pulls and push it to a local registry.

Used by tests/critest/run.sh; also usable alone:

    tests/critest/images.py --registry 127.0.0.1:5001 --work /tmp/critest-build

Images are pushed under their path without the registry host
(registry.k8s.io/e2e-test-images/busybox:1.29-2 ->
127.0.0.1:PORT/e2e-test-images/busybox:1.29-2); cricket's registry mirrors send
registry.k8s.io, gcr.io, ... there, so critest runs with the original names.

Every image is a single-platform linux/amd64 Docker v2 schema2 manifest. Layers
have fixed mtimes/owners, so reruns give the same digests; blobs the registry
already has are not uploaded again (a rerun against a kept registry directory
uploads nothing).

Needs python3, gcc + libc6-dev (static fixtures), readelf (binutils) and a
dynamically linked busybox: /bin/busybox when it is Debian's `busybox`
package, otherwise the package is fetched with `apt-get download` and
unpacked into the work directory (installing it would remove busybox-static,
which cricket's other tests use). Why dynamic: busybox-static's sh runs
applets internally and never execs /bin/ls, so critest's MaskedPaths spec
(mask /bin/ls, expect "Permission denied") would fail because of the image.
"""

import argparse
import glob
import gzip
import hashlib
import http.client
import io
import json
import os
import subprocess
import sys
import tarfile
import time
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "fixtures")

MTIME = 1700000000  # fixed timestamp for reproducible layers
CREATED = "2023-11-14T22:13:20Z"
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

MT_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MT_CONFIG = "application/vnd.docker.container.image.v1+json"
MT_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"

# /etc/passwd and /etc/group as in the upstream busybox image
PASSWD = """root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/bin/false
bin:x:2:2:bin:/bin:/bin/false
sys:x:3:3:sys:/dev:/bin/false
sync:x:4:100:sync:/bin:/bin/sync
mail:x:8:8:mail:/var/spool/mail:/bin/false
www-data:x:33:33:www-data:/var/www:/bin/false
operator:x:37:37:Operator:/var:/bin/false
nobody:x:65534:65534:nobody:/home:/bin/false
"""
GROUP = """root:x:0:
daemon:x:1:
bin:x:2:
sys:x:3:
adm:x:4:
tty:x:5:
disk:x:6:
lp:x:7:
mail:x:8:
kmem:x:9:
wheel:x:10:root
cdrom:x:11:
dialout:x:18:
floppy:x:19:
video:x:28:
audio:x:29:
tape:x:32:
www-data:x:33:
operator:x:37:
utmp:x:43:
plugdev:x:46:
staff:x:50:
lock:x:54:
netdev:x:82:
users:x:100:
nogroup:x:65534:
"""
SHADOW = "".join(
    "%s:*:19000:0:99999:7:::\n" % line.split(":")[0] for line in PASSWD.splitlines()
).replace("root:*:", "root::")
NSSWITCH = "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n"

NGINX_INDEX = """<!DOCTYPE html>
<html>
<head>
<title>Welcome to nginx!</title>
</head>
<body>
<h1>Welcome to nginx!</h1>
<p>If you see this page, the nginx web server is successfully installed and
working. (cricket critest fixture: busybox httpd)</p>
</body>
</html>
"""
HTTPD_INDEX = "<html><body><h1>It works!</h1></body></html>\n"

NGINX_TITLE = "nginx: master process nginx -g daemon off;"
# name -> (source, extra compiler flags)
STATIC_FIXTURES = {
    "nnp": ("nnp.c", []),
    "nginx": ("webfix.c", ['-DPORT="80"', '-DDOCROOT="/usr/share/nginx/html"',
                           '-DTITLE="%s"' % NGINX_TITLE, '-DPIDFILE="/var/run/nginx.pid"']),
    "hostnet-nginx": ("webfix.c", ['-DPORT="12003"', '-DDOCROOT="/usr/share/nginx/html"',
                                   '-DTITLE="%s"' % NGINX_TITLE, '-DPIDFILE="/var/run/nginx.pid"']),
    "httpd-foreground": ("webfix.c", ['-DPORT="80"', '-DDOCROOT="/usr/local/apache2/htdocs"',
                                      '-DBANNER="httpd: busybox httpd stand-in for Apache httpd, '
                                      'listening on port 80"']),
}


def log(msg):
    print("[images] %s" % msg, file=sys.stderr, flush=True)


def read(p):
    with open(p, "rb") as f:
        return f.read()


def compile_fixtures(bin_dir):
    """Static C fixtures, rebuilt when the source or this script is newer."""
    os.makedirs(bin_dir, exist_ok=True)
    me = os.path.getmtime(__file__)
    for name, (src, flags) in STATIC_FIXTURES.items():
        out, src = os.path.join(bin_dir, name), os.path.join(FIXTURES, src)
        if os.path.exists(out) and os.path.getmtime(out) > max(os.path.getmtime(src), me):
            continue
        subprocess.run(["gcc", "-static", "-O2", "-s", "-Wall", "-o", out, src] + flags, check=True)


def elf_needed(path):
    """(interpreter or None, [NEEDED shared objects]) of an ELF file."""
    out = subprocess.run(["readelf", "-l", "-d", path], check=True, capture_output=True, text=True).stdout
    interp = None
    needed = []
    for line in out.splitlines():
        if "Requesting program interpreter:" in line:
            interp = line.split(":", 1)[1].strip().rstrip("]").strip()
        if "(NEEDED)" in line and "[" in line:
            needed.append(line.rsplit("[", 1)[1].rstrip("]"))
    return interp, needed


def dynamic_busybox(work):
    """Path of a dynamically linked Debian busybox (see the module docstring)."""
    if os.path.exists("/bin/busybox") and elf_needed("/bin/busybox")[0]:
        return "/bin/busybox"
    unpacked = os.path.join(work, "busybox-deb", "bin", "busybox")
    if os.path.exists(unpacked):
        return unpacked
    debs = sorted(glob.glob("/var/cache/apt/archives/busybox_*.deb"))
    if not debs:
        log("fetching Debian's busybox package (apt-get download busybox)")
        subprocess.run(["apt-get", "-q", "-o", "APT::Sandbox::User=root", "download", "busybox"],
                       cwd=work, check=True, stdout=subprocess.DEVNULL)
        debs = sorted(glob.glob(os.path.join(work, "busybox_*.deb")))
    subprocess.run(["dpkg-deb", "-x", debs[-1], os.path.join(work, "busybox-deb")], check=True)
    return unpacked


class Layer:
    """An in-memory layer tar built from explicit entries."""

    def __init__(self):
        self.entries = {}  # path -> (TarInfo, data or None)

    def _info(self, path, typ, mode, uid=0, gid=0):
        ti = tarfile.TarInfo(path.lstrip("/"))
        ti.type = typ
        ti.mode = mode
        ti.uid, ti.gid = uid, gid
        ti.uname = ti.gname = ""
        ti.mtime = MTIME
        return ti

    def dir(self, path, mode=0o755, uid=0, gid=0):
        parts = path.strip("/").split("/")
        for i in range(1, len(parts)):
            p = "/".join(parts[:i])
            if p not in self.entries:
                self.entries[p] = (self._info(p, tarfile.DIRTYPE, 0o755), None)
        p = path.strip("/")
        self.entries[p] = (self._info(p, tarfile.DIRTYPE, mode, uid, gid), None)

    def file(self, path, data, mode=0o644, uid=0, gid=0):
        if isinstance(data, str):
            data = data.encode()
        parent = os.path.dirname(path.strip("/"))
        if parent and parent not in self.entries:
            self.dir(parent)
        ti = self._info(path, tarfile.REGTYPE, mode, uid, gid)
        ti.size = len(data)
        self.entries[path.strip("/")] = (ti, data)

    def hardlink(self, path, target):
        ti = self._info(path, tarfile.LNKTYPE, 0o755)
        ti.linkname = target.lstrip("/")
        self.entries[path.strip("/")] = (ti, None)

    def build(self):
        """(gzipped blob, diff_id). Parents sort before children; hard links go
        last so their targets are already in the tar."""
        raw = io.BytesIO()
        with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tf:
            regular = [k for k, (ti, _) in self.entries.items() if ti.type != tarfile.LNKTYPE]
            links = [k for k, (ti, _) in self.entries.items() if ti.type == tarfile.LNKTYPE]
            for k in sorted(regular) + sorted(links):
                ti, data = self.entries[k]
                tf.addfile(ti, io.BytesIO(data) if data is not None else None)
        raw = raw.getvalue()
        diff_id = "sha256:" + hashlib.sha256(raw).hexdigest()
        gz = io.BytesIO()
        with gzip.GzipFile(fileobj=gz, mode="wb", compresslevel=6, mtime=0) as g:
            g.write(raw)
        return gz.getvalue(), diff_id


def blob_digest(b):
    return "sha256:" + hashlib.sha256(b).hexdigest()


class Registry:
    """Just enough of the distribution v2 push API, over plain HTTP."""

    def __init__(self, hostport):
        self.hostport = hostport
        self.known = {}  # digest -> a repo that has it (for cross-repo mounts)
        self.uploaded_bytes = 0

    def _req(self, method, url, body=None, headers=None):
        c = http.client.HTTPConnection(self.hostport, timeout=600)
        try:
            c.request(method, url, body=body, headers=headers or {})
            r = c.getresponse()
            return r.status, dict(r.getheaders()), r.read()
        finally:
            c.close()

    def push_blob(self, repo, blob):
        d = blob_digest(blob)
        if self._req("HEAD", "/v2/%s/blobs/%s" % (repo, d))[0] == 200:
            self.known.setdefault(d, repo)
            return
        if d in self.known:
            st, _, _ = self._req("POST", "/v2/%s/blobs/uploads/?mount=%s&from=%s" % (repo, d, self.known[d]),
                                 headers={"Content-Length": "0"})
            if st == 201:
                return
        st, h, body = self._req("POST", "/v2/%s/blobs/uploads/" % repo, headers={"Content-Length": "0"})
        if st != 202:
            raise RuntimeError("upload start %s: %s %s" % (repo, st, body[:200]))
        u = urllib.parse.urlsplit(h.get("Location") or h.get("location"))
        q = (u.query + "&" if u.query else "") + "digest=" + urllib.parse.quote(d)
        st, _, body = self._req("PUT", u.path + "?" + q, body=blob,
                                headers={"Content-Type": "application/octet-stream",
                                         "Content-Length": str(len(blob))})
        if st != 201:
            raise RuntimeError("upload %s %s: %s %s" % (repo, d, st, body[:200]))
        self.known[d] = repo
        self.uploaded_bytes += len(blob)

    def put_manifest(self, repo, tag, manifest):
        st, h, body = self._req("PUT", "/v2/%s/manifests/%s" % (repo, tag), body=manifest,
                                headers={"Content-Type": MT_MANIFEST, "Content-Length": str(len(manifest))})
        if st != 201:
            raise RuntimeError("manifest %s:%s: %s %s" % (repo, tag, st, body[:300]))
        return h.get("Docker-Content-Digest")


def make_image(layers, config_overrides, note):
    """layers: list of (blob, diff_id). Returns (config bytes, manifest bytes)."""
    cfg = {"Env": [PATH_ENV], "Cmd": ["sh"]}
    cfg.update(config_overrides)
    cfg = {k: v for k, v in cfg.items() if v is not None}  # None = unset (e.g. Cmd)
    config = {
        "architecture": "amd64",
        "os": "linux",
        "created": CREATED,
        "config": cfg,
        "rootfs": {"type": "layers", "diff_ids": [d for _, d in layers]},
        "history": [{"created": CREATED, "created_by": "cricket critest fixture: %s (layer %d)" % (note, i)}
                    for i in range(len(layers))],
    }
    config_b = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": MT_MANIFEST,
        "config": {"mediaType": MT_CONFIG, "size": len(config_b), "digest": blob_digest(config_b)},
        "layers": [{"mediaType": MT_LAYER, "size": len(b), "digest": blob_digest(b)} for b, _ in layers],
    }
    return config_b, json.dumps(manifest, indent=3).encode()


def base_layer(busybox, libdir):
    """The e2e busybox image: dynamic busybox with its applets as hard links
    (a masked /bin/ls must not hide /bin/busybox itself), its libc, the
    upstream passwd/group, and pgrep/ipcs shims (Debian's busybox has
    neither)."""
    L = Layer()
    for d, m in [("bin", 0o755), ("dev", 0o755), ("etc", 0o755), ("home", 0o755), ("lib", 0o755),
                 ("lib64", 0o755), ("proc", 0o755), ("root", 0o700), ("sys", 0o755), ("tmp", 0o1777),
                 ("usr", 0o755), ("usr/bin", 0o755), ("usr/sbin", 0o755), ("usr/local/bin", 0o755),
                 ("var", 0o755), ("var/spool/mail", 0o755), ("var/www", 0o755)]:
        L.dir(d, m)
    L.file("bin/busybox", read(busybox), 0o755)
    applets = subprocess.run([busybox, "--list"], check=True, capture_output=True, text=True).stdout.split()
    for a in applets:
        if a != "busybox":
            L.hardlink("bin/" + a, "bin/busybox")
    interp, needed = elf_needed(busybox)
    if interp != "/lib64/ld-linux-x86-64.so.2":
        raise SystemExit("%s: unexpected interpreter %r" % (busybox, interp))
    L.file("lib64/ld-linux-x86-64.so.2", read(os.path.join(libdir, "ld-linux-x86-64.so.2")), 0o755)
    for so in needed:
        L.file("lib/x86_64-linux-gnu/" + so, read(os.path.join(libdir, so)), 0o755)
    L.file("etc/passwd", PASSWD)
    L.file("etc/group", GROUP)
    L.file("etc/shadow", SHADOW, 0o640)
    L.file("etc/nsswitch.conf", NSSWITCH)
    for shim in ("pgrep", "ipcs"):
        L.file("bin/" + shim, read(os.path.join(FIXTURES, shim)), 0o755)
    return L.build()


def one_file_layer(path):
    L = Layer()
    L.file(path, b"")
    return L.build()


def images(busybox, libdir, bin_dir):
    """[(repo, [tags], layers, config overrides, note)] — what critest v1.32 pulls."""
    bin_ = lambda n: read(os.path.join(bin_dir, n))  # noqa: E731
    base = base_layer(busybox, libdir)
    E2E = "e2e-test-images/"  # registry.k8s.io/e2e-test-images/...
    CRI = "k8s-staging-cri-tools/"  # gcr.io/k8s-staging-cri-tools/...
    out = [(E2E + "busybox", ["1.29-2"], [base], {}, "busybox")]

    nginx = Layer()
    nginx.file("usr/sbin/nginx", bin_("nginx"), 0o755)
    nginx.file("usr/share/nginx/html/index.html", NGINX_INDEX)
    nginx.dir("var/run")
    nginx.dir("var/log/nginx")
    nginx.dir("etc/nginx/conf.d")
    out.append((E2E + "nginx", ["1.14-2"], [base, nginx.build()],
                {"Cmd": ["nginx", "-g", "daemon off;"], "ExposedPorts": {"80/tcp": {}},
                 "StopSignal": "SIGTERM", "Env": [PATH_ENV, "NGINX_VERSION=1.14.2"]}, "nginx stand-in"))

    hn = Layer()
    hn.file("usr/sbin/nginx", bin_("hostnet-nginx"), 0o755)
    hn.file("usr/share/nginx/html/index.html", NGINX_INDEX)
    hn.dir("var/run")
    hn.dir("etc/nginx/conf.d")
    out.append((CRI + "hostnet-nginx-amd64", ["latest"], [base, hn.build()],
                {"Cmd": ["nginx", "-g", "daemon off;"], "ExposedPorts": {"80/tcp": {}},
                 "StopSignal": "SIGQUIT", "Env": [PATH_ENV, "NGINX_VERSION=1.25.0"]},
                "nginx stand-in on :12003"))

    httpd = Layer()
    httpd.file("usr/local/bin/httpd-foreground", bin_("httpd-foreground"), 0o755)
    httpd.file("usr/local/apache2/htdocs/index.html", HTTPD_INDEX)
    httpd.dir("usr/local/apache2/logs")
    out.append((E2E + "httpd", ["2.4.39-4"], [base, httpd.build()],
                {"Cmd": ["httpd-foreground"], "ExposedPorts": {"80/tcp": {}}, "StopSignal": "SIGWINCH",
                 "WorkingDir": "/usr/local/apache2",
                 "Env": ["PATH=/usr/local/apache2/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                         "HTTPD_PREFIX=/usr/local/apache2"]}, "httpd stand-in"))

    nnp = Layer()
    nnp.file("usr/local/bin/nnp", bin_("nnp"), 0o4755)  # setuid root
    out.append((E2E + "nonewprivs", ["1.3"], [base, nnp.build()],
                {"Entrypoint": ["/usr/local/bin/nnp"], "Cmd": None}, "nonewprivs"))

    # test-image-user-*: FROM busybox, USER <x>
    for name, user in [("test-image-user-uid", "1002"), ("test-image-user-username", "www-data"),
                       ("test-image-user-uid-group", "1003:1004"),
                       ("test-image-user-username-group", "www-data:1004")]:
        out.append((CRI + name, ["latest"], [base], {"User": user}, "USER " + user))

    # test-image-predefined-group: user 1000 (default-user), member of group 50000
    pg = Layer()
    pg.file("etc/passwd", PASSWD + "default-user:x:1000:1000:Linux User,,,:/home/default-user:/bin/sh\n")
    pg.file("etc/group", GROUP + "default-user:x:1000:\ngroup-defined-in-image:x:50000:default-user\n")
    pg.file("etc/shadow", SHADOW + "default-user:!:19000:0:99999:7:::\n", 0o640)
    pg.dir("home/default-user", 0o755, 1000, 1000)
    out.append((CRI + "test-image-predefined-group", ["latest"], [base, pg.build()], {"User": "1000"},
                "predefined group"))

    # test-image-N: FROM busybox, ADD <name> /<name>. test-image-digest is
    # pulled by critest under a pinned digest that can't be reproduced: the
    # spec is in skip.txt; the tag is pushed anyway.
    for name in ["test-image-1", "test-image-2", "test-image-3", "test-image-latest", "test-image-digest"]:
        out.append((CRI + name, ["latest"], [base, one_file_layer(name)], {}, "ADD " + name))
    out.append((CRI + "test-image-tags", ["1", "2", "3"], [base, one_file_layer("same-image")], {},
                "ADD same-image"))
    for tag in ["test", "all"]:
        out.append((CRI + "test-image-tag", [tag], [base, one_file_layer(tag)], {}, "ADD " + tag))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--registry", required=True, help="HOST:PORT of the registry to push to")
    ap.add_argument("--work", required=True, help="directory for compiled fixtures and the busybox package")
    ap.add_argument("--busybox", help="a dynamically linked busybox (default: see above)")
    ap.add_argument("--libdir", default="/lib/x86_64-linux-gnu", help="where its shared objects come from")
    ap.add_argument("-q", "--quiet", action="store_true", help="only print the summary line")
    args = ap.parse_args()

    t0 = time.time()
    os.makedirs(args.work, exist_ok=True)
    bin_dir = os.path.join(args.work, "bin")
    compile_fixtures(bin_dir)
    busybox = args.busybox or dynamic_busybox(args.work)
    reg = Registry(args.registry)
    count = 0
    for repo, tags, layers, cfg, note in images(busybox, args.libdir, bin_dir):
        config_b, manifest_b = make_image(layers, cfg, note)
        for b, _ in layers:
            reg.push_blob(repo, b)
        reg.push_blob(repo, config_b)
        for t in tags:
            dig = reg.put_manifest(repo, t, manifest_b)
            count += 1
            if not args.quiet:
                log("pushed %s/%s:%s %s" % (args.registry, repo, t, dig))
    log("%d images on %s in %.1fs (%.1f MiB of new blobs uploaded)"
        % (count, args.registry, time.time() - t0, reg.uploaded_bytes / 1048576.0))


if __name__ == "__main__":
    main()
