# SPDX-License-Identifier: Apache-2.0
"""The Helm chart (deploy/helm/trustee), rendered by Helm's own Go SDK, with no cluster.

``helm-python-sdk`` binds Helm v4's Go SDK (a shared library in the wheel): chart
loading, ``values.schema.json``, ``--set``/``--set-file`` parsing, rendering and lint are
Helm's code, not a re-implementation. Every manifest is checked against the Kubernetes API
JSON schemas that ship in ``kubernetes-validate`` (strict: unknown fields are errors).
The server configuration the chart renders is parsed by our own ``load_settings``.
"""

from __future__ import annotations

import base64
import dataclasses
import itertools
import os
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from kbs.cli import build_parser
from kbs.clock import SystemClock
from kbs.settings import KbsSettings, ResourcePluginSettings, load_settings
from storage_backends.aliyun_kms import AliyunKmsBackend, AliyunKmsSettings
from storage_backends.base import ResourceDesc
from support.kms_emulator import KmsEmulator
from support.kms_fixtures import make_client_key, make_tls_pki, write_client_key_files

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy/helm/trustee"
SCENARIOS = sorted((CHART / "scenarios").glob("*.yaml"))
RELEASE = "trustee"
NAMESPACE = "default"
#: The chart's kubeVersion floor, and a current ACK version.
KUBE_VERSIONS = ("1.25.0", "1.33.0")
#: The only lint finding allowed: the project has no icon to point at.
LINT_ALLOWED = {"icon is recommended"}


@dataclasses.dataclass
class Rendered:
    """One `helm template` result: manifests by kind/name, NOTES, and the kbs.toml."""

    docs: list[dict[str, Any]]
    notes: str

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.docs if d["kind"] == kind]

    def one(self, kind: str, name: str | None = None) -> dict[str, Any]:
        found = [d for d in self.of_kind(kind) if name is None or d["metadata"]["name"] == name]
        assert len(found) == 1, (kind, name, [d["metadata"]["name"] for d in self.of_kind(kind)])
        return found[0]

    @property
    def config_text(self) -> str:
        secret = self.one("Secret", f"{RELEASE}-config")
        return base64.b64decode(secret["data"]["kbs.toml"]).decode()

    @property
    def config(self) -> dict[str, Any]:
        return tomllib.loads(self.config_text)

    @property
    def pod(self) -> dict[str, Any]:
        spec: dict[str, Any] = self.one("Deployment")["spec"]["template"]["spec"]
        return spec

    def container(self, name: str = "kbs") -> dict[str, Any]:
        pod = self.pod
        found = [c for c in pod["containers"] + pod.get("initContainers", []) if c["name"] == name]
        assert len(found) == 1
        return found[0]


def render(values: dict[str, Any]) -> Rendered:
    with helm.Chart.load(CHART) as chart:
        chart.validate_schema(values)
        manifests = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    docs = [
        doc
        for path, text in sorted(manifests.items())
        if path.endswith(".yaml")
        for doc in yaml.safe_load_all(text)
        if doc
    ]
    return Rendered(docs=docs, notes=manifests[f"{CHART.name}/templates/NOTES.txt"])


def scenario_values(path: Path) -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load(path.read_text()) or {}
    return values


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def helm_cli_values(sets: list[str], set_files: list[str]) -> dict[str, Any]:
    """Values as `helm install --set … --set-file …` builds them (Helm's strvals parser;
    --set is applied before --set-file, as in helm's values.Options)."""
    values: dict[str, Any] = {}
    for expression in sets:
        values = _deep_merge(values, helm.parse_set_string(expression))
    for expression in set_files:
        values = _deep_merge(values, helm.parse_set_file(expression))
    return values


#: Every scenario file plus the defaults (the users' command without --set).
CASES = [pytest.param({}, id="defaults")] + [
    pytest.param(scenario_values(p), id=p.stem) for p in SCENARIOS
]


def test_there_are_the_scenarios_the_issue_asks_for() -> None:
    names = {p.stem for p in SCENARIOS}
    assert {
        "file-single-replica",
        "kms-instance-gateway",
        "kms-accesskey",
        "kms-rrsa",
        "postgresql-ha",
    } <= names


# --------------------------------------------------------------------------- every scenario


@pytest.mark.parametrize("values", CASES)
def test_lint_is_clean(values: dict[str, Any]) -> None:
    report = helm.lint(CHART, values, strict=True, namespace=NAMESPACE)
    assert report["errors"] == []
    findings = [m["error"] for m in report["messages"] if m["error"] not in LINT_ALLOWED]
    assert findings == []


@pytest.mark.parametrize("values", CASES)
@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_every_manifest_validates_against_the_kubernetes_schema(
    values: dict[str, Any], kube_version: str
) -> None:
    rendered = render(values)
    assert rendered.docs
    for doc in rendered.docs:
        if doc["apiVersion"] in CUSTOM_RESOURCES:
            CUSTOM_RESOURCES[doc["apiVersion"]](doc)
            continue
        # Raises ValidationError (unknown field, wrong type) or SchemaNotFoundError (a
        # kind or apiVersion this Kubernetes version does not have).
        kubernetes_validate.validate(doc, kube_version, strict=True)


def _check_service_monitor(doc: dict[str, Any]) -> None:
    """The fields of monitoring.coreos.com/v1 ServiceMonitor we use (kubernetes-validate
    has the built-in APIs only)."""
    assert doc["kind"] == "ServiceMonitor"
    assert set(doc["spec"]) == {"selector", "namespaceSelector", "endpoints"}
    [endpoint] = doc["spec"]["endpoints"]
    assert endpoint["port"] == "http"
    assert endpoint["path"] == "/metrics"
    assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout", "scheme", "tlsConfig"}


#: Custom resources the chart can render, checked by hand.
CUSTOM_RESOURCES = {"monitoring.coreos.com/v1": _check_service_monitor}


def _config_for_load_settings(config: dict[str, Any]) -> tuple[dict[str, Any], set[str]]:
    """The rendered config, less the KMS keys the server's [[plugins]] model does not
    take yet (shared-gateway settings: issue 5 wires them); returns those keys."""
    known = set(ResourcePluginSettings.model_fields) | {"type"}
    pending: set[str] = set()
    for plugin in config.get("plugins", []):
        pending |= set(plugin) - known
        for key in pending:
            plugin.pop(key, None)
    return config, pending


def _load(config_text: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> KbsSettings:
    """``load_settings`` on the rendered file, as ``kbs serve --config`` does."""
    for name in list(os.environ):
        if name.startswith("KBS_"):
            monkeypatch.delenv(name)
    config, pending = _config_for_load_settings(tomllib.loads(config_text))
    kms_fields = {f.name for f in dataclasses.fields(AliyunKmsSettings)}
    assert pending <= kms_fields, f"keys neither the server nor the KMS backend knows: {pending}"
    if pending:
        return load_settings(None, overrides=config)
    path = tmp_path / "kbs.toml"
    path.write_text(config_text)
    return load_settings(path)


@pytest.mark.parametrize("values", CASES)
def test_rendered_config_is_accepted_by_the_server(
    values: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rendered = render(values)
    settings = _load(rendered.config_text, tmp_path, monkeypatch)
    assert settings.environment == "production"
    assert settings.insecure_settings() == ["http_server.insecure_http"]
    assert not settings.attestation_service.insecure_allow_sample_evidence
    assert settings.http_server.path_prefix == f"/{RELEASE}"
    assert settings.http_server.sockets == ["0.0.0.0:8080"]
    assert settings.data_dir == Path("/var/lib/trustee")
    # The pods migrate in their init container, not in the server.
    assert settings.database.migrate_on_start is False
    kms = values.get("kbs", {}).get("aliyunKms", {})
    plugin = settings.resource_plugin
    assert plugin is not None
    if kms.get("enabled"):
        assert plugin.storage_backend_type == "Aliyun"
        # The backend's own settings accept every KMS key the chart rendered.
        keys = {
            k: v
            for k, v in rendered.config["plugins"][0].items()
            if k not in ("name", "storage_backend_type")
        }
        AliyunKmsSettings(**keys)
    elif values.get("database"):
        assert plugin.storage_backend_type == "kvstorage"
    else:
        assert plugin.storage_backend_type == "LocalFs"
        assert plugin.dir_path == Path("/var/lib/trustee/repository")


@pytest.mark.parametrize("values", CASES)
def test_commands_are_ones_our_cli_takes(values: dict[str, Any]) -> None:
    rendered = render(values)
    parser = build_parser()
    for name, command in (("migrate", "migrate"), ("kbs", "serve")):
        container = rendered.container(name)
        assert container["command"] == ["kbs"]
        args = parser.parse_args(container["args"])
        assert args.command == command
        assert args.config == Path("/etc/trustee/config/kbs.toml")
        if command == "serve":
            assert args.log_format == values.get("log_format", "json")
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        assert mounts["/etc/trustee/config"]["readOnly"] is True
        assert "/var/lib/trustee" in mounts
        assert "/tmp" in mounts


@pytest.mark.parametrize("values", CASES)
def test_pods_are_locked_down(values: dict[str, Any]) -> None:
    rendered = render(values)
    pod = rendered.pod
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    for container in pod["containers"] + pod["initContainers"]:
        ctx = container["securityContext"]
        assert ctx["readOnlyRootFilesystem"] is True
        assert ctx["allowPrivilegeEscalation"] is False
        assert ctx["privileged"] is False
        assert ctx["capabilities"] == {"drop": ["ALL"]}
        assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}
        assert container["resources"]["requests"]
        assert container["resources"]["limits"]["memory"]
    kbs = rendered.container()
    assert kbs["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert kbs["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert kbs["startupProbe"]["httpGet"]["path"] == "/healthz"
    # Writable places are volumes, never the image.
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes["tmp"]


@pytest.mark.parametrize("values", CASES)
def test_no_configmaps_and_credentials_only_in_secrets(values: dict[str, Any]) -> None:
    rendered = render(values)
    assert rendered.of_kind("ConfigMap") == []
    kms = values.get("kbs", {}).get("aliyunKms", {})
    secrets = [
        str(v).strip()
        for v in (
            kms.get("clientKey"),
            kms.get("password"),
            kms.get("accessKeySecret"),
            values.get("database", {}).get("url"),
        )
        if v
    ]
    for doc in rendered.docs:
        if doc["kind"] == "Secret":
            continue
        text = yaml.safe_dump(doc)
        for secret in secrets:
            assert secret not in text, doc["kind"]


@pytest.mark.parametrize("values", CASES)
def test_ingress_routes_kbs_and_as_under_the_release_without_sticky_sessions(
    values: dict[str, Any],
) -> None:
    rendered = render(values)
    ingresses = rendered.of_kind("Ingress")
    names = {i["metadata"]["name"] for i in ingresses}
    assert "kbs-ingress" in names
    paths = []
    for ingress in ingresses:
        assert ingress["spec"]["ingressClassName"] == "alb"
        annotations = ingress["metadata"].get("annotations", {})
        assert not any("sticky" in key for key in annotations)
        assert annotations["alb.ingress.kubernetes.io/healthcheck-path"] == "/readyz"
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                assert path["backend"]["service"] == {"name": RELEASE, "port": {"number": 8080}}
                paths.append(
                    (path["path"], annotations.get("alb.ingress.kubernetes.io/rewrite-target"))
                )
    service = rendered.one("Service")
    assert service["spec"]["sessionAffinity"] == "None"
    if values.get("ingress", {}).get("albRewrite"):
        assert sorted(paths) == [
            ("/trustee/as(/|$)(.*)", "/as/${2}"),
            ("/trustee/kbs(/|$)(.*)", "/kbs/${2}"),
        ]
    else:
        assert sorted(paths) == [("/trustee/as", None), ("/trustee/kbs", None)]


def _alb_rewrite(path: str, pattern: str, target: str) -> str | None:
    """What the ALB does with use-regex + rewrite-target (capture groups into ${n})."""
    match = re.fullmatch(pattern, path)
    if match is None:
        return None
    return re.sub(r"\$\{(\d)\}", lambda m: match.group(int(m.group(1))), target)


def test_alb_rewrite_layout_lands_on_server_routes() -> None:
    """Both ALB layouts deliver a path the server routes to the same endpoint."""
    rendered = render({"ingress": {"albRewrite": True}})
    rules = {
        i["metadata"]["annotations"]["alb.ingress.kubernetes.io/rewrite-target"]: i["spec"][
            "rules"
        ][0]["http"]["paths"][0]["path"]
        for i in rendered.of_kind("Ingress")
    }
    kbs_pattern = rules["/kbs/${2}"]
    as_pattern = rules["/as/${2}"]
    assert _alb_rewrite("/trustee/kbs/v0/auth", kbs_pattern, "/kbs/${2}") == "/kbs/v0/auth"
    assert (
        _alb_rewrite("/trustee/kbs/v0/resource/default/aliyun/key", kbs_pattern, "/kbs/${2}")
        == "/kbs/v0/resource/default/aliyun/key"
    )
    assert _alb_rewrite("/trustee/as/attestation", as_pattern, "/as/${2}") == "/as/attestation"
    assert _alb_rewrite("/other/kbs/v0/auth", kbs_pattern, "/kbs/${2}") is None


# --------------------------------------------------------------------------- replicas


def test_users_command_without_a_database_is_one_replica_on_a_volume() -> None:
    rendered = render({})
    deployment = rendered.one("Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    pvc = rendered.one("PersistentVolumeClaim")
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    volumes = {v["name"]: v for v in rendered.pod["volumes"]}
    assert volumes["data"]["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    assert rendered.of_kind("PodDisruptionBudget") == []
    assert not any(e["name"] == "KBS_DATABASE__URL" for e in rendered.container()["env"])


@pytest.mark.parametrize(
    "database",
    [
        {"existingSecret": "kbs-db"},
        {"url": "postgresql://kbs:pw@pg.example:5432/kbs?sslmode=require"},
    ],
)
def test_postgresql_defaults_to_two_replicas_sharing_it(database: dict[str, str]) -> None:
    rendered = render({"database": database})
    deployment = rendered.one("Deployment")
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    assert rendered.of_kind("PersistentVolumeClaim") == []
    assert rendered.one("PodDisruptionBudget")["spec"]["minAvailable"] == 1
    assert rendered.pod["topologySpreadConstraints"]
    secret_name = database.get("existingSecret", f"{RELEASE}-database")
    for name in ("migrate", "kbs"):
        env = {e["name"]: e for e in rendered.container(name)["env"]}
        ref = env["KBS_DATABASE__URL"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": secret_name, "key": "url"}
    if "url" in database:
        stored = rendered.one("Secret", f"{RELEASE}-database")["data"]["url"]
        assert base64.b64decode(stored).decode() == database["url"]
    assert rendered.config["plugins"][0]["storage_backend_type"] == "kvstorage"


def test_database_url_from_the_environment_reaches_the_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The env var name the chart uses is the one the server reads."""
    rendered = render({"database": {"existingSecret": "kbs-db"}})
    settings_path = tmp_path / "kbs.toml"
    settings_path.write_text(rendered.config_text)
    env = {e["name"] for e in rendered.container()["env"]}
    assert "KBS_DATABASE__URL" in env
    monkeypatch.setenv("KBS_DATABASE__URL", "postgresql://kbs@db:5432/kbs")
    assert load_settings(settings_path).database_url == "postgresql://kbs@db:5432/kbs"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"kbs": {"replicaCount": 2}}, "kbs.replicaCount=2 needs PostgreSQL"),
        ({"kbs": {"autoscaling": {"enabled": True}}}, "autoscaling.enabled needs PostgreSQL"),
        (
            {"database": {"url": "sqlite:////var/lib/trustee/kbs.db"}},
            "at '/database/url'",  # values.schema.json stops it before the template
        ),
        (
            {"database": {"url": "postgresql://a@b/c", "existingSecret": "x"}},
            "not both",
        ),
        ({"kbs": {"aliyunKms": {"enabled": True}}}, "needs credentials"),
        (
            {"kbs": {"aliyunKms": {"enabled": True, "kmsInstanceId": "kst-1", "clientKey": "{}"}}},
            "needs all of kbs.aliyunKms.clientKey, password and certPem",
        ),
        (
            {
                "kbs": {
                    "aliyunKms": {
                        "enabled": True,
                        "clientKey": "{}",
                        "password": "p",
                        "certPem": "c",
                    }
                }
            },
            "needs kbs.aliyunKms.kmsInstanceId",
        ),
        (
            {"kbs": {"aliyunKms": {"kmsIntanceId": "kst-1", "kmsInstanceId": "kst-2"}}},
            "differ",
        ),
        (
            {
                "regionId": "cn-hangzhou",
                "kbs": {
                    "aliyunKms": {
                        "enabled": True,
                        "accessKeyExistingSecret": "ak",
                        "rrsa": {"enabled": True, "roleName": "r"},
                    }
                },
            },
            "AccessKey or RRSA",
        ),
        (
            {"kbs": {"aliyunKms": {"enabled": True, "accessKeyExistingSecret": "ak"}}},
            "needs regionId",
        ),
        (
            {"kbs": {"aliyunKms": {"enabled": True, "rrsa": {"enabled": True}}}},
            "needs rrsa.roleName",
        ),
        (
            {
                "database": {"existingSecret": "db"},
                "kbs": {
                    "resourceRepository": [
                        {"repoName": "a", "type": "b", "secretName": "c", "keys": ["k"]}
                    ]
                },
            },
            "resourceRepository",
        ),
    ],
)
def test_refuses_what_cannot_work_and_says_why(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmError, match=re.escape(message)):
        render(values)


@pytest.mark.parametrize(
    "values",
    [
        {"kbs": {"aliyunKms": {"kmsInstanceID": "kst-1"}}},  # wrong case: not a key we know
        {"kbs": {"replicaCount": 0}},
        {"kbs": {"image": {"digest": "latest"}}},
        {"ingress": {"pathPrefix": "no-slash"}},
        {"database": {"url": "mysql://x"}},
        {"kbs": {"trustedProxies": ["alb.example.com"]}},
        {"kbs": {"trustedProxies": "10.0.0.0/8"}},
        {"kbs": {"maxUnattestedSessions": 0}},
        {"unknown": 1},
    ],
)
def test_schema_rejects_bad_values(values: dict[str, Any]) -> None:
    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmValuesError):
        chart.validate_schema(values)


def test_limits_reach_the_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = _load(render({}).config_text, tmp_path, monkeypatch)
    assert defaults.http_server.trusted_proxies == []
    assert defaults.attestation_service.max_unattested_sessions == 100_000
    assert defaults.database.statement_timeout_s == 30
    rendered = render(
        {
            "kbs": {
                "trustedProxies": ["192.168.0.0/24", "2001:db8::/64"],
                "maxUnattestedSessions": 5000,
            },
            "database": {"statementTimeoutSeconds": 12.5},
        }
    )
    settings = _load(rendered.config_text, tmp_path, monkeypatch)
    assert settings.http_server.trusted_proxies == ["192.168.0.0/24", "2001:db8::/64"]
    assert settings.attestation_service.max_unattested_sessions == 5000
    assert settings.database.statement_timeout_s == 12.5


def test_autoscaling_with_postgresql() -> None:
    rendered = render(
        {"database": {"existingSecret": "db"}, "kbs": {"autoscaling": {"enabled": True}}}
    )
    hpa = rendered.one("HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == RELEASE
    assert "replicas" not in rendered.one("Deployment")["spec"]
    assert rendered.one("PodDisruptionBudget")


def test_service_monitor_selects_the_service_port() -> None:
    rendered = render(scenario_values(CHART / "scenarios/postgresql-ha.yaml"))
    monitor = rendered.one("ServiceMonitor")
    service = rendered.one("Service")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    assert [p["name"] for p in service["spec"]["ports"]] == ["http"]
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert render({}).of_kind("ServiceMonitor") == []


def test_network_policy_allows_dns_when_egress_is_restricted() -> None:
    rendered = render(scenario_values(CHART / "scenarios/postgresql-ha.yaml"))
    policy = rendered.one("NetworkPolicy")
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert {"port": 53, "protocol": "UDP"} in policy["spec"]["egress"][0]["ports"]
    assert rendered.one("Deployment")["spec"]["replicas"] == 3


# --------------------------------------------------------------------------- the users' command

#: The users' guide, verbatim apart from the file names' placeholders.
SEED_SETS = [
    "regionId=cn-hangzhou",
    "kbs.aliyunKms.enabled=true",
    "kbs.aliyunKms.kmsIntanceId={kst}",
]
SEED_SET_FILES = [
    "kbs.aliyunKms.clientKey={client_key}",
    "kbs.aliyunKms.password={password}",
    "kbs.aliyunKms.certPem={cert}",
]


@pytest.fixture
def seed_files(tmp_path: Path) -> dict[str, Any]:
    """The three files the KMS console hands out, with the users' file names; the
    password file ends with a newline, as downloaded."""
    material = make_client_key("Kms-pa55word")
    client_key_path, password_path = write_client_key_files(tmp_path, material)
    pki = make_tls_pki(tmp_path / "pki")
    assert pki.ca_path.name == f"PrivateKmsCA_{pki.kms_instance_id}.pem"
    assert password_path.read_text().endswith("\n")
    return {
        "material": material,
        "pki": pki,
        "kst": pki.kms_instance_id,
        "client_key": client_key_path,
        "password": password_path,
        "cert": pki.ca_path,
    }


def _seed_values(files: dict[str, Any], *extra_sets: str) -> dict[str, Any]:
    fmt = {k: str(v) for k, v in files.items() if k in ("kst", "client_key", "password", "cert")}
    return helm_cli_values(
        [s.format(**fmt) for s in SEED_SETS] + list(extra_sets),
        [s.format(**fmt) for s in SEED_SET_FILES],
    )


def test_users_exact_install_command(
    seed_files: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    values = _seed_values(seed_files)
    assert values["kbs"]["aliyunKms"]["enabled"] is True
    assert values["kbs"]["aliyunKms"]["password"].endswith("\n")  # --set-file keeps it
    rendered = render(values)
    material = seed_files["material"]

    # 1. The KBS config selects the KMS backend with the users' instance and files.
    plugin = rendered.config["plugins"][0]
    assert plugin["storage_backend_type"] == "Aliyun"
    assert plugin["kms_instance_id"] == seed_files["kst"]
    assert plugin["client_key"] == material.client_key_json
    assert plugin["password"] == material.password  # trailing newline stripped
    assert plugin["cert_pem"] == seed_files["pki"].ca_pem
    settings = _load(rendered.config_text, tmp_path, monkeypatch)
    assert settings.resource_plugin is not None
    assert settings.resource_plugin.storage_backend_type == "Aliyun"
    assert settings.resource_plugin.client_key is not None
    assert settings.resource_plugin.client_key.get_secret_value() == material.client_key_json
    dcap = settings.attestation_service.verifier_config.dcap_verifier
    assert dcap.collateral_service == (
        "https://sgx-dcap-server-vpc.cn-hangzhou.aliyuncs.com/sgx/certification/v4/"
    )

    # 2. The credentials are in a Secret and nowhere else.
    assert [d["metadata"]["name"] for d in rendered.of_kind("Secret")] == [f"{RELEASE}-config"]
    private_key_data = material.client_key_json.split('"PrivateKeyData": "')[1][:40]
    for doc in rendered.docs:
        if doc["kind"] != "Secret":
            text = yaml.safe_dump(doc)
            assert material.password not in text
            assert private_key_data not in text

    # 3. It installs and works without a database: one replica on SQLite with a volume.
    assert rendered.one("Deployment")["spec"]["replicas"] == 1
    assert rendered.one("PersistentVolumeClaim")

    # 4. NOTES print the URLs and the connectivity check.
    assert "kubectl get ing kbs-ingress -n default" in rendered.notes
    assert "http://$ALB/trustee/kbs/v0/" in rendered.notes
    assert "http://$ALB/trustee/as/" in rendered.notes
    assert (
        "curl -s -X POST http://$ALB/trustee/kbs/v0/auth -H 'Content-Type: application/json'"
        in rendered.notes
    )
    assert """-d '{"version":"0.1.0","tee":"tdx","extra-params":"foo"}'""" in rendered.notes


def test_kms_instance_id_spelling_works_too(seed_files: dict[str, Any]) -> None:
    values = _seed_values(seed_files)
    kms = values["kbs"]["aliyunKms"]
    kms["kmsInstanceId"] = kms.pop("kmsIntanceId")
    assert render(values).config["plugins"][0]["kms_instance_id"] == seed_files["kst"]


async def test_rendered_kms_config_reads_a_secret_through_the_instance_gateway(
    seed_files: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The users' files, through --set-file, the chart and TOML, make a backend that signs
    with the client key (decrypted with the stripped password) and trusts the instance CA:
    it reads a secret from the KMS emulator (whose endpoint stands in for the VPC one)."""
    for name in list(os.environ):
        if name.upper().startswith(("ALIBABA_CLOUD_", "HTTP_PROXY", "HTTPS_PROXY")):
            monkeypatch.delenv(name)
    material, pki = seed_files["material"], seed_files["pki"]
    with KmsEmulator(tls=pki.server_context()) as emulator:
        emulator.add_client_key(material.key_id, material.public_key)
        emulator.create_secret(
            "model-decryption-key", "the model key", instance_id=pki.kms_instance_id
        )
        values = _seed_values(seed_files, f"kbs.aliyunKms.endpoint={emulator.endpoint}")
        plugin = render(values).config["plugins"][0]
        keys = {k: v for k, v in plugin.items() if k not in ("name", "storage_backend_type")}
        backend = AliyunKmsBackend(
            AliyunKmsSettings(**keys),
            now=SystemClock().now,
            entropy=lambda n: b"\x01" * n,
        )
        try:
            value = await backend.get(ResourceDesc("default", "aliyun", "model-decryption-key"))
        finally:
            await backend.aclose()
    assert value == b"the model key"


def test_accesskey_and_rrsa_credentials_stay_out_of_the_config() -> None:
    values = scenario_values(CHART / "scenarios/kms-accesskey.yaml")
    rendered = render(values)
    plugin = rendered.config["plugins"][0]
    assert plugin["credential_type"] == "default"
    assert plugin["region_id"] == "cn-hangzhou"
    env = {e["name"]: e for e in rendered.container()["env"]}
    for name, key in (
        ("ALIBABA_CLOUD_ACCESS_KEY_ID", "access_key_id"),
        ("ALIBABA_CLOUD_ACCESS_KEY_SECRET", "access_key_secret"),
    ):
        assert env[name]["valueFrom"]["secretKeyRef"] == {"name": "kbs-aliyun-ak", "key": key}

    literal = render(
        {
            "regionId": "cn-shanghai",
            "kbs": {
                "aliyunKms": {
                    "enabled": True,
                    "accessKeyId": "LTAI-id",
                    "accessKeySecret": "ak-secret-value",
                }
            },
        }
    )
    stored = literal.one("Secret", f"{RELEASE}-aliyun-accesskey")["data"]
    assert base64.b64decode(stored["access_key_secret"]) == b"ak-secret-value"
    assert "ak-secret-value" not in literal.config_text

    rrsa = render(scenario_values(CHART / "scenarios/kms-rrsa.yaml"))
    assert rrsa.config["plugins"][0]["credential_type"] == "oidc_role_arn"
    account = rrsa.one("ServiceAccount")
    assert account["metadata"]["annotations"] == {
        "pod-identity.alibabacloud.com/role-name": "kbs-kms-reader"
    }


def test_admin_key_and_signer_and_tls_mounts() -> None:
    pem = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n-----END PUBLIC KEY-----\n"
    rendered = render(
        {
            "kbs": {
                "admin": {"publicKey": pem},
                "tokenSigner": {"existingSecret": "kbs-signer"},
                "tls": {"existingSecret": "kbs-tls"},
            }
        }
    )
    config = rendered.config
    assert config["admin"]["authorization_mode"] == "AuthenticatedAuthorization"
    provider = config["admin"]["authentication"]["bearer_jwt"]["identity_providers"][0]
    assert provider["public_key_uri"] == "/etc/trustee/admin/public.pub"
    signer = config["attestation_service"]["attestation_token_broker"]["signer"]
    assert signer == {
        "key_path": "/etc/trustee/signer/tls.key",
        "cert_path": "/etc/trustee/signer/tls.crt",
    }
    assert config["http_server"]["insecure_http"] is False
    secret = rendered.one("Secret", f"{RELEASE}-config")
    assert base64.b64decode(secret["data"]["public.pub"]).decode() == pem
    mounts = {m["mountPath"] for m in rendered.container()["volumeMounts"]}
    assert {"/etc/trustee/admin", "/etc/trustee/signer", "/etc/trustee/tls"} <= mounts
    assert rendered.container()["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
    # Without a key the admin API is closed, and NOTES say how to open it.
    closed = render({})
    assert "admin" not in closed.config
    assert "kbs admin-keygen" in closed.notes


def test_seed_resource_repository_secrets_are_mounted_as_files() -> None:
    rendered = render(scenario_values(CHART / "scenarios/file-single-replica.yaml"))
    mounts = {m["mountPath"]: m for m in rendered.container()["volumeMounts"]}
    mount = mounts["/var/lib/trustee/repository/cai/sample/password"]
    # One key, one file: no symlinks for the file backend to refuse.
    assert mount["subPath"] == "password"
    assert mount["readOnly"] is True
    volumes = {v["name"]: v for v in rendered.pod["volumes"]}
    assert volumes[mount["name"]]["secret"]["secretName"] == "sample-keys"
    with pytest.raises(helm.HelmError, match="keys"):
        render({"kbs": {"resourceRepository": [{"repoName": "a", "type": "b", "secretName": "c"}]}})


def test_config_changes_roll_the_pods() -> None:
    a = render({})
    b = render({"kbs": {"sessionTimeoutMinutes": 7}})
    key = "checksum/config"
    assert (
        a.one("Deployment")["spec"]["template"]["metadata"]["annotations"][key]
        != b.one("Deployment")["spec"]["template"]["metadata"]["annotations"][key]
    )


def test_render_is_deterministic_for_upgrades() -> None:
    """No random values (the openanolis chart's rollme annotation restarted every pod on
    every upgrade)."""
    assert render({}).docs == render({}).docs


def test_install_command_in_docs_renders(seed_files: dict[str, Any]) -> None:
    """docs/deploy.md's helm install command, its placeholders filled in."""
    text = (ROOT / "docs/deploy.md").read_text()
    [block] = [b for b in re.findall(r"```sh\n(.*?)```", text, re.DOTALL) if "helm install" in b]
    argv = shlex.split(block.replace("\\\n", " "))
    assert argv[:4] == ["helm", "install", "trustee", "deploy/helm/trustee"]
    fill = {  # file names before the bare instance id they contain
        "clientKey_….json": str(seed_files["client_key"]),
        "clientKey_…_Password.txt": str(seed_files["password"]),
        "PrivateKmsCA_kst-….pem": str(seed_files["cert"]),
        "kst-…": seed_files["kst"],
        "<namespace>": "example",
    }
    sets, set_files = [], []
    for flag, raw in itertools.pairwise(argv):
        value = raw
        for placeholder, real in fill.items():
            value = value.replace(placeholder, real)
        if flag == "--set":
            sets.append(value)
        elif flag == "--set-file":
            set_files.append(value)
    assert len(sets) == 4
    assert len(set_files) == 3
    rendered = render(helm_cli_values(sets, set_files))
    assert rendered.config["plugins"][0]["storage_backend_type"] == "Aliyun"
    assert rendered.container()["image"].startswith(
        "registry.cn-hangzhou.aliyuncs.com/example/confidential-kbs:"
    )


def test_log_format_is_json_by_default_text_on_request_and_nothing_else() -> None:
    parser = build_parser()
    for values, expected in (({}, "json"), ({"log_format": "text"}, "text")):
        args = parser.parse_args(render(values).container("kbs")["args"])
        assert args.log_format == expected
    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmValuesError):
        chart.validate_schema({"log_format": "yaml"})
