//! Why a plan cannot be made. Every error carries a stable code (`smig::plan::*`) and help.

use super::{InvariantReport, Plan};

/// Why [`build`](super::build) refused to plan.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum PlanError {
    /// The VM's domain runs on no discovered host.
    #[error("vm.{vm}: domain `{domain}` was discovered on no host")]
    #[diagnostic(
        code(smig::plan::vm_not_discovered),
        help("smig moves VMs that exist; check the domain name (`domain` in the vm block) and that discovery reached every host")
    )]
    VmNotDiscovered { vm: String, domain: String },

    /// The VM's domain is active (running or paused) on more than one host, or defined on
    /// several hosts while active on none.
    #[error("vm.{vm}: domain `{domain}` is {how} on several hosts: {hosts}")]
    #[diagnostic(
        code(smig::plan::vm_on_two_hosts),
        help("a VM must live on exactly one host before smig plans a move; resolve the duplicate by hand first")
    )]
    VmOnTwoHosts {
        vm: String,
        domain: String,
        how: &'static str,
        hosts: String,
    },

    /// A host the plan acts on was not in the discovered landscape.
    #[error("host {host} was not discovered, but {needed_by} needs it")]
    #[diagnostic(
        code(smig::plan::host_not_discovered),
        help("check that discovery can reach the host (its `libvirt` URI and `network` target)")
    )]
    HostNotDiscovered { host: String, needed_by: String },

    /// A host named by the configuration or found by discovery is not declared.
    #[error("{what}: host {host} is not declared in any environment")]
    #[diagnostic(
        code(smig::plan::unknown_host),
        help("declare the host in its environment block, or move the VM off it by hand")
    )]
    UnknownHost { what: String, host: String },

    /// A secure_link names a VM that is not declared.
    #[error("secure_link.{link} names vm.{vm}, which is not declared")]
    #[diagnostic(code(smig::plan::unknown_vm))]
    UnknownVm { link: String, vm: String },

    /// A `--target` or `--exclude` address names nothing.
    #[error("--{flag} {address}: no such resource")]
    #[diagnostic(
        code(smig::plan::unknown_target),
        help("addresses look like vm.NAME, secure_link.NAME or subnet.NAME")
    )]
    UnknownTarget { flag: &'static str, address: String },

    /// The step graph has a cycle (a bug in a pass; never expected).
    #[error("the step graph has a cycle through {step}")]
    #[diagnostic(code(smig::plan::cycle))]
    Cycle { step: String },

    /// The built plan breaks a security invariant; it is kept for display.
    #[error("the plan breaks security invariants:\n{}", report.failures())]
    #[diagnostic(
        code(smig::plan::invariant_violated),
        help("a migration into or out of an untrusted environment needs `qemu+tls://` libvirt URIs on both hosts, or `allow_insecure_transport = true` in the policy block")
    )]
    InvariantViolated {
        report: Box<InvariantReport>,
        plan: Box<Plan>,
    },

    /// Several problems at once.
    #[error("{} problems prevent planning", errors.len())]
    #[diagnostic(code(smig::plan::multiple))]
    Multiple {
        #[related]
        errors: Vec<PlanError>,
    },
}

impl PlanError {
    /// No error, one error, or all of them together.
    pub(crate) fn combine(mut errors: Vec<PlanError>) -> Option<PlanError> {
        match errors.len() {
            0 => None,
            1 => Some(errors.remove(0)),
            _ => Some(PlanError::Multiple { errors }),
        }
    }
}
