"""`loupe tls-proxy`'s nginx config (services.cli.tls.render): every user value is checked
before it reaches the template, so none can add directives; paths are written quoted; the
TLS 1.2 cipher list is forward secret AEAD only. With nginx installed, `nginx -t` accepts it."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from encoders.common.errors import InvalidInput
from services.cli import tls


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    out = {}
    for name in ("cert.pem", "key.pem", "ca.pem"):
        (tmp_path / name).write_text("pem")
        out[name] = tmp_path / name
    return out


def _render(files, **overrides) -> str:
    args = {
        "cert": str(files["cert.pem"]),
        "key": str(files["key.pem"]),
        "listen": "0.0.0.0:9443",
        "upstream": "127.0.0.1:9000",
        "run_dir": "/run/loupe-tls",
    }
    return tls.render(**(args | overrides))


def _directives(conf: str) -> list[str]:
    """Each directive's name, in order, outside comments: what nginx would act on."""
    text = re.sub(r"#[^\n]*", "", conf)
    return re.findall(r"(?:^|[;{}])\s*([a-z_0-9]+)", text)


def test_a_normal_config_renders_with_quoted_paths_and_a_modern_cipher_list(files, tmp_path) -> None:
    conf = _render(files, client_ca=str(files["ca.pem"]))
    assert "listen 0.0.0.0:9443 ssl http2;" in conf
    assert "grpc_pass grpc://127.0.0.1:9000;" in conf
    assert f'ssl_certificate "{files["cert.pem"]}";' in conf
    assert f'ssl_certificate_key "{files["key.pem"]}";' in conf
    assert f'ssl_client_certificate "{files["ca.pem"]}";' in conf and "ssl_verify_client on;" in conf
    assert 'pid "/run/loupe-tls/nginx.pid";' in conf and 'error_log "/run/loupe-tls/error.log" warn;' in conf
    assert "ssl_protocols TLSv1.2 TLSv1.3;" in conf and "ssl_prefer_server_ciphers off;" in conf
    [ciphers] = re.findall(r"ssl_ciphers (\S+);", conf)
    for suite in ciphers.split(":"):
        assert suite.startswith("ECDHE-") and ("GCM" in suite or "CHACHA20-POLY1305" in suite), suite
    # A path with a space is fine once quoted.
    spaced = tmp_path / "my certs"
    spaced.mkdir()
    (spaced / "c.pem").write_text("pem")
    assert f'ssl_certificate "{spaced / "c.pem"}";' in _render(files, cert=str(spaced / "c.pem"))


@pytest.mark.parametrize(
    ("listen", "rendered"),
    [
        ("9443", "listen 9443 ssl"),
        ("127.0.0.1:443", "listen 127.0.0.1:443 ssl"),
        ("[::]:9443", "listen [::]:9443 ssl"),
        ("[2001:DB8::1]:9443", "listen [2001:db8::1]:9443 ssl"),
        ("proxy-1.example.org:9443", "listen proxy-1.example.org:9443 ssl"),
        ("localhost:65535", "listen localhost:65535 ssl"),
    ],
)
def test_listen_takes_a_port_host_port_or_bracketed_ipv6(files, listen, rendered) -> None:
    assert rendered in _render(files, listen=listen)


@pytest.mark.parametrize(
    ("upstream", "rendered"), [("localhost:9000", "grpc://localhost:9000;"), ("[::1]:9000", "grpc://[::1]:9000;")]
)
def test_upstream_takes_host_port_or_bracketed_ipv6(files, upstream, rendered) -> None:
    assert rendered in _render(files, upstream=upstream)


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("9443; include /etc/passwd", "port"),
        ("0.0.0.0:9443 ssl; } server { listen 80", "port"),
        ("0.0.0.0:9443\ninclude /etc/passwd;", "port"),
        ("evil;host:9443", "host"),
        ("$host:9443", "host"),
        ("a{b}:9443", "host"),
        ('"q":9443', "host"),
        ("0.0.0.0:0", "port"),
        ("0.0.0.0:65536", "port"),
        ("0.0.0.0:-1", "port"),
        ("0.0.0.0:", "port"),
        ("999.1.1.1:9443", "host"),
        ("-bad.example:9443", "host"),
        ("::1:9443", "brackets"),
        ("[::1%eth0]:9443", "IPv6"),
        ("[not-v6]:9443", "IPv6"),
        ("[::1]9443", "IPv6"),
        ("example.org", "HOST:PORT"),
    ],
)
@pytest.mark.parametrize("flag", ["--listen", "--upstream"])
def test_an_address_with_anything_but_host_and_port_is_refused(files, flag, value, says) -> None:
    with pytest.raises(InvalidInput) as err:
        _render(files, **{flag.lstrip("-"): value})
    assert err.value.field == flag and flag in err.value.reason and says.lower() in err.value.reason.lower()
    assert "e.g." in err.value.reason  # it shows what would do


def test_the_upstream_needs_a_host() -> None:
    with pytest.raises(InvalidInput, match="--upstream '9000': expected HOST:PORT"):
        tls.address("--upstream", "9000", bare_port=False)


@pytest.mark.parametrize("bad", [";", "{", "}", '"', "'", "$", "\\", "\n", "\r", "\t", "\x1b", "\u2028"])
@pytest.mark.parametrize("flag", ["--cert", "--key", "--client-ca"])
def test_a_path_that_could_break_out_of_its_quotes_is_refused_naming_the_option(tmp_path, files, flag, bad) -> None:
    path = tmp_path / f"evil{bad}name.pem"
    path.write_text("pem")  # it exists and is readable: only its name is refused
    arg = {"--cert": "cert", "--key": "key", "--client-ca": "client_ca"}[flag]
    with pytest.raises(InvalidInput) as err:
        _render(files, **{arg: str(path)})
    assert err.value.field == flag and err.value.reason.startswith(f"{flag} ") and repr(bad) in err.value.reason


def test_a_path_that_is_refused_need_not_exist_and_the_run_dir_is_checked_too(files) -> None:
    with pytest.raises(InvalidInput, match=r"--cert .*';'"):
        _render(files, cert="/tmp/x.pem; include /etc/passwd")
    with pytest.raises(InvalidInput) as err:
        _render(files, run_dir="/tmp/run;\nuser root")
    assert err.value.field == "--run-dir"


def test_a_symlink_is_checked_where_it_leads(tmp_path, files) -> None:
    target = tmp_path / "real;name.pem"
    target.write_text("pem")
    link = tmp_path / "innocent.pem"
    link.symlink_to(target)
    with pytest.raises(InvalidInput, match="resolved"):
        _render(files, key=str(link))


def test_injected_values_add_no_directive(files) -> None:
    """The directives of a normal config are all there is: nothing a value could add."""
    expected = _directives(_render(files))
    assert "include" not in expected and _directives(_render(files, listen="[::]:1", upstream="h:2")) == expected


NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)


@pytest.mark.skipif(NGINX is None, reason="nginx is not installed (.ci/run installs nginx-light)")
def test_nginx_accepts_the_rendered_config(tmp_path) -> None:
    from tests.fixtures.tls import Authority

    ca = Authority(tmp_path)
    cert, key = ca.issue("server", server=True)
    run_dir = tmp_path / "run dir"
    run_dir.mkdir()
    conf = run_dir / "nginx.conf"
    config = tls.render(
        cert=str(cert),
        key=str(key),
        client_ca=str(ca.pem),
        listen="127.0.0.1:1",
        upstream="[::1]:2",
        run_dir=str(run_dir),
    )
    conf.write_text(config)
    check = subprocess.run([NGINX, "-t", "-c", str(conf), "-p", str(run_dir)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
