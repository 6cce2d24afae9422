# SPDX-License-Identifier: Apache-2.0
#
# Sample resource policy: release every resource of the `resource` plugin to any
# requester holding a valid attestation token, whatever its EAR status. Requests to other
# plugins are still denied. Use only for testing.

package policy

import rego.v1

default allow := false

allow if data.plugin == "resource"
