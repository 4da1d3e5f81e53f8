"""The servers the cluster's pods reach on this machine, all bound to the bridge address.

- `make_certificates`: a throwaway CA and two server certificates signed by it, one for the
  bridge address (the git server) and one for hub.docker.com (the Docker Hub stand-in).
- `GitServer`: the repository Bodywork deploys, over HTTPS (Bodywork 3.0 clones only https://,
  git@ or file:// URLs, and git@ only for the big hosting services). It is git's "dumb" HTTP
  protocol: static files of a bare repository after `git update-server-info`.
- `DockerHubProxy`: an HTTPS proxy that answers only `CONNECT hub.docker.com:443`, and there
  only Docker Hub's "does this tag exist" request, from the local registry's manifests. Bodywork
  asks that before every deployment; every other destination is refused, so a client using
  this proxy reaches nothing beyond this machine.
"""
import http.server
import json
import re
import socketserver
import ssl
import subprocess
import threading
import urllib.request
from pathlib import Path
from typing import Any, List, NamedTuple, Tuple

HUB_HOST = "hub.docker.com"
# GET /v2/repositories/NAMESPACE/NAME/tags/TAG, as bodywork.workflow_execution asks it.
_TAG_PATH = re.compile(r"^/v2/repositories/([\w.-]+/[\w.-]+)/tags/([\w.-]+)/?$")
_MANIFEST_TYPES = ", ".join([
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
])


class Certificates(NamedTuple):
    ca: Path
    git: Tuple[Path, Path]  # certificate, key
    hub: Tuple[Path, Path]


def make_certificates(directory: Path, address: str) -> Certificates:
    """A CA (kept if `directory` already holds one, so images built with it stay valid) and
    server certificates for `address` (an IP SAN) and for hub.docker.com.

    Raises:
        subprocess.CalledProcessError: if openssl fails.
    """
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca = directory / "ca.key", directory / "ca.crt"
    if not ca.exists():
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", ca,
                 "-days", "3650", "-subj", "/CN=time-to-dispatch cluster test CA")

    def server(name: str, san: str) -> Tuple[Path, Path]:
        key, csr, crt, ext = (directory / f"{name}.{suffix}" for suffix in ("key", "csr", "crt", "ext"))
        ext.write_text(f"subjectAltName={san}\nextendedKeyUsage=serverAuth\n")
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr, "-subj", f"/CN={name}")
        _openssl("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
                 "-out", crt, "-days", "30", "-extfile", ext)
        return crt, key

    return Certificates(ca, server("git", f"IP:{address}"), server("hub", f"DNS:{HUB_HOST}"))


def _openssl(*args: Any) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)


def _server_context(certificate: Tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*map(str, certificate))
    return context


class _Quiet:
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base's name)
        pass


class GitServer:
    """Bare repositories under `root`, served read-only over HTTPS on address:port."""

    def __init__(self, root: Path, address: str, port: int, certificate: Tuple[Path, Path]) -> None:
        root.mkdir(parents=True, exist_ok=True)
        handler = type("Handler", (_Quiet, http.server.SimpleHTTPRequestHandler), {})

        def make_handler(*args: Any) -> Any:
            return handler(*args, directory=str(root))

        self._server = http.server.ThreadingHTTPServer((address, port), make_handler)
        context = _server_context(certificate)
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self.url = f"https://{address}:{port}"

    def start(self) -> "GitServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class DockerHubProxy:
    """The Docker Hub stand-in, as an HTTPS proxy on address:port."""

    def __init__(self, address: str, port: int, certificate: Tuple[Path, Path], registry: str) -> None:
        self.asked: List[str] = []  # every "image:tag" a client asked about
        self.refused: List[str] = []  # every CONNECT destination refused
        context = _server_context(certificate)
        proxy = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                request_line = self.rfile.readline(65537).decode("latin-1").split()
                while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                    pass
                if len(request_line) < 2 or request_line[0] != "CONNECT" or request_line[1] != f"{HUB_HOST}:443":
                    proxy.refused.append(" ".join(request_line[:2]))
                    self.wfile.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    return
                self.wfile.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                self.wfile.flush()
                with context.wrap_socket(self.connection, server_side=True) as tls:
                    proxy._answer(tls, registry)

        self._server = socketserver.ThreadingTCPServer((address, port), Handler, bind_and_activate=False)
        self._server.allow_reuse_address = True
        self._server.daemon_threads = True
        self._server.server_bind()
        self._server.server_activate()
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self.url = f"http://{address}:{port}"

    def _answer(self, tls: ssl.SSLSocket, registry: str) -> None:
        reader = tls.makefile("rb")
        request_line = reader.readline(65537).decode("latin-1").split()
        while reader.readline(65537) not in (b"\r\n", b"\n", b""):
            pass
        found = _TAG_PATH.match(request_line[1]) if len(request_line) >= 2 else None
        status, body = 404, {"message": "not found"}
        if found and request_line[0] == "GET":
            image, tag = found.groups()
            self.asked.append(f"{image}:{tag}")
            if registry_has(registry, image, tag):
                status, body = 200, {"name": tag}
        payload = json.dumps(body).encode()
        reason = "OK" if status == 200 else "Not Found"
        tls.sendall(
            f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode() + payload
        )

    def start(self) -> "DockerHubProxy":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def registry_has(registry: str, image: str, tag: str) -> bool:
    """Whether the registry at `registry` (host:port, plain HTTP) holds image:tag."""
    request = urllib.request.Request(
        f"http://{registry}/v2/{image}/manifests/{tag}", method="HEAD", headers={"Accept": _MANIFEST_TYPES}
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=10) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def publish(work_tree: Path, bare: Path, branch: str, message: str) -> str:
    """Commit everything in `work_tree` on `branch` and push it to the bare repository `bare`
    (created if missing), ready for the dumb HTTP protocol. Returns the commit's short hash.

    Raises:
        subprocess.CalledProcessError: if git fails.
    """
    git = ["git", "-c", "user.name=tests", "-c", "user.email=tests@localhost"]
    if not (work_tree / ".git").exists():
        subprocess.run(git + ["init", "--quiet", f"--initial-branch={branch}"], cwd=work_tree, check=True)
    subprocess.run(git + ["add", "--all"], cwd=work_tree, check=True)
    subprocess.run(git + ["commit", "--quiet", "--allow-empty", "--no-verify", "-m", message],
                   cwd=work_tree, check=True)
    if not bare.exists():
        subprocess.run(["git", "init", "--quiet", "--bare", str(bare)], check=True)
    subprocess.run(git + ["push", "--quiet", "--force", str(bare), f"HEAD:refs/heads/{branch}"],
                   cwd=work_tree, check=True)
    subprocess.run(["git", "update-server-info"], cwd=bare, check=True)
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=work_tree, check=True,
                          capture_output=True, text=True).stdout.strip()
