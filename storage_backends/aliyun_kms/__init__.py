# SPDX-License-Identifier: Apache-2.0
"""Alibaba Cloud KMS secret backend (kind ``aliyun_kms``), read and write, both KMS gateways.

Build it from :class:`AliyunKmsSettings`::

    backend = AliyunKmsBackend(settings, now=clock.now, entropy=entropy)

The Alibaba Cloud SDK (``alibabacloud-kms20160120``, ``alibabacloud-credentials``) is
imported only when shared-gateway credentials are configured. See
``docs/backends/aliyun-kms.md`` for the console steps and every setting.
"""

from storage_backends.aliyun_kms.api import ErrorKind, KmsObserver, KmsRequestError, SecretValue
from storage_backends.aliyun_kms.backend import READINESS_PROBE_SECRET, AliyunKmsBackend
from storage_backends.aliyun_kms.instance import ClientKey, InstanceGatewayClient
from storage_backends.aliyun_kms.naming import TagNaming, TemplateNaming
from storage_backends.aliyun_kms.settings import (
    KMS_MAX_SECRET_DATA_BYTES,
    AliyunKmsConfigError,
    AliyunKmsSettings,
)
from storage_backends.aliyun_kms.shared import SharedGatewayClient

__all__ = [
    "KMS_MAX_SECRET_DATA_BYTES",
    "READINESS_PROBE_SECRET",
    "AliyunKmsBackend",
    "AliyunKmsConfigError",
    "AliyunKmsSettings",
    "ClientKey",
    "ErrorKind",
    "InstanceGatewayClient",
    "KmsObserver",
    "KmsRequestError",
    "SecretValue",
    "SharedGatewayClient",
    "TagNaming",
    "TemplateNaming",
]
