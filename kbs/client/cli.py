# SPDX-License-Identifier: Apache-2.0
r"""The ``kbs-client`` console script (the guest side and the admin side of the KBS).

Guest side, as confidential-data-hub does it::

    kbs-client --url http://127.0.0.1:8080 get-resource --resource-uri kbs:///cai/sample/password

prints the secret in standard base64. Admin side::

    kbs-client --url URL config --auth-private-key admin.key set-resource \\
        --path cai/sample/password --resource-file password.txt
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sys
from pathlib import Path
from typing import Any

from kbs import __version__
from kbs.client.api import (
    AdminClient,
    Attester,
    KbsClient,
    KbsClientError,
    SampleAttester,
    SampleDeviceAttester,
)
from kbs.client.tdx_attester import (
    DEFAULT_AAEL_PATH,
    DEFAULT_CCEL_PATH,
    DEFAULT_TSM_REPORT_ROOT,
    TdxAttester,
    TdxAttesterError,
)
from kbs.client.tee_key import TeeKeyPair

__all__ = ["main"]


def _tdx_attester(args: argparse.Namespace) -> TdxAttester:
    # The attestation agent's own event log, as guest-components reads it ($AAEL_PATH).
    aael = args.tdx_aa_eventlog or os.environ.get("AAEL_PATH") or DEFAULT_AAEL_PATH
    return TdxAttester(
        configfs_root=Path(args.tdx_tsm_report_dir),
        ccel_path=Path(args.tdx_ccel),
        aael_path=Path(aael),
    )


def _attester(args: argparse.Namespace) -> Attester:
    name = args.attester
    if name == "sample":
        return SampleAttester()
    if name == "tdx":
        return _tdx_attester(args)
    # auto: TDX inside a TD, else the sample TEE (which proves nothing) with a warning.
    if TdxAttester.detect(configfs_root=Path(args.tdx_tsm_report_dir)):
        return _tdx_attester(args)
    print("kbs-client: no TEE detected; using the insecure sample attester", file=sys.stderr)
    return SampleAttester()


def _verify(args: argparse.Namespace) -> bool | str:
    return str(args.cert_file) if args.cert_file else True


def _tee_key(args: argparse.Namespace) -> TeeKeyPair:
    if args.tee_key_file:
        return TeeKeyPair.from_pem(Path(args.tee_key_file).read_bytes())
    return TeeKeyPair.generate(args.tee_key_type)


def _guest_client(args: argparse.Namespace) -> KbsClient:
    init_data = Path(args.init_data).read_text() if args.init_data else None
    extra = [SampleDeviceAttester()] if args.sample_device else []
    return KbsClient(
        args.url,
        attester=_attester(args),
        tee_key=_tee_key(args),
        init_data=init_data,
        additional_attesters=extra,
        verify=_verify(args),
    )


async def _get_resource(args: argparse.Namespace) -> int:
    client = _guest_client(args)
    async with client:
        if args.token_file:
            client.token = Path(args.token_file).read_text().strip()
        data = await client.get_resource(args.resource_uri or args.path, bearer=args.bearer)
    print(base64.b64encode(data).decode())
    return 0


async def _attest(args: argparse.Namespace) -> int:
    async with _guest_client(args) as client:
        print(await client.attest())
    return 0


def _admin(args: argparse.Namespace) -> AdminClient:
    if args.auth_private_key:
        return AdminClient(
            args.url,
            private_key_pem=Path(args.auth_private_key).read_bytes(),
            role=args.role,
            issuer=args.issuer,
            audience=args.audience,
            verify=_verify(args),
        )
    if args.admin_token_file:
        token = Path(args.admin_token_file).read_text().strip()
        return AdminClient(args.url, token=token, verify=_verify(args))
    raise SystemExit("kbs-client config: give --auth-private-key or --admin-token-file")


def _sample_value(args: argparse.Namespace) -> Any:
    value: Any = args.value
    if args.as_integer:
        value = int(args.value)
    elif args.as_bool:
        value = args.value.lower() in ("1", "true", "yes")
    return value if args.as_single_value else [value]


async def _config(args: argparse.Namespace) -> int:
    admin = _admin(args)
    try:
        cmd = args.config_command
        if cmd == "set-resource":
            await admin.set_resource(args.path, Path(args.resource_file).read_bytes())
        elif cmd == "delete-resource":
            await admin.delete_resource(args.path)
        elif cmd == "set-resource-policy":
            await admin.set_resource_policy(Path(args.policy_file).read_text())
        elif cmd == "get-resource-policy":
            print(json.dumps(await admin.get_resource_policy()))
        elif cmd == "set-attestation-policy":
            await admin.set_attestation_policy(
                Path(args.policy_file).read_text(), policy_id=args.id
            )
        elif cmd == "set-sample-reference-value":
            await admin.set_reference_values({args.name: _sample_value(args)})
        elif cmd == "set-reference-values":
            await admin.set_reference_values(json.loads(Path(args.values_file).read_text()))
        elif cmd == "get-reference-value":
            print(json.dumps(await admin.get_reference_value(args.id)))
    finally:
        await admin.aclose()
    return 0


def _add_guest_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--attester",
        choices=["auto", "sample", "tdx"],
        default="auto",
        help="evidence source (auto: TDX inside a TD, else the insecure sample TEE)",
    )
    parser.add_argument(
        "--tee-key-type",
        choices=["ec-p256", "ec-p521", "rsa-oaep-256", "rsa1_5"],
        default="ec-p256",
        help="key the secret is wrapped to (default EC P-256, as the reference client)",
    )
    parser.add_argument("--tee-key-file", help="use this TEE private key (PEM) instead")
    parser.add_argument("--init-data", help="init-data TOML file to send with the evidence")
    parser.add_argument(
        "--sample-device", action="store_true", help="add a sampledevice as additional evidence"
    )
    parser.add_argument(
        "--tdx-tsm-report-dir",
        default=str(DEFAULT_TSM_REPORT_ROOT),
        help="configfs-tsm report directory the TDX quote comes from",
    )
    parser.add_argument(
        "--tdx-ccel", default=str(DEFAULT_CCEL_PATH), help="the CCEL ACPI table (TDX event log)"
    )
    parser.add_argument(
        "--tdx-aa-eventlog",
        help=f"attestation-agent event log appended to the CCEL if it exists "
        f"(default: $AAEL_PATH or {DEFAULT_AAEL_PATH})",
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``kbs-client`` argument parser."""
    parser = argparse.ArgumentParser(prog="kbs-client", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"kbs-client {__version__}")
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="KBS root URL")
    parser.add_argument("--cert-file", help="CA certificate (PEM) for an HTTPS KBS")
    sub = parser.add_subparsers(dest="command", required=True)

    get = sub.add_parser("get-resource", help="attest and print a secret (standard base64)")
    group = get.add_mutually_exclusive_group(required=True)
    group.add_argument("--resource-uri", help="kbs:///<repository>/<type>/<tag>")
    group.add_argument("--path", help="<repository>/<type>/<tag>")
    get.add_argument("--token-file", help="use this attestation token instead of attesting")
    get.add_argument("--bearer", action="store_true", help="send the token as a Bearer header")
    _add_guest_options(get)
    get.set_defaults(func=_get_resource)

    attest = sub.add_parser("attest", help="attest and print the attestation token")
    _add_guest_options(attest)
    attest.set_defaults(func=_attest)

    config = sub.add_parser("config", help="admin operations")
    auth = config.add_mutually_exclusive_group()
    auth.add_argument("--auth-private-key", help="admin private key (PEM) to sign tokens with")
    auth.add_argument("--admin-token-file", help="file holding an admin Bearer token")
    config.add_argument("--role", default="admin", help="role claim of signed admin tokens")
    config.add_argument("--issuer", help="iss claim of signed admin tokens")
    config.add_argument("--audience", help="aud claim of signed admin tokens")
    config.set_defaults(func=_config)
    csub = config.add_subparsers(dest="config_command", required=True)
    p = csub.add_parser("set-resource", help="store a secret")
    p.add_argument("--path", required=True, help="<repository>/<type>/<tag>")
    p.add_argument("--resource-file", required=True)
    p = csub.add_parser("delete-resource", help="delete a secret")
    p.add_argument("--path", required=True)
    p = csub.add_parser("set-resource-policy", help="install the resource policy (Rego)")
    p.add_argument("--policy-file", required=True)
    csub.add_parser("get-resource-policy", help="list resource policy ids")
    p = csub.add_parser("set-attestation-policy", help="install an attestation policy (Rego)")
    p.add_argument("--policy-file", required=True)
    p.add_argument("--id", default="default_cpu", help="policy id (default_cpu, default_gpu)")
    p.add_argument("--type", default="rego", choices=["rego"])
    p = csub.add_parser("set-sample-reference-value", help="register one reference value")
    p.add_argument("name")
    p.add_argument("value")
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("--as-integer", action="store_true")
    kind.add_argument("--as-bool", action="store_true")
    p.add_argument("--as-single-value", action="store_true", help="store the value, not [value]")
    p = csub.add_parser("set-reference-values", help="register {name: value} from a JSON file")
    p.add_argument("--values-file", required=True)
    p = csub.add_parser("get-reference-value", help="print a reference value")
    p.add_argument("--id", required=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``kbs-client`` command line."""
    args = build_parser().parse_args(argv)
    try:
        result: int = asyncio.run(args.func(args))
    except KbsClientError as exc:
        print(f"kbs-client: {exc}", file=sys.stderr)
        return 1
    except (OSError, ValueError, TdxAttesterError) as exc:
        print(f"kbs-client: {exc}", file=sys.stderr)
        return 1
    return result
