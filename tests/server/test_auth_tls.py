"""Bearer tokens, TLS and mutual TLS on both servers: real servers on 127.0.0.1, real gRPC secure channels,
httpx with client certificates, and certificates made by the tests (a CA, server and client certificates, and a
second CA whose certificates must be refused)."""

from __future__ import annotations

import datetime
import io
import ipaddress
import json
import logging
import os
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import given, settings
from hypothesis import strategies as st

from feedline.proto import Unauthenticated
from feedline.proto.v1 import CHANNEL_OPTIONS, feedline_pb2_grpc
from feedline.proto.v1 import feedline_pb2 as pb
from feedline.service import Processor
from feedline.service._cli import build_parser, config_from_args
from feedline.service.server import (
    ConfigError,
    JsonFormatter,
    ProcessorRegistry,
    Security,
    ServeConfig,
    ServingState,
    TlsFiles,
    TokenAuth,
)
from tests.support.inprocess import serve_in_process
from tests.support.rows import ROWS
from tests.support.servers import Served

TOKEN = "s3cret-token-for-tests"

# --- certificates ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    """PEM files: a CA, a server certificate for 127.0.0.1/localhost, a client, and a client of another CA."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_cert: Path
    rogue_key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(
    subject: str,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
    *,
    usage: x509.ObjectIdentifier | None = None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    issuer_name, issuer_key = issuer or (_name(subject), key)
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if usage == ExtendedKeyUsageOID.SERVER_AUTH:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256()), key


def _write(directory: Path, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> tuple[Path, Path]:
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca, ca_key = _certificate("feedline test CA", None)
    other_ca, other_key = _certificate("another CA", None)
    server = _certificate("localhost", (ca.subject, ca_key), usage=ExtendedKeyUsageOID.SERVER_AUTH)
    client = _certificate("trainer", (ca.subject, ca_key), usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    rogue = _certificate("intruder", (other_ca.subject, other_key), usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    ca_path, _ = _write(directory, "ca", ca, ca_key)
    return Pki(
        ca_path,
        *_write(directory, "server", *server),
        *_write(directory, "client", *client),
        *_write(directory, "rogue", *rogue),
    )


# --- tokens and configuration ---------------------------------------------------------------------------------


def test_token_check() -> None:
    auth = TokenAuth(["old-token", TOKEN])
    assert auth.accepts(f"Bearer {TOKEN}") and auth.accepts("bearer old-token") and auth.accepts(f"BEARER  {TOKEN} ")
    for value in (None, "", TOKEN, f"Basic {TOKEN}", f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", "Bearer "):
        assert not auth.accepts(value), value
    with pytest.raises(ConfigError):
        TokenAuth([])


@settings(max_examples=200, deadline=None)
@given(accepted=st.text(min_size=1, max_size=40).map(str.strip).filter(bool), presented=st.text(max_size=40))
def test_a_token_is_accepted_exactly_when_it_matches(accepted: str, presented: str) -> None:
    assert TokenAuth([accepted]).accepts(f"Bearer {presented}") == (presented.strip() == accepted)


def test_security_from_flags_environment_and_token_file(
    tmp_path: Path, pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("new-token\n\n  old-token  \n")
    for key in [k for k in os.environ if k.startswith("FEEDLINE_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("FEEDLINE_TLS_CLIENT_CA", str(pki.ca))
    args = build_parser().parse_args(["serve", *_secure_serve_args(pki, tokens)])
    config = config_from_args(args)
    assert (config.tls_cert, config.tls_key, config.tls_client_ca) == (pki.server_cert, pki.server_key, pki.ca)
    security = Security.from_config(config, env={"FEEDLINE_AUTH_TOKEN": TOKEN})
    assert security.auth is not None and security.tls == TlsFiles(pki.server_cert, pki.server_key, pki.ca)
    assert all(security.auth.accepts(f"Bearer {t}") for t in (TOKEN, "new-token", "old-token"))
    assert security.uvicorn_options()["ssl_cert_reqs"] == ssl.CERT_REQUIRED
    assert Security.from_config(ServeConfig(), env={}) == Security()


@pytest.mark.parametrize(
    "problem",
    [
        "empty token file",
        "missing token file",
        "cert without key",
        "client CA without cert",
        "key of another certificate",
        "not PEM",
    ],
)
def test_bad_security_settings_stop_the_server(problem: str, tmp_path: Path, pki: Pki) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    empty = tmp_path / "empty"
    empty.write_text("\n \n")
    config = {
        "empty token file": ServeConfig(auth_token_file=empty),
        "missing token file": ServeConfig(auth_token_file=tmp_path / "absent"),
        "cert without key": ServeConfig(tls_cert=pki.server_cert),
        "client CA without cert": ServeConfig(tls_client_ca=pki.ca),
        "key of another certificate": ServeConfig(tls_cert=pki.server_cert, tls_key=pki.client_key),
        "not PEM": ServeConfig(tls_cert=pki.server_cert, tls_key=pki.server_key, tls_client_ca=junk),
    }[problem]
    with pytest.raises(ConfigError):
        Security.from_config(config, env={})


# --- gRPC -----------------------------------------------------------------------------------------------------


@contextmanager
def grpc_target(processor: Processor, security: Security) -> Iterator[str]:
    """A started gRPC server on 127.0.0.1 enforcing ``security``; yields its address."""
    state = ServingState(ProcessorRegistry.of(processor))
    with serve_in_process(state, grpc_options={"auth": security.auth, "tls": security.tls}) as served:
        yield str(served.grpc_target)


def _channel_credentials(pki: Pki, client: str | None = None) -> grpc.ChannelCredentials:
    chain = (
        None
        if client is None
        else (getattr(pki, f"{client}_key").read_bytes(), getattr(pki, f"{client}_cert").read_bytes())
    )
    return grpc.ssl_channel_credentials(pki.ca.read_bytes(), *(chain or (None, None)))


def _list_processors(channel: grpc.Channel, token: str | None = None) -> pb.ListProcessorsResponse:
    metadata = (("authorization", f"Bearer {token}"),) if token else None
    return feedline_pb2_grpc.FeedlineStub(channel).ListProcessors(
        pb.ListProcessorsRequest(), timeout=10, metadata=metadata
    )


def _health(channel: grpc.Channel) -> int:
    request = health_pb2.HealthCheckRequest(service="")
    return health_pb2_grpc.HealthStub(channel).Check(request, timeout=10).status


def _unauthenticated(call: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    return info.value


def test_grpc_calls_need_the_token_and_health_checks_do_not(qwen_processor: Processor) -> None:
    from feedline.client._connection import map_rpc_error

    with (
        grpc_target(qwen_processor, Security(auth=TokenAuth([TOKEN]))) as target,
        grpc.insecure_channel(target, options=CHANNEL_OPTIONS) as channel,
    ):
        stub = feedline_pb2_grpc.FeedlineStub(channel)
        error = _unauthenticated(lambda: _list_processors(channel))
        assert isinstance(map_rpc_error(error), Unauthenticated)
        _unauthenticated(lambda: _list_processors(channel, "wrong"))
        request = pb.CollateRequest(samples=[json.dumps(ROWS[0]).encode()])
        _unauthenticated(lambda: list(stub.CollateStream(iter([request]), timeout=10)))
        _unauthenticated(lambda: list(stub.StreamDataset(pb.StreamDatasetRequest(), timeout=10)))
        assert _list_processors(channel, TOKEN).processors[0].name == qwen_processor.name
        assert _health(channel) == health_pb2.HealthCheckResponse.SERVING


def test_grpc_refusals_are_logged_with_the_request_id(qwen_processor: Processor) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("feedline.service.auth")
    logger.addHandler(handler)
    try:
        with (
            grpc_target(qwen_processor, Security(auth=TokenAuth([TOKEN]))) as target,
            grpc.insecure_channel(target) as channel,
        ):
            stub = feedline_pb2_grpc.FeedlineStub(channel)
            _unauthenticated(
                lambda: stub.ListProcessors(
                    pb.ListProcessorsRequest(), timeout=10, metadata=(("x-request-id", "trace-42"),)
                )
            )
    finally:
        logger.removeHandler(handler)
    (line,) = [json.loads(x) for x in stream.getvalue().splitlines()]
    assert (line["msg"], line["request_id"], line["method"]) == (
        "unauthenticated",
        "trace-42",
        "/feedline.v1.Feedline/ListProcessors",
    )


def test_grpc_over_tls(qwen_processor: Processor, pki: Pki) -> None:
    with grpc_target(qwen_processor, Security(tls=TlsFiles(pki.server_cert, pki.server_key))) as target:
        with grpc.secure_channel(target, _channel_credentials(pki)) as channel:
            assert _list_processors(channel).processors[0].fingerprint == qwen_processor.fingerprint
        with grpc.insecure_channel(target) as plain, pytest.raises(grpc.RpcError) as info:
            _list_processors(plain)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_grpc_mutual_tls_with_a_token_serves_the_real_client(qwen_processor: Processor, pki: Pki) -> None:
    from feedline.client import RemoteCollate

    security = Security(auth=TokenAuth([TOKEN]), tls=TlsFiles(pki.server_cert, pki.server_key, pki.ca))
    with grpc_target(qwen_processor, security) as target:
        collate = RemoteCollate(
            target,
            qwen_processor.name,
            credentials=_channel_credentials(pki, "client"),
            metadata=[("authorization", f"Bearer {TOKEN}")],
        )
        batch = collate(ROWS[:2])
        assert batch["input_ids"].shape[0] == 2
        for client in (None, "rogue"):
            with (
                grpc.secure_channel(target, _channel_credentials(pki, client)) as channel,
                pytest.raises(grpc.RpcError) as info,
            ):
                _list_processors(channel, TOKEN)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE, client


# --- HTTP -----------------------------------------------------------------------------------------------------


@contextmanager
def http_port(processor: Processor, security: Security) -> Iterator[int]:
    """A started uvicorn server on 127.0.0.1 enforcing ``security``; yields its port."""
    state = ServingState(ProcessorRegistry.of(processor))
    with serve_in_process(
        state,
        grpc=False,
        http=True,
        http_options={"auth": security.auth},
        uvicorn_options=security.uvicorn_options(),
    ) as served:
        yield int(str(served.http_url).rsplit(":", 1)[1])


def _client_context(pki: Pki, client: str | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca))
    if client is not None:
        context.load_cert_chain(getattr(pki, f"{client}_cert"), getattr(pki, f"{client}_key"))
    return context


def test_http_needs_the_token_except_for_probes_and_metrics(qwen_processor: Processor) -> None:
    with (
        http_port(qwen_processor, Security(auth=TokenAuth([TOKEN]))) as port,
        httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client,
    ):
        for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": TOKEN}):
            refused = client.get("/v1/processors", headers=headers)
            assert refused.status_code == 401, headers
            assert refused.json()["error"]["kind"] == "unauthenticated"
            assert refused.headers["www-authenticate"].startswith("Bearer") and refused.headers["x-request-id"]
        assert client.post("/v1/collate", json={"samples": ROWS[:1]}).status_code == 401
        for path in ("/healthz", "/readyz", "/metrics"):
            assert client.get(path).status_code == 200, path
        authorized = {"authorization": f"Bearer {TOKEN}"}
        assert client.get("/v1/processors", headers=authorized).status_code == 200
        collated = client.post("/v1/collate", json={"samples": ROWS[:2]}, headers=authorized)
        assert collated.status_code == 200 and len(collated.json()["tensors"]["input_ids"]) == 2
        assert 'feedline_errors_total{kind="unauthenticated",transport="http"}' in client.get("/metrics").text


def test_http_over_tls(qwen_processor: Processor, pki: Pki) -> None:
    with http_port(qwen_processor, Security(tls=TlsFiles(pki.server_cert, pki.server_key))) as port:
        with httpx.Client(verify=_client_context(pki), timeout=30) as client:
            assert client.get(f"https://127.0.0.1:{port}/v1/processors").status_code == 200
        with httpx.Client(timeout=30) as client, pytest.raises(httpx.TransportError):
            client.get(f"http://127.0.0.1:{port}/healthz")


def test_http_mutual_tls(qwen_processor: Processor, pki: Pki) -> None:
    with http_port(qwen_processor, Security(tls=TlsFiles(pki.server_cert, pki.server_key, pki.ca))) as port:
        with httpx.Client(verify=_client_context(pki, "client"), timeout=30) as client:
            assert client.get(f"https://127.0.0.1:{port}/readyz").status_code == 200
        for intruder in (None, "rogue"):
            with (
                httpx.Client(verify=_client_context(pki, intruder), timeout=30) as client,
                pytest.raises(httpx.TransportError),
            ):
                client.get(f"https://127.0.0.1:{port}/readyz")


HEALTHCHECK = Path(__file__).resolve().parents[2] / "deploy" / "docker" / "healthcheck.py"


def _healthcheck(port: int, **files: Path) -> int:
    env = {"FEEDLINE_HTTP_PORT": str(port), **{f"FEEDLINE_{k.upper()}": str(v) for k, v in files.items()}}
    return subprocess.run(
        [sys.executable, str(HEALTHCHECK)], env=env, timeout=30, check=False, capture_output=True
    ).returncode


def test_container_health_check_over_tls_and_mutual_tls(qwen_processor: Processor, pki: Pki) -> None:
    with http_port(qwen_processor, Security(tls=TlsFiles(pki.server_cert, pki.server_key))) as port:
        assert _healthcheck(port, tls_cert=pki.server_cert, tls_key=pki.server_key) == 0
        assert _healthcheck(port) == 1  # plain HTTP to a TLS port
    with http_port(qwen_processor, Security(tls=TlsFiles(pki.server_cert, pki.server_key, pki.ca))) as port:
        assert _healthcheck(port, tls_cert=pki.client_cert, tls_key=pki.client_key, tls_client_ca=pki.ca) == 0
        # a certificate for server authentication only is refused as a client certificate
        assert _healthcheck(port, tls_cert=pki.server_cert, tls_key=pki.server_key, tls_client_ca=pki.ca) == 1


# --- `feedline serve` end to end ------------------------------------------------------------------------------


def test_serve_with_mutual_tls_and_a_token_file(pki: Pki, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{TOKEN}\n")
    served = Served(
        "--grace-period",
        "5",
        *_secure_serve_args(pki, tokens),
        wait_ready=False,
        env={"FEEDLINE_TLS_CLIENT_CA": str(pki.ca)},
    )
    try:
        security = next(r for r in served.logs if r.get("msg") == "security")
        assert (security["auth"], security["tls"], security["mutual_tls"]) == (True, True, True)
        with httpx.Client(verify=_client_context(pki, "client"), timeout=30) as client:
            assert client.get(f"https://127.0.0.1:{served.http_port}/v1/processors").status_code == 401
            deadline = time.monotonic() + 60
            while client.get(f"https://127.0.0.1:{served.http_port}/readyz").status_code != 200:
                assert time.monotonic() < deadline, "the TLS server never became ready"
                time.sleep(0.1)
        with grpc.secure_channel(f"127.0.0.1:{served.grpc_port}", _channel_credentials(pki, "client")) as ch:
            assert _list_processors(ch, TOKEN).processors[0].name == "qwen2.5"
            _unauthenticated(lambda: _list_processors(ch))
        served.proc.terminate()
        assert served.proc.wait(30) == 0
    finally:
        served.close()


def _secure_serve_args(pki: Pki, tokens: Path) -> list[str]:
    """`feedline serve` flags for a bearer-token file and the test PKI's server certificate."""
    return ["--auth-token-file", str(tokens), "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key)]
