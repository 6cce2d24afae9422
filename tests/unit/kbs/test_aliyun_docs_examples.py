# SPDX-License-Identifier: Apache-2.0
"""The example configurations in docs/backends/aliyun-kms.md load and mean what they say."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kbs.settings import load_settings
from support.kms_app import kms_environment_names

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(autouse=True)
def _hermetic_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in kms_environment_names():
        monkeypatch.delenv(name)


def _documented_examples() -> dict[str, str]:
    text = (ROOT / "docs/backends/aliyun-kms.md").read_text()
    blocks = re.findall(r"```toml\n(# example: ([\w-]+)\n.*?)```", text, flags=re.DOTALL)
    return {name: body for body, name in blocks}


def test_documented_examples_exist() -> None:
    assert set(_documented_examples()) >= {"trustee-instance", "mounted", "shared-rrsa"}


@pytest.mark.parametrize("name", ["trustee-instance", "mounted", "shared-rrsa"])
def test_documented_examples_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    if name == "mounted":
        # The example keeps the AccessKey secret out of the file, as the docs advise.
        monkeypatch.setenv("KBS_RESOURCE_STORAGE_ALIYUN_ACCESS_KEY_SECRET", "from-a-secret")
    config = tmp_path / "kbs-config.toml"
    config.write_text(_documented_examples()[name])
    settings = load_settings(config)
    plugin = settings.resource_plugin
    assert plugin is not None
    entries = [plugin, *plugin.mounts]
    kms_entries = [e for e in entries if e.storage_backend_type == "Aliyun"]
    assert len(kms_entries) == 1
    backend = kms_entries[0].aliyun_kms_settings()
    if name == "trustee-instance":
        assert backend.instance_configured
        assert not backend.shared_configured
    elif name == "mounted":
        assert [m.path for m in plugin.mounts] == ["default/aliyun"]
        assert backend.instance_configured
        assert backend.shared_configured
        assert backend.access_key_secret == "from-a-secret"
        assert (backend.tag_repository, backend.tag_type) == ("default", "aliyun")
    else:
        assert backend.effective_credential_type == "oidc_role_arn"
        assert not backend.instance_configured
