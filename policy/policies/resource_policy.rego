# SPDX-License-Identifier: Apache-2.0
#
# Default resource policy (id `resource-policy`): release a resource only to a requester
# whose attestation token appraised every device as `affirming`, or whose token is a
# Simple token (the legacy profile of the attestation-service API).
#
# Contract with the KBS (the same one Trustee's KBS uses):
#   input              the verified EAR token claims, e.g.
#                      input.submods.cpu0["ear.status"],
#                      input.submods.cpu0["ear.veraison.annotated-evidence"].tdx...
#   data.plugin        the plugin name from the request path ("resource", ...)
#   data["resource-path"]  the remaining path segments, e.g. ["repo", "type", "tag"]
#   data.query         the request's query parameters
#   data.policy.allow  must be exactly `true` to release; anything else denies
#
# This is stricter than Trustee's shipped default, which allows any non-sample TEE
# whatever its EAR status: an attestation service issues tokens even for
# contraindicated evidence, so the relying party has to look at the status.

package policy

import rego.v1

default allow := false

# An empty `submods` would make "every device is affirming" vacuously true; require at
# least one appraisal.
allow if {
	count(input.submods) > 0
	every appraisal in input.submods {
		appraisal["ear.status"] == "affirming"
	}
}

# A Simple token (no `submods`; `evaluation-reports` instead) is only ever issued when
# every policy it lists found every device affirming (ours) or allowed it (Trustee's
# Simple broker), so listing at least one policy is enough. In passport mode the guest
# chose those policy ids; a deployment that trusts only some policies checks
# input["evaluation-reports"][_]["policy-id"] (or, for EAR, "ear.appraisal-policy-id").
allow if {
	not "submods" in object.keys(input)
	is_array(input["evaluation-reports"])
	count(input["evaluation-reports"]) > 0
}
