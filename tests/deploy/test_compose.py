# SPDX-License-Identifier: Apache-2.0
"""docker-compose.yml: the compose-spec JSON schema, plus what a schema cannot see.

There is no Docker engine on this project's machines, so `docker compose config` cannot
run here. The schema is the compose-spec project's ``compose-spec.json`` as vendored (with
its licence and a checksum) by the ``check-jsonschema`` package, pinned in
requirements-dev.lock; nothing is fetched at test time.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from kbs.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
VENDOR = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")


def _schema() -> dict[str, Any]:
    text = VENDOR.joinpath("compose-spec.json").read_text()
    # The package ships the schema's sha256 beside it: the file is the one it vendored.
    expected = VENDOR.joinpath("sha256/compose-spec.sha256").read_text().strip()
    assert hashlib.sha256(text.encode()).hexdigest() == expected
    schema: dict[str, Any] = json.loads(text)
    return schema


def _compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def _errors(document: dict[str, Any]) -> list[str]:
    schema = _schema()
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    validator = validator_class(schema, format_checker=validator_class.FORMAT_CHECKER)
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(document)]


def test_compose_file_matches_the_compose_spec_schema() -> None:
    assert _errors(_compose()) == []


@pytest.mark.parametrize(
    "mutate",
    [
        lambda c: c["services"]["kbs"].update({"ports": "8080"}),
        lambda c: c["services"]["kbs"].update({"healthchek": {}}),
        lambda c: c.update({"servics": {}}),
        lambda c: c["services"]["kbs"].update({"depends_on": 5}),
    ],
)
def test_the_schema_check_can_fail(mutate: Any) -> None:
    compose = _compose()
    mutate(compose)
    assert _errors(compose) != []


def test_check_jsonschema_cli_agrees() -> None:
    """What a contributor runs: check-jsonschema --builtin-schema vendor.compose-spec."""
    cli = Path(sys.executable).parent / "check-jsonschema"
    result = subprocess.run(
        [str(cli), "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_default_up_is_one_broker_and_the_ha_profile_adds_postgres_and_replicas() -> None:
    services = _compose()["services"]
    default = {name for name, s in services.items() if not s.get("profiles")}
    assert default == {"kbs"}
    ha = {name for name, s in services.items() if "ha" in s.get("profiles", [])}
    assert ha == {"postgres", "kbs-pg-1", "kbs-pg-2"}
    postgres = services["postgres"]["environment"]
    url = (
        f"postgresql://{postgres['POSTGRES_USER']}:{postgres['POSTGRES_PASSWORD']}"
        f"@postgres:5432/{postgres['POSTGRES_DB']}"
    )
    for name in ("kbs-pg-1", "kbs-pg-2"):
        assert services[name]["environment"]["KBS_DATABASE__URL"] == url
        assert services[name]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["kbs-pg-2"]["depends_on"]["kbs-pg-1"]["condition"] == "service_healthy"


def test_references_resolve() -> None:
    compose = _compose()
    services, volumes = compose["services"], compose["volumes"]
    for service in services.values():
        for target, condition in service.get("depends_on", {}).items():
            assert target in services
            if condition["condition"] == "service_healthy":
                assert "healthcheck" in services[target]
        for mount in service.get("volumes", []):
            source = mount.split(":")[0]
            assert source in volumes
        build = service.get("build")
        if build:
            assert (ROOT / build["context"] / build["dockerfile"]).is_file()


def test_brokers_are_locked_down_and_published_on_loopback_only() -> None:
    services = _compose()["services"]
    for name in ("kbs", "kbs-pg-1", "kbs-pg-2"):
        service = services[name]
        assert service["read_only"] is True
        assert service["cap_drop"] == ["ALL"]
        assert "no-new-privileges:true" in service["security_opt"]
        assert service["healthcheck"]["test"] == ["CMD", "kbs", "healthcheck"]
        for port in service["ports"]:
            assert port.startswith("127.0.0.1:"), port
        args = build_parser().parse_args(service["command"])
        assert args.command == "serve"
        # The development profile (sample TEE allowed), listening inside the container on
        # the port that is published.
        assert args.dev is True
        assert args.listen == ["0.0.0.0:8080"]
        assert args.log_format == "json"
        assert all(p.endswith(":8080") for p in service["ports"])


def test_the_file_says_loudly_that_it_is_for_development() -> None:
    head = COMPOSE.read_text().split("name: trustee")[0]
    assert "DEVELOPMENT ONLY" in head
    assert 'ALLOWS THE INSECURE SOFTWARE-ONLY "sample" TEE' in head
    assert "127.0.0.1" in head
