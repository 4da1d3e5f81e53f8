#!/usr/bin/env python3
"""Write a single-layer OCI image layout directory from local files (cluster.sh makes the
Kubernetes pause image with it).

No registry and no container engine needed.  Example:
  mkimage.py --out /tmp/oci --tag 1 --add /bin/busybox:/bin/busybox \
      --symlink /bin/sh:busybox --entrypoint /bin/sh
Then e.g. `skopeo copy oci:/tmp/oci:1 docker://127.0.0.1:5000/x:1 --dest-tls-verify=false`.
"""
import argparse
import gzip
import hashlib
import io
import json
import os
import tarfile
import time


def blob(layout, data, media_type):
    digest = hashlib.sha256(data).hexdigest()
    path = os.path.join(layout, "blobs", "sha256", digest)
    with open(path, "wb") as f:
        f.write(data)
    return {"mediaType": media_type, "digest": "sha256:" + digest, "size": len(data)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--tag", required=True)
    ap.add_argument("--add", action="append", default=[], help="SRC:DEST (file)")
    ap.add_argument("--symlink", action="append", default=[], help="DEST:TARGET")
    ap.add_argument("--dir", action="append", default=[], help="DEST directory (mode 1777 for /tmp)")
    ap.add_argument("--entrypoint", nargs="*", default=None)
    ap.add_argument("--cmd", nargs="*", default=None)
    ap.add_argument("--env", action="append", default=["PATH=/bin:/usr/bin:/sbin:/usr/sbin"])
    a = ap.parse_args()

    os.makedirs(os.path.join(a.out, "blobs", "sha256"), exist_ok=True)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        seen = set()

        def ensure_dirs(path, mode=0o755):
            parts = path.strip("/").split("/")[:-1]
            for i in range(1, len(parts) + 1):
                d = "/".join(parts[:i])
                if d not in seen:
                    seen.add(d)
                    ti = tarfile.TarInfo(d)
                    ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, mode, 0
                    tar.addfile(ti)

        for d in a.dir:
            ensure_dirs(d.rstrip("/") + "/x")
        for spec in a.add:
            src, dest = spec.split(":", 1)
            ensure_dirs(dest)
            ti = tar.gettarinfo(src, arcname=dest.lstrip("/"))
            ti.uid = ti.gid = 0
            ti.uname = ti.gname = "root"
            ti.mtime = 0
            with open(src, "rb") as f:
                tar.addfile(ti, f)
        for spec in a.symlink:
            dest, target = spec.split(":", 1)
            ensure_dirs(dest)
            ti = tarfile.TarInfo(dest.lstrip("/"))
            ti.type, ti.linkname, ti.mode, ti.mtime = tarfile.SYMTYPE, target, 0o777, 0
            tar.addfile(ti)
    raw_bytes = raw.getvalue()
    diff_id = "sha256:" + hashlib.sha256(raw_bytes).hexdigest()
    layer = blob(a.out, gzip.compress(raw_bytes, mtime=0),
                 "application/vnd.oci.image.layer.v1.tar+gzip")
    cfg = {"architecture": "amd64", "os": "linux",
           "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(0)),
           "config": {"Env": a.env},
           "rootfs": {"type": "layers", "diff_ids": [diff_id]},
           "history": [{"created_by": "mkimage.py"}]}
    if a.entrypoint is not None:
        cfg["config"]["Entrypoint"] = a.entrypoint
    if a.cmd is not None:
        cfg["config"]["Cmd"] = a.cmd
    config = blob(a.out, json.dumps(cfg).encode(), "application/vnd.oci.image.config.v1+json")
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": config, "layers": [layer]}
    mdesc = blob(a.out, json.dumps(manifest).encode(), "application/vnd.oci.image.manifest.v1+json")
    mdesc["annotations"] = {"org.opencontainers.image.ref.name": a.tag}
    with open(os.path.join(a.out, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    index_path = os.path.join(a.out, "index.json")
    index = {"schemaVersion": 2, "manifests": []}
    if os.path.exists(index_path):
        index = json.load(open(index_path))
        index["manifests"] = [m for m in index["manifests"]
                              if m.get("annotations", {}).get("org.opencontainers.image.ref.name") != a.tag]
    index["manifests"].append(mdesc)
    with open(index_path, "w") as f:
        json.dump(index, f)
    print(mdesc["digest"])


if __name__ == "__main__":
    main()
