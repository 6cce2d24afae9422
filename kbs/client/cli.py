# SPDX-License-Identifier: Apache-2.0
r"""The ``kbs-client`` console script (the guest side and the admin side of the KBS).

Guest side, as confidential-data-hub does it::

    kbs-client --url http://127.0.0.1:8080 get-resource --resource-uri kbs:///cai/sample/password

prints the secret in standard base64. Admin side (``config``, also spelled ``admin``)::

    kbs-client --url URL config --auth-private-key admin.key set-resource \\
        --path cai/sample/password --resource-file password.txt
    kbs-client --url URL admin --admin-token-file token list-resources --prefix 'cai/*'

Trustee's ``config`` commands keep their names and options; the key-admin commands
(resource versions and rollback, release policies, explain, audit) are ours and print
JSON. See docs/admin.md.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final

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
            role_claim=args.role_claim,
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


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True))


def _allow_list(args: argparse.Namespace) -> dict[str, list[str]] | None:
    allow: dict[str, list[str]] = {}
    if args.allow_list_file:
        loaded = json.loads(Path(args.allow_list_file).read_text())
        if not isinstance(loaded, dict):
            raise ValueError("the allow-list file must hold a JSON object")
        allow.update(loaded)
    for member in ("mr_td", "tcb_status", "tee", "ear_status"):
        values = getattr(args, member)
        if values:
            allow.setdefault(member, []).extend(values)
    for item in args.rtmr or []:
        index, sep, value = item.partition("=")
        if not sep or index not in ("0", "1", "2", "3"):
            raise ValueError("--rtmr takes N=HEX with N in 0..3")
        allow.setdefault(f"rtmr_{index}", []).append(value)
    return allow or None


async def _list_resources(admin: AdminClient, args: argparse.Namespace) -> None:
    _print_json(await admin.list_resources(prefix=args.prefix, paths_only=args.paths))


async def _resource_versions(admin: AdminClient, args: argparse.Namespace) -> None:
    _print_json(await admin.resource_versions(args.path))


async def _get_resource_version(admin: AdminClient, args: argparse.Namespace) -> None:
    data = await admin.get_resource_version(args.path, args.version)
    if not args.output:
        print(base64.b64encode(data).decode())
        return
    fd = os.open(args.output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


async def _rollback_resource(admin: AdminClient, args: argparse.Namespace) -> None:
    _print_json(await admin.rollback_resource(args.path, args.version))


async def _set_release_policy(admin: AdminClient, args: argparse.Namespace) -> None:
    allow = _allow_list(args)
    if (args.policy_file is None) == (allow is None):
        raise ValueError("give --policy-file, or an allow list (--allow-list-file, --mr-td...)")
    rego = Path(args.policy_file).read_text() if args.policy_file else None
    _print_json(await admin.set_release_policy(args.prefix, rego=rego, allow_list=allow))


async def _get_release_policy(admin: AdminClient, args: argparse.Namespace) -> None:
    policy = await admin.get_release_policy(args.prefix)
    if args.text:
        print(policy["rego"], end="")
        return
    policy.pop("policy", None)
    _print_json(policy)


async def _list_release_policies(admin: AdminClient, args: argparse.Namespace) -> None:
    del args
    _print_json(await admin.list_release_policies())


async def _delete_release_policy(admin: AdminClient, args: argparse.Namespace) -> None:
    await admin.delete_release_policy(args.prefix)


async def _explain(admin: AdminClient, args: argparse.Namespace) -> None:
    token = Path(args.token_file).read_text().strip() if args.token_file else None
    claims = json.loads(Path(args.claims_file).read_text()) if args.claims_file else None
    query = dict(item.split("=", 1) for item in args.query or [])
    explained = await admin.explain(args.path, token=token, claims=claims, query=query)
    if not args.with_input:
        explained.pop("input", None)
        for appraisal in explained.get("appraisals", {}).values():
            appraisal.pop("input", None)
    _print_json(explained)


async def _audit_verify(admin: AdminClient, args: argparse.Namespace) -> None:
    del args
    report = await admin.audit_verify()
    _print_json(report)
    if not report.get("ok"):
        raise SystemExit(1)


async def _whoami(admin: AdminClient, args: argparse.Namespace) -> None:
    del args
    _print_json(await admin.whoami())


async def _audit(admin: AdminClient, args: argparse.Namespace) -> None:
    filters: dict[str, str | int | None] = {
        "kind": args.kind,
        "action": args.action,
        "outcome": args.outcome,
        "actor": args.actor,
        "request_id": args.request_id,
        "resource": args.resource,
        "since": args.since,
        "until": args.until,
        "after": args.after,
        "before": args.before,
        "limit": args.limit,
        "order": args.order,
    }
    records: list[Any] = []
    while True:
        page = await admin.audit(**filters)
        records.extend(page["records"])
        if not args.all or page.get("next") is None:
            break
        filters["before" if args.order == "desc" else "after"] = page["next"]
    _print_json({"records": records, "next": None if args.all else page.get("next")})


_KEYADMIN_COMMANDS: Final[
    dict[str, Callable[[AdminClient, argparse.Namespace], Awaitable[None]]]
] = {
    "list-resources": _list_resources,
    "resource-versions": _resource_versions,
    "get-resource-version": _get_resource_version,
    "rollback-resource": _rollback_resource,
    "set-release-policy": _set_release_policy,
    "get-release-policy": _get_release_policy,
    "list-release-policies": _list_release_policies,
    "delete-release-policy": _delete_release_policy,
    "explain": _explain,
    "audit": _audit,
    "audit-verify": _audit_verify,
    "whoami": _whoami,
}


async def _config(args: argparse.Namespace) -> int:
    admin = _admin(args)
    try:
        keyadmin = _KEYADMIN_COMMANDS.get(args.config_command)
        if keyadmin is not None:
            await keyadmin(admin, args)
            return 0
        cmd = args.config_command
        if cmd == "set-resource":
            await admin.set_resource(args.path, Path(args.resource_file).read_bytes())
        elif cmd == "delete-resource":
            await admin.delete_resource(args.path, version=args.version)
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

    config = sub.add_parser("config", aliases=["admin"], help="admin operations")
    _add_admin_auth_options(config)
    config.set_defaults(func=_config)
    csub = config.add_subparsers(dest="config_command", required=True)
    p = csub.add_parser("set-resource", help="store a secret")
    p.add_argument("--path", required=True, help="<repository>/<type>/<tag>")
    p.add_argument("--resource-file", required=True)
    p = csub.add_parser("delete-resource", help="delete a secret (or one kept version)")
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
    _add_keyadmin_commands(csub)
    return parser


def _add_admin_auth_options(config: argparse.ArgumentParser) -> None:
    auth = config.add_mutually_exclusive_group()
    auth.add_argument("--auth-private-key", help="admin private key (PEM) to sign tokens with")
    auth.add_argument("--admin-token-file", help="file holding an admin Bearer token")
    config.add_argument("--role", default="admin", help="role(s) of signed admin tokens")
    config.add_argument("--role-claim", default="role", help="claim the role goes in (ours)")
    config.add_argument("--issuer", help="iss claim of signed admin tokens")
    config.add_argument("--audience", help="aud claim of signed admin tokens")


def _add_keyadmin_commands(csub: Any) -> None:
    csub.choices["delete-resource"].add_argument(
        "--version", help="delete only this kept version (ours)"
    )
    p = csub.add_parser("list-resources", help="resources with metadata (never values)")
    p.add_argument("--prefix", help="only under this path pattern, e.g. 'cai/*'")
    p.add_argument("--paths", action="store_true", help="only the paths (Trustee's list)")
    p = csub.add_parser("resource-versions", help="a resource's metadata and kept versions")
    p.add_argument("--path", required=True)
    p = csub.add_parser("get-resource-version", help="read one kept version (base64)")
    p.add_argument("--path", required=True)
    p.add_argument("--version", required=True)
    p.add_argument("--output", help="write the raw value here (mode 0600) instead")
    p = csub.add_parser("rollback-resource", help="make a kept version current again")
    p.add_argument("--path", required=True)
    p.add_argument("--version", required=True)
    p = csub.add_parser("set-release-policy", help="attach a release policy to a path pattern")
    p.add_argument("--prefix", required=True, help="path pattern, e.g. 'cai/*'")
    p.add_argument("--policy-file", help="a Rego policy (package policy, rule allow)")
    p.add_argument("--allow-list-file", help="an allow list as JSON")
    p.add_argument("--mr-td", action="append", help="accepted MRTD (hex, repeatable)")
    p.add_argument("--rtmr", action="append", metavar="N=HEX", help="accepted RTMR N value")
    p.add_argument("--tcb-status", action="append", help="accepted TCB status (UpToDate...)")
    p.add_argument("--tee", action="append", help="accepted evidence type (tdx...)")
    p.add_argument("--ear-status", action="append", help="accepted EAR status (affirming...)")
    p = csub.add_parser("get-release-policy", help="show one release policy")
    p.add_argument("--prefix", required=True)
    p.add_argument("--text", action="store_true", help="print only the Rego text")
    csub.add_parser("list-release-policies", help="list release policies")
    p = csub.add_parser("delete-release-policy", help="remove a release policy")
    p.add_argument("--prefix", required=True)
    p = csub.add_parser("explain", help="why a resource would (not) be released to a token")
    p.add_argument("--path", required=True, help="<repository>/<type>/<tag>")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--token-file", help="an attestation token")
    src.add_argument("--claims-file", help="a token's claims as JSON")
    p.add_argument("--query", action="append", metavar="K=V", help="request query parameter")
    p.add_argument("--with-input", action="store_true", help="include the evaluated input")
    p = csub.add_parser("audit", help="query the audit trail")
    for name in ("kind", "action", "outcome", "actor", "request-id", "resource", "since", "until"):
        p.add_argument(f"--{name}")
    p.add_argument("--after", type=int)
    p.add_argument("--before", type=int)
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--order", choices=["asc", "desc"], default="desc")
    p.add_argument("--all", action="store_true", help="follow the pages to the end")
    csub.add_parser("audit-verify", help="ask the server to verify the audit chain")
    csub.add_parser("whoami", help="the identity and grants the server sees")


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
