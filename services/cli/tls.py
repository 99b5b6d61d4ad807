"""`loupe tls-proxy`: TLS in front of the service, terminated by nginx (`grpc_pass`).

The gRPC port speaks plaintext only (on 127.0.0.1 by default, `grpc.host`). The recipe: nginx
listens for TLS on the outside (default 0.0.0.0:9443) and passes calls to the plaintext port
on 127.0.0.1, which stays off the network (the default host; otherwise the host's firewall,
or a container that publishes only the TLS port).

    loupe tls-proxy --cert server.pem --key server.key                 print the nginx config
    loupe tls-proxy --cert ... --key ... --client-ca ca.pem --run       run nginx (foreground)

With `--client-ca`, nginx asks every caller for a certificate signed by that CA (mutual TLS);
the Python client sends one with `cert_file`/`key_file` (`loupe --cert --key`). API keys still
travel in the metadata, now encrypted.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from encoders.common.errors import InvalidInput
from services.config import RequestLimits

# Every value a user gives reaches the template through `render`, which checks it: addresses
# are parsed (no nginx syntax fits in one), paths are refused if they hold a character that
# could end or escape nginx's quoted string, and are written quoted (spaces are fine then).
NGINX_TEMPLATE = """\
# nginx in front of Loupe's gRPC port (written by `loupe tls-proxy`).
worker_processes 1;
pid "{run}/nginx.pid";
error_log "{run}/error.log" warn;
events {{ worker_connections 1024; }}

http {{
    access_log off;
    client_body_temp_path "{run}/body";
    proxy_temp_path "{run}/proxy";
    fastcgi_temp_path "{run}/fastcgi";
    uwsgi_temp_path "{run}/uwsgi";
    scgi_temp_path "{run}/scgi";
    # The service's own cap (limits.max_request_bytes) decides; nginx must not cut below it.
    client_max_body_size {max_body};

    server {{
        listen {listen} ssl http2;
        ssl_certificate "{cert}";
        ssl_certificate_key "{key}";
        ssl_protocols TLSv1.2 TLSv1.3;
        # TLS 1.2: forward secret AEAD suites only (Mozilla "intermediate" without DHE); TLS 1.3
        # suites are all of that kind and are not set here. Every suite left is strong, so the
        # client's order (which knows whether it has AES hardware) is as good as ours.
        ssl_ciphers {ciphers};
        ssl_prefer_server_ciphers off;
        ssl_session_cache shared:loupe_tls:1m;
{client_ca}
        location / {{
            grpc_pass grpc://{upstream};
            # Ask, audio and batches of images can take minutes.
            grpc_read_timeout 600s;
            grpc_send_timeout 600s;
            grpc_set_header x-forwarded-for $remote_addr;
        }}
    }}
}}
"""
CLIENT_CA = """\
        ssl_client_certificate "{ca}";
        ssl_verify_client on;
        ssl_verify_depth 2;
"""

TLS12_CIPHERS = ":".join(
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
    )
)
# Inside nginx's double quotes these would end the string, start a variable ($: ssl_certificate
# takes variables), escape, or end the directive; single quotes and braces are refused as well
# so that a path never looks like config to a human reading it either.
PATH_FORBIDDEN = set("\"'`;{}$\\")
# One DNS label (RFC 1123): letters, digits and inner hyphens, at most 63 characters.
DNS_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cert", required=True, help="server certificate chain (PEM)")
    p.add_argument("--key", required=True, help="its private key (PEM)")
    p.add_argument("--client-ca", default=None, help="require client certificates signed by this CA (PEM)")
    p.add_argument("--listen", default="0.0.0.0:9443", help="TLS address (default: 0.0.0.0:9443, every interface)")
    p.add_argument(
        "--upstream", default="127.0.0.1:9000", help="the service's plaintext gRPC port (default: 127.0.0.1:9000)"
    )
    p.add_argument("--run", action="store_true", help="run nginx in the foreground instead of printing the config")
    p.add_argument("--run-dir", default=None, help="nginx's pid, temp files and log (default: a new temp folder)")
    p.add_argument("--nginx", default=shutil.which("nginx") or "/usr/sbin/nginx", help="the nginx binary")


def render(
    *,
    cert: str,
    key: str,
    listen: str,
    upstream: str,
    run_dir: str,
    client_ca: str | None = None,
    max_body: int = RequestLimits().max_request_bytes,
) -> str:
    """The nginx config; InvalidInput naming the option whose value is unreadable or unsafe."""
    files = {"--cert": cert, "--key": key} | ({"--client-ca": client_ca} if client_ca else {})
    for flag, path in files.items():
        # Unsafe first: a path made to inject config is named as such, whether it exists or not.
        safe_path(flag, path)
        if not os.access(path, os.R_OK):
            raise InvalidInput(f"{flag} {path}: no such readable file", field=flag)
    # The resolved path is what nginx reads, so that is the one checked (a symlink may differ).
    absolute = {flag: safe_path(flag, path, str(Path(path).resolve())) for flag, path in files.items()}
    return NGINX_TEMPLATE.format(
        run=safe_path("--run-dir", run_dir),
        max_body=int(max_body),
        listen=address("--listen", listen, bare_port=True),
        cert=absolute["--cert"],
        key=absolute["--key"],
        ciphers=TLS12_CIPHERS,
        client_ca=CLIENT_CA.format(ca=absolute["--client-ca"]) if client_ca else "",
        upstream=address("--upstream", upstream, bare_port=False),
    )


def safe_path(flag: str, given: str, path: str | None = None) -> str:
    """`path` (default: `given`) if nginx can hold it in double quotes as plain text."""
    path = given if path is None else path
    for char in path:
        # Spaces are fine inside the quotes; tabs, newlines, other control characters and
        # Unicode separators are not (isprintable() is False for each, True for " ").
        if char in PATH_FORBIDDEN or not char.isprintable():
            shown = repr(given) if path == given else f"{given!r} (resolved: {path!r})"
            raise InvalidInput(
                f"{flag} {shown}: the path holds {char!r}, which cannot be written safely into nginx's "
                "config; move or rename the file (or folder) to a path without quotes, `;{}$\\` "
                "or control characters",
                field=flag,
            )
    return path


def address(flag: str, text: str, *, bare_port: bool) -> str:
    """`text` as nginx should see it: PORT (where `bare_port`), HOST:PORT or [IPv6]:PORT, with
    HOST an IPv4 address or a DNS name; InvalidInput naming `flag` otherwise."""
    example = "9443, 0.0.0.0:9443 or [::]:9443" if bare_port else "127.0.0.1:9000, localhost:9000 or [::1]:9000"
    if bare_port and text.isascii() and text.isdigit():
        return str(_port(flag, text, example))
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise InvalidInput(f"{flag} {text!r}: expected [IPv6]:PORT, e.g. {example}", field=flag)
        return f"[{_ipv6(flag, host, example)}]:{_port(flag, port, example)}"
    host, sep, port = text.rpartition(":")
    if not sep:
        forms = "PORT, HOST:PORT or [IPv6]:PORT" if bare_port else "HOST:PORT or [IPv6]:PORT"
        raise InvalidInput(f"{flag} {text!r}: expected {forms}, e.g. {example}", field=flag)
    if ":" in host:
        raise InvalidInput(f"{flag} {text!r}: an IPv6 address goes in brackets, e.g. [{host}]:{port}", field=flag)
    return f"{_host(flag, host, example)}:{_port(flag, port, example)}"


def _port(flag: str, text: str, example: str) -> int:
    if not (text.isascii() and text.isdigit() and 1 <= int(text) <= 65535):
        raise InvalidInput(f"{flag}: the port {text!r} is not a number from 1 to 65535, e.g. {example}", field=flag)
    return int(text)


def _ipv6(flag: str, text: str, example: str) -> str:
    try:
        parsed = ipaddress.IPv6Address(text)
    except ValueError:
        parsed = None
    # A zone ("%eth0") is refused: it is free text, and nginx's listen does not take one.
    if parsed is None or parsed.scope_id is not None:
        raise InvalidInput(
            f"{flag}: {text!r} in brackets is not an IPv6 address (zones are not accepted), e.g. {example}",
            field=flag,
        )
    return str(parsed)


def _host(flag: str, text: str, example: str) -> str:
    """An IPv4 address or a DNS name (letters, digits, hyphens and dots; not all digits)."""
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        pass
    labels = text.split(".")
    # A name whose last label is all digits would be a mistyped IPv4 address (999.1.1.1).
    if len(text) <= 253 and all(DNS_LABEL.fullmatch(label) for label in labels) and not labels[-1].isdigit():
        return text
    raise InvalidInput(
        f"{flag}: the host {text!r} is neither an IPv4 address nor a DNS name (letters, digits, hyphens "
        f"and dots); an IPv6 address goes in brackets; e.g. {example}",
        field=flag,
    )


def run(args: argparse.Namespace) -> int:
    run_dir = args.run_dir or tempfile.mkdtemp(prefix="loupe-tls-")
    try:
        config = render(
            cert=args.cert,
            key=args.key,
            listen=args.listen,
            upstream=args.upstream,
            run_dir=run_dir,
            client_ca=args.client_ca,
        )
    except InvalidInput as exc:
        print(f"error: {exc.reason}", file=sys.stderr)
        return 2
    if not args.run:
        print(config, end="")
        return 0
    if not shutil.which(args.nginx):
        print(
            f"error: nginx not found ({args.nginx}); install it (Debian: apt-get install nginx-light)", file=sys.stderr
        )
        return 2
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    # Run as root, nginx's workers are "nobody": they must reach the temp folders it makes here.
    Path(run_dir).chmod(0o755)
    conf = Path(run_dir) / "nginx.conf"
    conf.write_text(config)
    check = subprocess.run([args.nginx, "-t", "-q", "-c", str(conf), "-p", run_dir], capture_output=True, text=True)
    if check.returncode != 0:
        print(f"error: nginx refused the config {conf}:\n{check.stderr.strip()}", file=sys.stderr)
        return 2
    print(f"loupe tls-proxy: TLS on {args.listen} -> {args.upstream} (nginx, config {conf})", flush=True)
    proc = subprocess.Popen([args.nginx, "-c", str(conf), "-p", run_dir, "-g", "daemon off;"])
    # nginx stops gracefully on SIGQUIT, at once on SIGTERM; pass ours on.
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda signum, frame: proc.send_signal(signal.SIGQUIT))
    return proc.wait()
