//! The KVM machine: VM, vCPUs, devices, built-in guest.
