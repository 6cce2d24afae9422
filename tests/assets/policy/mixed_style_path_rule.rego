package policy

default allow = false

# Team A's repository is only for affirmed TDX guests.
allow if {
	count(data["resource-path"]) == 3
	data["resource-path"][0] == "team-a"
	input["submods"]["cpu0"]["ear.status"] == "affirming"
	input["submods"]["cpu0"]["ear.veraison.annotated-evidence"]["tdx"]
}
