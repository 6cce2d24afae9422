# SPDX-License-Identifier: Apache-2.0
"""Configuration: Trustee's shapes load, unknown keys are named, env overrides the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from kbs.settings import ConfigError, load_settings

TRUSTEE_V021 = """
[http_server]
sockets = ["0.0.0.0:8080"]
insecure_http = true
payload_request_size = 4

[attestation_token]
insecure_header_jwk = false
trusted_certs_paths = []

[attestation_service]
type = "coco_as_builtin"
timeout = 30

[attestation_service.attestation_token_broker]
duration_min = 5

[attestation_service.rvps_config]
type = "BuiltIn"

[attestation_service.verifier_config.dcap_verifier]
collateral_service = "https://sgx-dcap-server.cn-beijing.aliyuncs.com/sgx/certification/v4/"
tcb_update_type = "standard"

[admin]
authorization_mode = "AuthenticatedAuthorization"
[admin.authentication.bearer_jwt]
identity_providers = [{ issuer = "issuer", audience = "kbs", public_key_uri = "/etc/kbs/admin.pub" }]
[admin.authorization.regex_acl]
acls = [{ role = "admin", allowed_endpoints = "^/kbs/.+$" }]

[storage_backend]
storage_type = "LocalFs"
[storage_backend.backends.local_fs]
dir_path = "/opt/confidential-containers/storage"

[[plugins]]
name = "resource"
storage_backend_type = "kvstorage"
"""

LEGACY_PLUGINS = """
[http_server]
insecure_http = true

[[plugins]]
name = "resource"
type = "LocalFs"
dir_path = "/opt/trustee/kbs/repository"
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "kbs-config.toml"
    path.write_text(text)
    return path


def test_trustee_v021_config_loads(tmp_path: Path) -> None:
    settings = load_settings(_write(tmp_path, TRUSTEE_V021))
    assert settings.attestation_service.timeout == 30
    assert settings.http_server.payload_request_size == 4
    assert settings.admin is not None
    assert settings.admin.authorization_mode == "AuthenticatedAuthorization"
    assert settings.storage_backend is not None
    assert settings.storage_backend.storage_type == "LocalFs"
    assert settings.resource_plugin is not None
    assert settings.resource_plugin.storage_backend_type == "kvstorage"


def test_legacy_plugin_form_loads(tmp_path: Path) -> None:
    settings = load_settings(_write(tmp_path, LEGACY_PLUGINS))
    plugin = settings.resource_plugin
    assert plugin is not None
    assert plugin.storage_backend_type == "LocalFs"
    assert plugin.dir_path == Path("/opt/trustee/kbs/repository")


def test_storage_type_aliases(tmp_path: Path) -> None:
    text = '[storage_backend]\nstorage_type = "local_fs"\n'
    assert load_settings(_write(tmp_path, text)).storage_backend.storage_type == "LocalFs"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("bogus = 1\n", "bogus: unknown key"),
        ("[http_server]\nsocket = []\n", "http_server.socket: unknown key"),
        (
            "[attestation_service]\ntimeout_minutes = 3\n",
            "attestation_service.timeout_minutes: unknown key",
        ),
        (
            "[attestation_service.attestation_token_broker]\nduration = 3\n",
            "attestation_service.attestation_token_broker.duration: unknown key",
        ),
        ('[[plugins]]\nname = "resource"\nfoo = 1\n', "plugins.0.foo: unknown key"),
    ],
)
def test_unknown_keys_are_named(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_settings(_write(tmp_path, text))


def test_unsupported_values_are_explained(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="coco_as_grpc.*not supported"):
        load_settings(_write(tmp_path, '[attestation_service]\ntype = "coco_as_grpc"\n'))
    with pytest.raises(ConfigError, match="plugin 'nebula-ca' is not supported"):
        load_settings(_write(tmp_path, '[[plugins]]\nname = "nebula-ca"\n'))
    with pytest.raises(ConfigError, match="Redis.*not supported"):
        load_settings(_write(tmp_path, '[storage_backend]\nstorage_type = "Redis"\n'))


def test_production_refuses_sample_evidence(tmp_path: Path) -> None:
    text = "[attestation_service]\ninsecure_allow_sample_evidence = true\n"
    with pytest.raises(ConfigError, match="refused when environment"):
        load_settings(_write(tmp_path, text))
    ok = load_settings(_write(tmp_path, 'environment = "development"\n' + text))
    assert ok.attestation_service.insecure_allow_sample_evidence


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KBS_DATABASE__URL", "postgresql://u@db:5432/kbs")
    monkeypatch.setenv("KBS_ATTESTATION_SERVICE__TIMEOUT", "9")
    settings = load_settings(_write(tmp_path, TRUSTEE_V021))
    assert settings.database_url == "postgresql://u@db:5432/kbs"
    assert settings.attestation_service.timeout == 9


def test_config_file_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KBS_CONFIG_FILE", str(_write(tmp_path, LEGACY_PLUGINS)))
    assert load_settings().resource_plugin is not None


def test_bad_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(_write(tmp_path, "[http_server\n"))
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "absent.toml")


def test_https_needs_key_and_certificate(tmp_path: Path) -> None:
    settings = load_settings(_write(tmp_path, '[http_server]\nsockets = ["127.0.0.1:9"]\n'))
    with pytest.raises(ConfigError, match="HTTPS needs private_key and certificate"):
        settings.http_server.tls_files()


def test_postgres_kv_config_becomes_the_database(tmp_path: Path) -> None:
    text = """
[storage_backend]
storage_type = "Postgres"
[storage_backend.backends.postgres]
host = "db"
port = 5433
db = "kbs"
username = "kbs"
password = "pw"
"""
    assert load_settings(_write(tmp_path, text)).database_url == "postgresql://kbs:pw@db:5433/kbs"


def test_admin_forms_are_exclusive(tmp_path: Path) -> None:
    text = '[admin]\nauthorization_mode = "DenyAll"\ninsecure_api = true\n'
    with pytest.raises(ConfigError, match="use one admin configuration form"):
        load_settings(_write(tmp_path, text))


def test_acl_regex_must_be_anchored(tmp_path: Path) -> None:
    text = """
[admin]
authorization_mode = "AuthenticatedAuthorization"
[admin.authentication.bearer_jwt]
identity_providers = [{ public_key_uri = "/x.pub" }]
[admin.authorization.regex_acl]
acls = [{ role = "admin", allowed_endpoints = ".*" }]
"""
    with pytest.raises(ConfigError, match="must start with"):
        load_settings(_write(tmp_path, text))


ATTESTATION_SERVICE_API = """
[attestation_service.attestation_token_broker]
type = "Simple"
x5c_encoding = "base64"
[attestation_service.attestation_token_broker.simple_signer]
key_path = "/etc/kbs/as-rsa.key"
cert_path = "/etc/kbs/as-chain.pem"

[rate_limit]
requests_per_second = 5
burst = 10
max_clients = 100
"""


def test_attestation_service_api_keys(tmp_path: Path) -> None:
    path = tmp_path / "kbs.toml"
    path.write_text(ATTESTATION_SERVICE_API)
    settings = load_settings(path)
    broker = settings.attestation_service.attestation_token_broker
    assert broker.default_profile == "simple"
    assert broker.x5c_encoding == "base64"
    assert broker.simple_signer is not None
    assert broker.simple_signer.key_path == Path("/etc/kbs/as-rsa.key")
    assert (settings.rate_limit.requests_per_second, settings.rate_limit.burst) == (5, 10)
    assert settings.rate_limit.max_clients == 100
    defaults = load_settings(None)
    assert defaults.attestation_service.attestation_token_broker.default_profile == "ear"
    assert defaults.attestation_service.attestation_token_broker.x5c_encoding == "base64url"
    assert defaults.rate_limit.enabled is True


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[rate_limit]\nburst = 0\n", "rate_limit.burst"),
        ("[rate_limit]\nper_minute = 3\n", "rate_limit.per_minute: unknown key"),
        (
            '[attestation_service.attestation_token_broker]\nx5c_encoding = "pem"\n',
            "x5c_encoding",
        ),
        ('[attestation_service.attestation_token_broker]\ntype = "OIDC"\n', "type"),
    ],
)
def test_attestation_service_api_key_errors(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "kbs.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_settings(path)


def test_limit_keys(tmp_path: Path) -> None:
    path = tmp_path / "kbs.toml"
    path.write_text(
        "[http_server]\n"
        'trusted_proxies = ["10.0.0.0/8", "192.168.1.7", "2001:db8::/32"]\n'
        "request_header_size = 64\n"
        "request_header_timeout_s = 2.5\n"
        "[attestation_service]\n"
        "max_unattested_sessions = 500\n"
        "[database]\n"
        "statement_timeout_s = 7.5\n"
    )
    settings = load_settings(path)
    assert settings.http_server.trusted_proxies == ["10.0.0.0/8", "192.168.1.7", "2001:db8::/32"]
    assert settings.http_server.request_header_size == 64
    assert settings.http_server.request_header_timeout_s == 2.5
    assert settings.attestation_service.max_unattested_sessions == 500
    assert settings.database.statement_timeout_s == 7.5
    defaults = load_settings(None)
    assert defaults.http_server.trusted_proxies == []
    assert defaults.http_server.request_header_size == 128
    assert defaults.attestation_service.max_unattested_sessions == 100_000


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[http_server]\ntrusted_proxies = ["alb.internal"]\n', "not an address or CIDR"),
        ('[http_server]\ntrusted_proxies = ["10.0.0.0/33"]\n', "not an address or CIDR"),
        ("[http_server]\nrequest_header_size = 4\n", "request_header_size"),
        ("[http_server]\nrequest_header_timeout_s = 0\n", "request_header_timeout_s"),
        ("[attestation_service]\nmax_unattested_sessions = 0\n", "max_unattested_sessions"),
        ("[database]\nstatement_timeout_s = 0\n", "statement_timeout_s"),
    ],
)
def test_limit_key_errors(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "kbs.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_settings(path)
