# SPDX-License-Identifier: Apache-2.0
#
# Sample resource policy: release nothing. `allow` is always false.

package policy

import rego.v1

default allow := false
