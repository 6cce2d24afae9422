# SPDX-License-Identifier: Apache-2.0
#
# Attestation policy `default_cpu`: appraises the evidence of one CPU TEE and produces
# an EAR trust vector (AR4SI trustworthiness claims) plus the workload identifiers.
#
# Contract with the attestation service (the same one Trustee's AS uses):
#   input                          the annotated evidence of one device:
#                                  {"<tee>": {...verifier claims...}, "report_data",
#                                   "runtime_data_claims", "init_data", "init_data_claims"}
#   query_reference_value(id)      host function: the reference value registered under
#                                  `id` (usually a list of accepted values), or null
#   data.policy.trust_claims       object, AR4SI claim name -> integer in -128..127
#   data.policy.extensions         array of {"name", "key", "value"} appraisal members
#
# It decides exactly what Trustee's shipped CPU policy decides, platform by platform, so
# reference values registered for Trustee give the same EAR status here. The text is
# organised by trust claim; each claim lists the platforms that can earn it.
# Supported evidence: sample, snp, tdx, az-snp-vtpm, az-tdx-vtpm, tpm, se.
#
# AR4SI values used (draft-ietf-rats-ar4si):
#   executables    2 approved boot and run time, 3 approved boot, 33 unrecognized run time
#   hardware       2 genuine, 97 unrecognized
#   configuration  2 approved, 3 no known vulnerabilities, 36 elements unavailable
#   0              no claim

package policy

import rego.v1

# ---------------------------------------------------------------------------------------
# Trust vector
# ---------------------------------------------------------------------------------------

# Nothing is trusted until a platform section below says so.
default executables := 33

default hardware := 97

default configuration := 36

default instance_identity := 0

default file_system := 0

default runtime_opaque := 0

default storage_opaque := 0

default sourced_data := 0

trust_claims := {
	"instance-identity": instance_identity,
	"configuration": configuration,
	"executables": executables,
	"file-system": file_system,
	"hardware": hardware,
	"runtime-opaque": runtime_opaque,
	"storage-opaque": storage_opaque,
	"sourced-data": sourced_data,
}

# Each rule below opens with the platform's top-level evidence member (`input.tdx`, ...),
# so evidence from other platforms falls through at the first line. A rule holds only if
# every line does; `x in query_reference_value(id)` fails when `id` is not registered.
# Bodies are spelled out rather than factored into helper rules or functions: with
# regorus each extra rule costs, and the factored form evaluated twice as slowly.

# ---------------------------------------------------------------------------------------
# executables: 3 = only approved executables were loaded at boot
# ---------------------------------------------------------------------------------------

# sample: the launch digest is a registered one.
executables := 3 if {
	input.sample
	input.sample.launch_digest in query_reference_value("launch_digest")
}

# SEV-SNP: the launch measurement is a registered one.
executables := 3 if {
	input.snp
	input.snp.measurement in query_reference_value("snp_launch_measurement")
}

# TDX booted through TDVF: RTMR1 (kernel, initrd, boot loader) and RTMR2 (command line)
# are registered, and the event log shows the registered kernel and command line. A grub
# boot (GKE) leaves only the RTMRs to check, which earns a weaker 4.
executables := 3 if {
	input.tdx
	input.tdx.quote.body.rtmr_1 in query_reference_value("rtmr_1")
	input.tdx.quote.body.rtmr_2 in query_reference_value("rtmr_2")
	tdx_kernel_event_ok
	tdx_kernel_params_event_ok
} else := 4 if {
	input.tdx
	input.tdx.quote.body.rtmr_1 in query_reference_value("rtmr_1")
	input.tdx.quote.body.rtmr_2 in query_reference_value("rtmr_2")
}

# Azure SNP vTPM: launch measurement and the vTPM's PCR11 (unified kernel image).
executables := 3 if {
	input["az-snp-vtpm"]
	input["az-snp-vtpm"].measurement in query_reference_value("measurement")
	input["az-snp-vtpm"].tpm.pcr11 in query_reference_value("snp_pcr11")
}

# Azure TDX vTPM: the vTPM's PCR11.
executables := 3 if {
	input["az-tdx-vtpm"]
	input["az-tdx-vtpm"].tpm.pcr11 in query_reference_value("tdx_pcr11")
}

# TPM: PCR11 is registered and the quote came from a known attestation key.
executables := 3 if {
	input.tpm
	input.tpm.pcr11 in query_reference_value("tpm_pcr11")
	input.tpm.ak_public in query_reference_value("trusted_aks")
}

# IBM SE: the verifier has already checked the image measurement; presence is enough.
executables := 3 if {
	input.se
}

# ---------------------------------------------------------------------------------------
# hardware: 2 = genuine, supported hardware and firmware
# ---------------------------------------------------------------------------------------

# sample: registered svn and platform version. Rego orders values of different types
# (null < boolean < number < string), so the `>=` also holds when
# `minimum_minor_version` is not registered; Trustee's policy behaves the same way.
hardware := 2 if {
	input.sample
	input.sample.svn in query_reference_value("svn")
	input.sample.platform_version.major == query_reference_value("major_version")
	input.sample.platform_version.minor >= query_reference_value("minimum_minor_version")
}

# SEV-SNP: the reported TCB (AMD secure processor firmware) is registered.
hardware := 2 if {
	input.snp
	input.snp.reported_tcb_bootloader in query_reference_value("snp_bootloader")
	input.snp.reported_tcb_microcode in query_reference_value("snp_microcode")
	input.snp.reported_tcb_snp in query_reference_value("snp_snp_svn")
	input.snp.reported_tcb_tee in query_reference_value("snp_tee_svn")
}

# TDX: a TDX quote (tee_type 0x81) signed by Intel's quoting enclave, firmware (MRTD)
# registered, platform TCB current and no collateral expired. Deployments that accept an
# out-of-date TCB can compare input.tdx.tcb_date (time.parse_rfc3339_ns) instead.
hardware := 2 if {
	input.tdx
	input.tdx.quote.header.tee_type == "81000000"
	input.tdx.quote.header.vendor_id == "939a7233f79c4ca9940a0db3957f0607"
	input.tdx.quote.body.mr_td in query_reference_value("mr_td")
	input.tdx.tcb_status == "UpToDate"
	input.tdx.collateral_expiration_status == "0"
}

# Azure SNP vTPM: the reported TCB is registered.
hardware := 2 if {
	input["az-snp-vtpm"]
	input["az-snp-vtpm"].reported_tcb_bootloader in query_reference_value("tcb_bootloader")
	input["az-snp-vtpm"].reported_tcb_microcode in query_reference_value("tcb_microcode")
	input["az-snp-vtpm"].reported_tcb_snp in query_reference_value("tcb_snp")
	input["az-snp-vtpm"].reported_tcb_tee in query_reference_value("tcb_tee")
}

# Azure TDX vTPM: as bare-metal TDX, except that collateral expiry is not checked.
hardware := 2 if {
	input["az-tdx-vtpm"]
	input["az-tdx-vtpm"].quote.header.tee_type == "81000000"
	input["az-tdx-vtpm"].quote.header.vendor_id == "939a7233f79c4ca9940a0db3957f0607"
	input["az-tdx-vtpm"].quote.body.mr_td in query_reference_value("mr_td")
	input["az-tdx-vtpm"].tcb_status == "UpToDate"
}

# TPM: a quote the verifier accepted is all the hardware evidence a TPM gives.
hardware := 2 if {
	input.tpm
}

hardware := 2 if {
	input.se
}

# ---------------------------------------------------------------------------------------
# configuration: 2 = approved configuration, 3 = no known vulnerabilities
# ---------------------------------------------------------------------------------------

# sample: not in debug mode.
configuration := 2 if {
	input.sample
	input.sample.debug == false
}

# SEV-SNP: every guest-policy and platform flag equals its reference value (2); failing
# that, at least debugging and migration agents are off (3).
configuration := 2 if {
	input.snp
	input.snp.policy_debug_allowed == false
	input.snp.policy_migrate_ma == false
	input.snp.platform_smt_enabled == query_reference_value("snp_smt_enabled")
	input.snp.platform_tsme_enabled == query_reference_value("snp_tsme_enabled")
	input.snp.policy_abi_major == query_reference_value("snp_guest_abi_major")
	input.snp.policy_abi_minor == query_reference_value("snp_guest_abi_minor")
	input.snp.policy_single_socket == query_reference_value("snp_single_socket")
	input.snp.policy_smt_allowed == query_reference_value("snp_smt_allowed")
} else := 3 if {
	input.snp
	input.snp.policy_debug_allowed == false
	input.snp.policy_migrate_ma == false
}

# TDX: not a debug TD, and the CPU features exposed to it (XFAM) are registered.
configuration := 2 if {
	input.tdx
	input.tdx.td_attributes.debug == false
	input.tdx.quote.body.xfam in query_reference_value("xfam")
}

# Azure SNP vTPM: every platform and guest-policy flag is among the registered ones.
configuration := 2 if {
	input["az-snp-vtpm"]
	input["az-snp-vtpm"].platform_smt_enabled in query_reference_value("smt_enabled")
	input["az-snp-vtpm"].platform_tsme_enabled in query_reference_value("tsme_enabled")
	input["az-snp-vtpm"].policy_abi_major in query_reference_value("abi_major")
	input["az-snp-vtpm"].policy_abi_minor in query_reference_value("abi_minor")
	input["az-snp-vtpm"].policy_single_socket in query_reference_value("single_socket")
	input["az-snp-vtpm"].policy_smt_allowed in query_reference_value("smt_allowed")
}

# Azure TDX vTPM: registered XFAM.
configuration := 2 if {
	input["az-tdx-vtpm"]
	input["az-tdx-vtpm"].quote.body.xfam in query_reference_value("xfam")
}

# TPM: a TPM says nothing about configuration.
configuration := 0 if {
	input.tpm
}

configuration := 2 if {
	input.se
}

# ---------------------------------------------------------------------------------------
# TDX event log checks (TDVF direct kernel boot)
# ---------------------------------------------------------------------------------------

# The kernel image TDVF loaded has the registered digest.
tdx_kernel_event_ok if {
	some event in input.tdx.uefi_event_logs
	event.type_name == "EV_EFI_BOOT_SERVICES_APPLICATION"
	"File(kernel)" in event.details.device_paths
	some digest in event.digests
	digest.digest == query_reference_value("tdvfkernel")
}

# The kernel command line TDVF passed has the registered digest.
tdx_kernel_params_event_ok if {
	some event in input.tdx.uefi_event_logs
	event.type_name == "EV_EVENT_TAG"
	event.details.string == "LOADED_IMAGE::LoadOptions"
	some digest in event.digests
	digest.digest == query_reference_value("tdvfkernelparams")
}

# ---------------------------------------------------------------------------------------
# Extensions: workload identifiers
# ---------------------------------------------------------------------------------------

# `ear.trustee.identifiers` (key -18) names the workload the evidence is bound to. In
# Confidential Containers these come from the Kata agent policy carried in the init-data
# (init_data_claims.agent_policy_claims); absent init-data gives {"validated": {}}.
extensions := [{
	"name": "ear.trustee.identifiers",
	"key": -18,
	"value": {"validated": validated_identifiers},
}]

container_images := [image |
	some container in input.init_data_claims.agent_policy_claims.containers
	image := container.OCI.Annotations["io.kubernetes.cri.image-name"]
]

container_uids := [uid |
	some container in input.init_data_claims.agent_policy_claims.containers
	uid := container.OCI.Process.User.UID
]

# A member is present only when at least one container contributes to it.
validated_identifiers["container_images"] := container_images if count(container_images) > 0

validated_identifiers["container_uids"] := container_uids if count(container_uids) > 0
