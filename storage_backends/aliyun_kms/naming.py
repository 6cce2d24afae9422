# SPDX-License-Identifier: Apache-2.0
"""How a resource path ``<repository>/<type>/<tag>`` maps to a KMS secret name.

Two modes:

``tag`` (default, Trustee-compatible)
    The secret name is the tag; repository and type are ignored on reads, exactly as the
    reference ``aliyun_kms.rs`` does, so ``kbs:///default/aliyun/model-decryption-key``
    reads the secret ``model-decryption-key``. Because every ``*/*/<tag>`` path names the
    same secret, writes and deletes are accepted only for the configured mount
    (``tag_repository``/``tag_type``, default ``default/aliyun``), and listing maps each
    secret back to that mount.

``template``
    The secret name is rendered from a template such as ``{repository}/{type}/{tag}``.
    The template must use each placeholder exactly once and separate neighbouring
    placeholders with text that contains a character no path segment can contain
    (``/``, ``+``, ``=`` or ``@``); that makes the mapping injective, so two resources can
    never share a secret, and reversible, so listing recovers the paths. A template such as
    ``{repository}-{type}-{tag}`` is rejected: ``a-b/c/d`` and ``a/b-c/d`` would both
    become ``a-b-c-d``.

KMS secret names are at most 192 characters of ``[A-Za-z0-9_/+=.@-]`` and must not start
with ``acs/`` (CreateSecret API reference).
"""

from __future__ import annotations

import logging
import re
import string
from typing import Final

from storage_backends.base import ResourceDesc
from storage_backends.errors import InvalidResourcePathError

_logger = logging.getLogger(__name__)

__all__ = [
    "KMS_SECRET_NAME_MAX_LENGTH",
    "SecretNaming",
    "TagNaming",
    "TemplateNaming",
    "validate_template",
]

#: Longest KMS secret name.
KMS_SECRET_NAME_MAX_LENGTH: Final = 192
#: Characters KMS allows in a secret name.
_KMS_NAME: Final = re.compile(r"[A-Za-z0-9_/+=.@-]+")
#: Prefix KMS reserves for its own (RAM, ECS) secrets.
_RESERVED_PREFIX: Final = "acs/"
#: Characters a path segment may contain (:data:`storage_backends.base.SEGMENT_PATTERN`).
_SEGMENT_CHARS: Final = frozenset(string.ascii_letters + string.digits + "_.-")
#: Legal KMS name characters that no path segment contains: the safe separators.
_SEPARATOR_CHARS: Final = frozenset("/+=@")
_PLACEHOLDERS: Final = ("repository", "type", "tag")


def _check_kms_name(name: str) -> str:
    if len(name) > KMS_SECRET_NAME_MAX_LENGTH:
        raise InvalidResourcePathError("resource path is too long for a kms secret name")
    if _KMS_NAME.fullmatch(name) is None or name.lower().startswith(_RESERVED_PREFIX):
        raise InvalidResourcePathError("resource path does not map to a legal kms secret name")
    return name


class SecretNaming:
    """Maps resource paths to KMS secret names and back."""

    #: ``"tag"`` or ``"template"``.
    mode: str = ""

    def secret_name(self, desc: ResourceDesc) -> str:
        """Return the secret name for ``desc``.

        Raises:
            InvalidResourcePathError: the name would not be a legal KMS secret name.
        """
        raise NotImplementedError

    def resource_for(self, secret_name: str) -> ResourceDesc | None:
        """Return the resource path a secret name stands for, or ``None`` if it is not ours."""
        raise NotImplementedError

    def writable(self, desc: ResourceDesc) -> bool:
        """Whether writes and deletes of ``desc`` are allowed in this mode."""
        raise NotImplementedError


class TagNaming(SecretNaming):
    """Secret name = tag (Trustee's mapping); one mount ``repository/type`` for writes."""

    mode = "tag"

    def __init__(self, *, repository: str, type_: str) -> None:
        """Use ``repository/type`` as the mount that lists and writes map to.

        Raises:
            InvalidResourcePathError: ``repository`` or ``type_`` is not a valid segment.
        """
        self._mount = ResourceDesc(repository, type_, "probe")

    @property
    def repository(self) -> str:
        """The mount's repository."""
        return self._mount.repository

    @property
    def type(self) -> str:
        """The mount's type."""
        return self._mount.type

    def secret_name(self, desc: ResourceDesc) -> str:
        """Return ``desc.tag`` (repository and type are ignored, as in the reference).

        Raises:
            InvalidResourcePathError: the tag is longer than 192 characters.
        """
        return _check_kms_name(desc.tag)

    def resource_for(self, secret_name: str) -> ResourceDesc | None:
        """Return ``<mount repository>/<mount type>/<secret_name>`` if the name is a valid tag."""
        try:
            return ResourceDesc(self._mount.repository, self._mount.type, secret_name)
        except InvalidResourcePathError:
            return None

    def writable(self, desc: ResourceDesc) -> bool:
        """Only paths under the mount may be written (other paths alias the same secret)."""
        return (desc.repository, desc.type) == (self._mount.repository, self._mount.type)


def _split_template(template: str) -> tuple[list[str], list[str]]:
    literals: list[str] = []
    names: list[str] = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"name_template is not a valid format string: {exc}") from None
    for literal, field_name, format_spec, conversion in parsed:
        literals.append(literal)
        if field_name is None:
            continue
        if field_name not in _PLACEHOLDERS or format_spec or conversion:
            raise ValueError(
                "name_template may only use the placeholders {repository}, {type} and {tag}"
            )
        names.append(field_name)
    if len(literals) == len(names):
        literals.append("")
    return literals, names


def validate_template(template: str) -> tuple[list[str], list[str]]:
    """Check a naming template and split it into literals and placeholder names.

    Returns ``(literals, names)`` with ``len(literals) == len(names) + 1``.

    Raises:
        ValueError: the template is not injective, not reversible, or not legal KMS text.
    """
    literals, names = _split_template(template)
    if sorted(names) != sorted(_PLACEHOLDERS):
        raise ValueError("name_template must use {repository}, {type} and {tag} exactly once each")
    if any(literal and _KMS_NAME.fullmatch(literal) is None for literal in literals):
        raise ValueError("name_template contains characters KMS does not allow in names")
    for separator in literals[1:-1]:
        if not _SEPARATOR_CHARS.intersection(separator):
            raise ValueError(
                "name_template must separate placeholders with '/', '+', '=' or '@' "
                "(characters no path segment contains), or two paths could share a secret"
            )
    if literals[0].lower().startswith(_RESERVED_PREFIX):
        raise ValueError("name_template must not start with the reserved prefix 'acs/'")
    return literals, names


class TemplateNaming(SecretNaming):
    """Secret name rendered from a validated, injective template."""

    mode = "template"

    def __init__(self, template: str) -> None:
        """Validate ``template`` (see :func:`validate_template`).

        Raises:
            ValueError: the template is unsafe or illegal.
        """
        self.template = template
        literals, names = validate_template(template)
        segment = "[A-Za-z0-9_.-]+"
        pattern = "".join(
            re.escape(literal) + (f"(?P<{name}>{segment})" if index < len(names) else "")
            for index, (literal, name) in enumerate(zip(literals, [*names, ""], strict=True))
        )
        self._pattern = re.compile(pattern)

    def secret_name(self, desc: ResourceDesc) -> str:
        """Render the template for ``desc``.

        Raises:
            InvalidResourcePathError: the result is too long or starts with ``acs/``.
        """
        return _check_kms_name(
            self.template.format(repository=desc.repository, type=desc.type, tag=desc.tag)
        )

    def resource_for(self, secret_name: str) -> ResourceDesc | None:
        """Parse a secret name back into its path; ``None`` for names the template did not make."""
        match = self._pattern.fullmatch(secret_name)
        if match is None:
            return None
        try:
            return ResourceDesc(match["repository"], match["type"], match["tag"])
        except InvalidResourcePathError:
            return None

    def writable(self, desc: ResourceDesc) -> bool:  # noqa: ARG002 - same signature as the base
        """Every path has its own secret, so every path is writable."""
        return True
