# SPDX-License-Identifier: Apache-2.0
#
# Attestation policy `default_gpu`: appraises one GPU device (the `gpu` TEE class:
# `sampledevice`, `nvidia`). Same contract as `default_cpu`: `input` is the device's
# annotated evidence, reference values come from the host function
# query_reference_value(id) (null when not registered), and the result is
# data.policy.trust_claims. GPUs carry no extensions.
#
# Decisions follow Trustee's shipped GPU policy, with one deliberate change for the
# sample device, noted below.

package policy

import rego.v1

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

# ---------------------------------------------------------------------------------------
# sampledevice (software only; proves nothing, for tests)
# ---------------------------------------------------------------------------------------

# Trustee's GPU policy reads `data.reference.device_svn` here, but the attestation
# service loads no `data` document any more, so that rule can never hold and a sample
# device is always "unrecognized". Trustee's own integration tests replace the policy
# with one that calls query_reference_value("device_svn"); we ship that reading, so
# registering the reference value `device_svn` (e.g. ["2"]) is what it takes.
hardware := 2 if {
	input.sampledevice
	input.sampledevice.svn in query_reference_value("device_svn")
}

# ---------------------------------------------------------------------------------------
# NVIDIA GPUs (claims the verifier derives from the GPU attestation report and the
# reference integrity manifests, RIMs)
# ---------------------------------------------------------------------------------------

# The attestation report is signed by a genuine, unrevoked GPU certificate chain whose
# firmware id matches, and the architecture is the expected one.
hardware := 2 if {
	input.nvidia
	input.nvidia["x-nvidia-gpu-attestation-report-cert-chain"]["x-nvidia-cert-status"] == "valid"
	input.nvidia["x-nvidia-gpu-attestation-report-cert-chain"]["x-nvidia-cert-ocsp-status"] == "good"
	input.nvidia["x-nvidia-gpu-attestation-report-cert-chain-fwid-match"]
	input.nvidia["x-nvidia-gpu-attestation-report-parsed"]
	input.nvidia["x-nvidia-gpu-attestation-report-signature-verified"]
	input.nvidia["x-nvidia-gpu-arch-check"]
}

# Secure boot on and debug off, with VBIOS and driver versions on the allow lists (2);
# without matching versions, the safe settings alone earn 3.
configuration := 2 if {
	input.nvidia.secboot
	input.nvidia.dbgstat == "disabled"
	input.nvidia["x-nvidia-gpu-vbios-version"] in query_reference_value("allowed_vbios_versions")
	input.nvidia["x-nvidia-gpu-driver-version"] in query_reference_value("allowed_driver_versions")
} else := 3 if {
	input.nvidia.secboot
	input.nvidia.dbgstat == "disabled"
}

# The driver and VBIOS RIMs were fetched, are signed by a valid, unrevoked chain, and
# every measurement in the report matched them.
executables := 3 if {
	input.nvidia
	input.nvidia["x-nvidia-gpu-vbios-rim-cert-chain"]["x-nvidia-cert-status"] == "valid"
	input.nvidia["x-nvidia-gpu-vbios-rim-cert-chain"]["x-nvidia-cert-ocsp-status"] == "good"

	input.nvidia["x-nvidia-gpu-driver-rim-fetched"]
	input.nvidia["x-nvidia-gpu-driver-rim-measurements-available"]
	input.nvidia["x-nvidia-gpu-driver-rim-schema-validated"]
	input.nvidia["x-nvidia-gpu-driver-rim-signature-verified"]
	input.nvidia["x-nvidia-gpu-driver-rim-version-match"]

	input.nvidia["x-nvidia-gpu-vbios-rim-fetched"]
	input.nvidia["x-nvidia-gpu-vbios-rim-measurements-available"]
	input.nvidia["x-nvidia-gpu-vbios-rim-schema-validated"]
	input.nvidia["x-nvidia-gpu-vbios-rim-signature-verified"]
	input.nvidia["x-nvidia-gpu-vbios-rim-version-match"]

	input.nvidia.measres == "success"
}
