#!/usr/bin/env python3
"""Build an image and push it to a registry over the distribution HTTP API v2
(plain HTTP), as an OCI manifest. Either a multi-layer image of random
(incompressible) data, or a one-layer image of a given root filesystem.

Every random layer is a gzip'd tar holding a few files of seeded random bytes,
so a rerun with the same arguments produces byte-identical blobs and the same
manifest digest. Blobs the registry already has are not uploaded again.

    mkimage.py --registry 127.0.0.1:5001 [--repo bench/random] [--tag v1]
               [--layers 5] [--layer-mib 20] [--files 4] [--seed 20250101]

With --rootfs, the single layer is that directory (entries sorted, owned by
root, fixed mtimes: reproducible) or that uncompressed tar file, as is:

    mkimage.py --registry 127.0.0.1:5001 --repo bench/pause --tag 3.9 \
               --rootfs DIR|FILE.tar --entrypoint /pause

Prints the pushed reference (REGISTRY/REPO:TAG) on stdout; progress on stderr.
Python 3.9+ standard library only.
"""

import argparse
import gzip
import hashlib
import http.client
import io
import json
import os
import random
import shlex
import sys
import tarfile
import time
import urllib.parse

MTIME = 1700000000  # fixed timestamp: reproducible tars
CREATED = "2023-11-14T22:13:20Z"

MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
CHUNK = 8 << 20  # PATCH chunk size for chunked uploads


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def sha256(b):
    return "sha256:" + hashlib.sha256(b).hexdigest()


def tar_info(name, typ, mode, size=0):
    ti = tarfile.TarInfo(name)
    ti.type, ti.mode, ti.size, ti.mtime = typ, mode, size, MTIME
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    return ti


def build_layer(rnd, index, nbytes, nfiles):
    """One layer: directory data/layerN/ with nfiles files of random bytes.
    Returns (gzip blob, diff_id)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tf:
        d = "data/layer%d" % index
        tf.addfile(tar_info("data", tarfile.DIRTYPE, 0o755))
        tf.addfile(tar_info(d, tarfile.DIRTYPE, 0o755))
        per, rest = divmod(nbytes, nfiles)
        for f in range(nfiles):
            size = per + (rest if f == nfiles - 1 else 0)
            data = rnd.randbytes(size)
            tf.addfile(tar_info("%s/file%d" % (d, f), tarfile.REGTYPE, 0o644, size), io.BytesIO(data))
    tar = raw.getvalue()
    # level 1: the data is random anyway, higher levels only cost time
    blob = gzip.compress(tar, compresslevel=1, mtime=0)
    return blob, sha256(tar)


def rootfs_layer(path):
    """One layer from a directory tree or an uncompressed tar. Returns (gzip blob, diff_id)."""
    if os.path.isfile(path):
        with open(path, "rb") as f:
            tar = f.read()
    else:
        raw = io.BytesIO()
        with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tf:
            for root, dirs, files in os.walk(path):
                dirs.sort()
                for name in sorted(dirs) + sorted(files):
                    full = os.path.join(root, name)
                    ti = tf.gettarinfo(full, os.path.relpath(full, path))
                    ti.mtime, ti.uid, ti.gid, ti.uname, ti.gname = MTIME, 0, 0, "", ""
                    if ti.isreg():
                        with open(full, "rb") as f:
                            tf.addfile(ti, f)
                    else:
                        tf.addfile(ti)
        tar = raw.getvalue()
    return gzip.compress(tar, compresslevel=6, mtime=0), sha256(tar)


class Registry:
    def __init__(self, hostport, chunked):
        self.hostport = hostport
        self.chunked = chunked
        self.uploaded = 0

    def req(self, method, url, body=None, headers=None):
        c = http.client.HTTPConnection(self.hostport, timeout=300)
        try:
            c.request(method, url, body=body, headers=headers or {})
            r = c.getresponse()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
        finally:
            c.close()

    def has_blob(self, repo, digest):
        return self.req("HEAD", "/v2/%s/blobs/%s" % (repo, digest))[0] == 200

    @staticmethod
    def _next(loc):
        """The upload URL to use next (Location may be absolute or relative)."""
        u = urllib.parse.urlsplit(loc)
        return u.path, u.query

    def push_blob(self, repo, blob):
        digest = sha256(blob)
        if self.has_blob(repo, digest):
            return digest
        st, h, body = self.req("POST", "/v2/%s/blobs/uploads/" % repo, headers={"Content-Length": "0"})
        if st != 202:
            raise RuntimeError("starting upload to %s: HTTP %d %s" % (repo, st, body[:200]))
        path, query = self._next(h["location"])
        final = b""
        if self.chunked:
            # chunked upload: PATCH each range, then PUT with the digest
            for off in range(0, len(blob), CHUNK):
                part = blob[off:off + CHUNK]
                st, h, body = self.req("PATCH", path + ("?" + query if query else ""), body=part, headers={
                    "Content-Type": "application/octet-stream",
                    "Content-Length": str(len(part)),
                    "Content-Range": "%d-%d" % (off, off + len(part) - 1),
                })
                if st != 202:
                    raise RuntimeError("chunk at %d of %s: HTTP %d %s" % (off, digest, st, body[:200]))
                path, query = self._next(h["location"])
        else:
            final = blob  # monolithic: the whole blob in the closing PUT
        q = (query + "&" if query else "") + "digest=" + urllib.parse.quote(digest)
        st, _, body = self.req("PUT", path + "?" + q, body=final, headers={
            "Content-Type": "application/octet-stream", "Content-Length": str(len(final))})
        if st != 201:
            raise RuntimeError("finishing upload of %s: HTTP %d %s" % (digest, st, body[:200]))
        self.uploaded += len(blob)
        return digest

    def put_manifest(self, repo, tag, manifest):
        st, h, body = self.req("PUT", "/v2/%s/manifests/%s" % (repo, tag), body=manifest, headers={
            "Content-Type": MT_MANIFEST, "Content-Length": str(len(manifest))})
        if st != 201:
            raise RuntimeError("manifest %s:%s: HTTP %d %s" % (repo, tag, st, body[:300]))
        return h.get("docker-content-digest", sha256(manifest))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--registry", required=True, help="HOST:PORT of a plain-HTTP registry")
    ap.add_argument("--repo", default="bench/random")
    ap.add_argument("--tag", default="v1")
    ap.add_argument("--layers", type=int, default=5)
    ap.add_argument("--layer-mib", type=float, default=20, help="uncompressed random bytes per layer")
    ap.add_argument("--files", type=int, default=4, help="files per layer")
    ap.add_argument("--seed", type=int, default=20250101)
    ap.add_argument("--chunked", action="store_true", help="PATCH in 8 MiB chunks instead of one PUT")
    ap.add_argument("--rootfs", help="one layer from this directory or uncompressed tar (no random layers)")
    ap.add_argument("--entrypoint", help="image Entrypoint, split like a shell command line (with --rootfs)")
    args = ap.parse_args()
    if args.layers < 1 or args.files < 1 or args.layer_mib <= 0:
        ap.error("--layers, --files and --layer-mib must be positive")
    if args.entrypoint and not args.rootfs:
        ap.error("--entrypoint needs --rootfs")

    t0 = time.monotonic()
    image_config = {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]}
    if args.rootfs:
        layers = [rootfs_layer(args.rootfs)]
        if args.entrypoint:
            image_config["Entrypoint"] = shlex.split(args.entrypoint)
        history = ["mkimage.py: root filesystem %s" % os.path.basename(os.path.normpath(args.rootfs))]
    else:
        rnd = random.Random(args.seed)
        per_layer = int(args.layer_mib * 1024 * 1024)
        layers = [build_layer(rnd, i, per_layer, args.files) for i in range(args.layers)]
        image_config["Cmd"] = ["/bin/sh"]
        history = ["mkimage.py: %g MiB of random data (layer %d)" % (args.layer_mib, i) for i in range(len(layers))]
    log("built %d layers in %.1fs" % (len(layers), time.monotonic() - t0))

    config = {
        "architecture": "amd64",
        "os": "linux",
        "created": CREATED,
        "config": image_config,
        "rootfs": {"type": "layers", "diff_ids": [d for _, d in layers]},
        "history": [{"created": CREATED, "created_by": h} for h in history],
    }
    config_b = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": MT_MANIFEST,
        "config": {"mediaType": MT_CONFIG, "size": len(config_b), "digest": sha256(config_b)},
        "layers": [{"mediaType": MT_LAYER, "size": len(b), "digest": sha256(b)} for b, _ in layers],
    }
    manifest_b = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()

    reg = Registry(args.registry, args.chunked)
    for blob, _ in layers:
        reg.push_blob(args.repo, blob)
    reg.push_blob(args.repo, config_b)
    digest = reg.put_manifest(args.repo, args.tag, manifest_b)
    size = sum(len(b) for b, _ in layers)
    log("pushed %s/%s:%s %s (%d layers, %.1f MiB compressed, %.1f MiB uploaded) in %.1fs" % (
        args.registry, args.repo, args.tag, digest, len(layers), size / 1048576, reg.uploaded / 1048576,
        time.monotonic() - t0))
    print("%s/%s:%s" % (args.registry, args.repo, args.tag))


if __name__ == "__main__":
    sys.exit(main())
