# Release resources to any real TEE; refuse the software-only sample TEE.
package policy

default allow = false

evidence = input.submods.cpu0["ear.veraison.annotated-evidence"]

allow if {
	data.plugin == "resource"
	not evidence.sample
}
