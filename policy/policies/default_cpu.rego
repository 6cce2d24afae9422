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

# `value` is one of the values registered under reference value `id`. An unregistered
# id (null) or a missing evidence field never matches.
accepted(value, id) if value in query_reference_value(id)

# ---------------------------------------------------------------------------------------
# executables
# ---------------------------------------------------------------------------------------

executables := 3 if sample_launch_ok

executables := 3 if snp_launch_ok

# TDX booted through TDVF: the kernel and its command line were measured into the event
# log. A grub boot (GKE) only leaves the RTMRs to check, which earns a weaker 4.
executables := 3 if {
	tdx_rtmrs_ok
	tdx_kernel_event_ok
	tdx_kernel_params_event_ok
} else := 4 if {
	tdx_rtmrs_ok
}

executables := 3 if az_snp_launch_ok

executables := 3 if az_tdx_launch_ok

executables := 3 if tpm_boot_ok

# IBM SE: the verifier has already checked the image measurement; presence is enough.
executables := 3 if input.se

# ---------------------------------------------------------------------------------------
# hardware
# ---------------------------------------------------------------------------------------

hardware := 2 if sample_platform_ok

hardware := 2 if snp_platform_ok

hardware := 2 if tdx_platform_ok

hardware := 2 if az_snp_platform_ok

hardware := 2 if az_tdx_platform_ok

# A TPM quote that the verifier accepted is all the hardware evidence a TPM gives.
hardware := 2 if input.tpm

hardware := 2 if input.se

# ---------------------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------------------

configuration := 2 if sample_config_ok

# SNP: every guest-policy and platform flag matches its reference value (2); failing
# that, at least debugging and migration agents are off (3).
configuration := 2 if {
	snp_config_safe
	snp_config_matches
} else := 3 if {
	snp_config_safe
}

configuration := 2 if tdx_config_ok

configuration := 2 if az_snp_config_ok

configuration := 2 if az_tdx_config_ok

# A TPM says nothing about configuration.
configuration := 0 if input.tpm

configuration := 2 if input.se

# ---------------------------------------------------------------------------------------
# sample (software only; proves nothing, for tests)
# ---------------------------------------------------------------------------------------

sample_launch_ok if {
	input.sample
	accepted(input.sample.launch_digest, "launch_digest")
}

# Note: Rego orders values of different types (null < boolean < number < string), so the
# `>=` below also holds when `minimum_minor_version` is not registered. Trustee's policy
# behaves the same way; `major_version` must still match exactly.
sample_platform_ok if {
	input.sample
	accepted(input.sample.svn, "svn")
	input.sample.platform_version.major == query_reference_value("major_version")
	input.sample.platform_version.minor >= query_reference_value("minimum_minor_version")
}

sample_config_ok if {
	input.sample
	input.sample.debug == false
}

# ---------------------------------------------------------------------------------------
# AMD SEV-SNP
# ---------------------------------------------------------------------------------------

snp_launch_ok if {
	input.snp
	accepted(input.snp.measurement, "snp_launch_measurement")
}

# The reported TCB covers the AMD secure processor firmware.
snp_platform_ok if {
	input.snp
	accepted(input.snp.reported_tcb_bootloader, "snp_bootloader")
	accepted(input.snp.reported_tcb_microcode, "snp_microcode")
	accepted(input.snp.reported_tcb_snp, "snp_snp_svn")
	accepted(input.snp.reported_tcb_tee, "snp_tee_svn")
}

snp_config_safe if {
	input.snp
	input.snp.policy_debug_allowed == false
	input.snp.policy_migrate_ma == false
}

snp_config_matches if {
	input.snp.platform_smt_enabled == query_reference_value("snp_smt_enabled")
	input.snp.platform_tsme_enabled == query_reference_value("snp_tsme_enabled")
	input.snp.policy_abi_major == query_reference_value("snp_guest_abi_major")
	input.snp.policy_abi_minor == query_reference_value("snp_guest_abi_minor")
	input.snp.policy_single_socket == query_reference_value("snp_single_socket")
	input.snp.policy_smt_allowed == query_reference_value("snp_smt_allowed")
}

# ---------------------------------------------------------------------------------------
# Intel TDX
# ---------------------------------------------------------------------------------------

# RTMR1 holds the kernel, initrd and boot loader; RTMR2 the command line.
tdx_rtmrs_ok if {
	input.tdx
	accepted(input.tdx.quote.body.rtmr_1, "rtmr_1")
	accepted(input.tdx.quote.body.rtmr_2, "rtmr_2")
}

tdx_kernel_event_ok if {
	some event in input.tdx.uefi_event_logs
	event.type_name == "EV_EFI_BOOT_SERVICES_APPLICATION"
	"File(kernel)" in event.details.device_paths
	some digest in event.digests
	digest.digest == query_reference_value("tdvfkernel")
}

tdx_kernel_params_event_ok if {
	some event in input.tdx.uefi_event_logs
	event.type_name == "EV_EVENT_TAG"
	event.details.string == "LOADED_IMAGE::LoadOptions"
	some digest in event.digests
	digest.digest == query_reference_value("tdvfkernelparams")
}

# A TDX quote (tee_type 0x81) signed by Intel's quoting enclave, firmware (MRTD) known,
# platform TCB current and no collateral expired. Deployments that accept an out-of-date
# TCB can compare input.tdx.tcb_date with time.parse_rfc3339_ns instead of tcb_status.
tdx_platform_ok if {
	input.tdx.quote.header.tee_type == "81000000"
	input.tdx.quote.header.vendor_id == "939a7233f79c4ca9940a0db3957f0607"
	accepted(input.tdx.quote.body.mr_td, "mr_td")
	input.tdx.tcb_status == "UpToDate"
	input.tdx.collateral_expiration_status == "0"
}

tdx_config_ok if {
	input.tdx.td_attributes.debug == false
	accepted(input.tdx.quote.body.xfam, "xfam")
}

# ---------------------------------------------------------------------------------------
# Azure confidential VMs with a paravisor vTPM
# ---------------------------------------------------------------------------------------

az_snp_launch_ok if {
	accepted(input["az-snp-vtpm"].measurement, "measurement")
	accepted(input["az-snp-vtpm"].tpm.pcr11, "snp_pcr11")
}

az_snp_platform_ok if {
	accepted(input["az-snp-vtpm"].reported_tcb_bootloader, "tcb_bootloader")
	accepted(input["az-snp-vtpm"].reported_tcb_microcode, "tcb_microcode")
	accepted(input["az-snp-vtpm"].reported_tcb_snp, "tcb_snp")
	accepted(input["az-snp-vtpm"].reported_tcb_tee, "tcb_tee")
}

az_snp_config_ok if {
	accepted(input["az-snp-vtpm"].platform_smt_enabled, "smt_enabled")
	accepted(input["az-snp-vtpm"].platform_tsme_enabled, "tsme_enabled")
	accepted(input["az-snp-vtpm"].policy_abi_major, "abi_major")
	accepted(input["az-snp-vtpm"].policy_abi_minor, "abi_minor")
	accepted(input["az-snp-vtpm"].policy_single_socket, "single_socket")
	accepted(input["az-snp-vtpm"].policy_smt_allowed, "smt_allowed")
}

az_tdx_launch_ok if {
	accepted(input["az-tdx-vtpm"].tpm.pcr11, "tdx_pcr11")
}

# Unlike bare-metal TDX, the collateral expiration status is not checked here.
az_tdx_platform_ok if {
	input["az-tdx-vtpm"].quote.header.tee_type == "81000000"
	input["az-tdx-vtpm"].quote.header.vendor_id == "939a7233f79c4ca9940a0db3957f0607"
	accepted(input["az-tdx-vtpm"].quote.body.mr_td, "mr_td")
	input["az-tdx-vtpm"].tcb_status == "UpToDate"
}

az_tdx_config_ok if {
	accepted(input["az-tdx-vtpm"].quote.body.xfam, "xfam")
}

# ---------------------------------------------------------------------------------------
# TPM
# ---------------------------------------------------------------------------------------

# PCR11 is the unified kernel image measurement; the attestation key must be known.
tpm_boot_ok if {
	accepted(input.tpm.pcr11, "tpm_pcr11")
	accepted(input.tpm.ak_public, "trusted_aks")
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
