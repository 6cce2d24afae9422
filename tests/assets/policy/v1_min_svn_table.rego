package policy

import rego.v1

default allow := false

# Smallest sample svn that may read each secret.
minimum_svn := {"db-password": 2, "tls-key": 3}

allow if {
	data.plugin == "resource"
	data["resource-path"][0] == "shared"
	svn := to_number(input.submods.cpu0["ear.veraison.annotated-evidence"].sample.svn)
	svn >= minimum_svn[data["resource-path"][2]]
}
