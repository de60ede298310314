//! Loading the examples and hand-written configurations into a landscape.

use smig::config::{self, Code, Mode, SourceFile, VarInputs};
use smig::model::{HostId, IpsecAuth, MigrationMode, Strategy};

fn reference() -> SourceFile {
    SourceFile::new(
        "examples/reference/main.smig.hcl",
        include_str!("../examples/reference/main.smig.hcl"),
    )
}

fn codes(src: &str, mode: Mode) -> Vec<Code> {
    match config::load(
        &[SourceFile::new("t.smig.hcl", src)],
        &VarInputs::default(),
        mode,
    ) {
        Ok(_) => Vec::new(),
        Err(e) => e.codes(),
    }
}

#[test]
fn reference_landscape_validates() {
    let l = config::load(&[reference()], &VarInputs::default(), Mode::Validate).unwrap();
    assert_eq!(l.environments.len(), 2);
    assert_eq!(l.hosts().count(), 3);
    assert_eq!(l.subnets.len(), 1);
    assert_eq!(l.vms.len(), 2);
    assert_eq!(l.secure_links.len(), 1);
    let db = &l.vms["db"];
    assert_eq!(db.host, HostId::new("cloud", "c1"));
    assert_eq!(db.migration.mode, MigrationMode::Live);
    assert_eq!(db.migration.strategy, Strategy::BlockFirst);
    assert_eq!(db.migration.max_downtime_ms, Some(300));
    assert_eq!(db.domain, "db");
    assert_eq!(l.vms["web"].host, HostId::new("dc", "hv1"));
    assert!(l.environments["dc"].trusted);
    assert!(!l.environments["cloud"].trusted);
    assert_eq!(
        l.environments["dc"].routing_core.as_ref().unwrap().network,
        "netns:dc-core"
    );
    assert_eq!(l.policy.tls_ports, vec![443, 636, 5432]);
    assert_eq!(l.policy.parallelism, 4);
    let link = &l.secure_links["web_db"];
    assert_eq!(link.between, vec!["web", "db"]);
    assert_eq!(link.ipsec.proposals, vec!["aes256-sha256-modp2048"]);
}

#[test]
fn reference_landscape_needs_its_psk_at_plan_time() {
    let err = config::load(&[reference()], &VarInputs::default(), Mode::Plan).unwrap_err();
    assert_eq!(err.codes(), vec![Code::MissingVariable]);

    let vars = VarInputs {
        cli: vec![("web_db_psk".into(), "canary-7f3a".into())],
        ..Default::default()
    };
    let l = config::load(&[reference()], &vars, Mode::Plan).unwrap();
    match &l.secure_links["web_db"].ipsec.auth {
        IpsecAuth::Psk(s) => assert_eq!(s.expose(), "canary-7f3a"),
        other => panic!("expected a psk, got {other:?}"),
    }
    assert!(!format!("{l:?}").contains("canary-7f3a"));
    assert!(!serde_json::to_string(&l).unwrap().contains("canary-7f3a"));
}

#[test]
fn variable_precedence_cli_over_files_over_env() {
    let src = r#"
variable "n" { type = number }
variable "psk" {
  type = string
  sensitive = true
}
subnet "app" { cidr = "10.0.0.0/24" }
environment "dc" {
  trusted = true
  host "h" {
    libvirt = "qemu+tls://h/system"
    address = "10.9.0.1"
    network = "netns:h"
  }
}
vm "a" {
  host = environment.dc.host.h
  subnet = subnet.app
  address = cidrhost(subnet.app.cidr, var.n)
}
"#;
    let mut vars = VarInputs {
        env: vec![("n".into(), "5".into()), ("psk".into(), "x".into())],
        ..Default::default()
    };
    let l = config::load(&[SourceFile::new("a.smig.hcl", src)], &vars, Mode::Plan).unwrap();
    assert_eq!(l.vms["a"].address.to_string(), "10.0.0.5");
    vars.files.push(SourceFile::new("v.hcl", "n = 6\n"));
    let l = config::load(&[SourceFile::new("a.smig.hcl", src)], &vars, Mode::Plan).unwrap();
    assert_eq!(l.vms["a"].address.to_string(), "10.0.0.6");
    vars.cli.push(("n".into(), "7".into()));
    vars.cli.push(("n".into(), "8".into()));
    let l = config::load(&[SourceFile::new("a.smig.hcl", src)], &vars, Mode::Plan).unwrap();
    assert_eq!(l.vms["a"].address.to_string(), "10.0.0.8");
}

#[test]
fn count_and_for_each_expand_with_terraform_names() {
    let src = r#"
locals {
  hosts = ["hv1", "hv2"]
  dbs   = { alpha = 20, beta = 21 }
}
environment "dc" {
  trusted = true
  host "hv1" {
    libvirt = "qemu+tls://10.77.0.11/system"
    address = "10.77.0.11"
    network = "netns:dc-hv1"
  }
  host "hv2" {
    libvirt = "qemu+tls://10.77.0.12/system"
    address = "10.77.0.12"
    network = "netns:dc-hv2"
  }
}
subnet "app" { cidr = "192.168.0.0/16" }
vm "web" {
  count   = 3
  host    = environment.dc.host[local.hosts[count.index % 2]]
  subnet  = subnet.app
  address = cidrhost(subnet.app.cidr, 100 + count.index)
}
vm "db" {
  for_each = local.dbs
  host     = "dc.hv2"
  subnet   = subnet.app
  address  = cidrhost(subnet.app.cidr, each.value)
  migration {
    mode     = "cold"
    strategy = "prestaged"
  }
}
secure_link "web_db" {
  between = [vm.web, vm.db]
  ipsec {
    proposals = ["aes256-sha256-modp2048"]
    cert      = "/etc/pki/a.pem"
    key       = "/etc/pki/a.key"
  }
}
secure_link "pair" {
  count   = 2
  between = [vm.web[count.index], vm.web[count.index + 1]]
  ipsec {
    proposals = ["aes256"]
    psk       = "k${count.index}"
  }
}
"#;
    let l = config::load(
        &[SourceFile::new("a.smig.hcl", src)],
        &VarInputs::default(),
        Mode::Plan,
    )
    .unwrap();
    let names: Vec<&str> = l.vms.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        vec![
            "db[\"alpha\"]",
            "db[\"beta\"]",
            "web[0]",
            "web[1]",
            "web[2]"
        ]
    );
    assert_eq!(l.vms["web[1]"].host, HostId::new("dc", "hv2"));
    assert_eq!(l.vms["web[2]"].address.to_string(), "192.168.0.102");
    assert_eq!(l.vms["web[2]"].domain, "web-2");
    assert_eq!(l.vms["db[\"beta\"]"].address.to_string(), "192.168.0.21");
    assert_eq!(l.vms["db[\"beta\"]"].domain, "db-beta");
    assert_eq!(l.vms["db[\"beta\"]"].migration.mode, MigrationMode::Cold);
    assert_eq!(l.secure_links["web_db"].between.len(), 5);
    assert_eq!(l.secure_links["pair[1]"].between, vec!["web[1]", "web[2]"]);
}

#[test]
fn missing_variable_is_fine_when_validating_and_not_when_planning() {
    let src = "variable \"x\" {}\nlocals { y = var.x }\n";
    assert_eq!(codes(src, Mode::Validate), vec![]);
    assert_eq!(codes(src, Mode::Plan), vec![Code::MissingVariable]);
}

/// A landscape of `n` VMs written with `count`, half of them paired by secure links.
pub fn generated(n: usize) -> String {
    let mut s = String::new();
    s.push_str("variable \"psk\" {\n  type      = string\n  sensitive = true\n  default   = \"bench-only\"\n}\n\n");
    for (env, trusted, prefix, net) in [("dc", true, "hv", 77), ("cloud", false, "c", 78)] {
        s.push_str(&format!(
            "environment \"{env}\" {{\n  trusted = {trusted}\n"
        ));
        for i in 0..10 {
            s.push_str(&format!(
                "  host \"{prefix}{i}\" {{\n    libvirt = \"qemu+tls://10.{net}.0.{i}/system\"\n    address = \"10.{net}.0.{i}\"\n    network = \"netns:{env}-{prefix}{i}\"\n  }}\n"
            ));
        }
        s.push_str("}\n\n");
    }
    s.push_str(&format!(
        r#"subnet "app" {{
  cidr = "10.0.0.0/8"
}}

vm "web" {{
  count   = {n}
  host    = count.index % 5 == 0 ? environment.cloud.host["c${{count.index % 10}}"] : environment.dc.host["hv${{count.index % 10}}"]
  subnet  = subnet.app
  address = cidrhost(subnet.app.cidr, count.index + 10)
  migration {{
    mode            = count.index % 2 == 0 ? "live" : "cold"
    max_downtime_ms = 300
  }}
}}

secure_link "pair" {{
  count   = {half}
  between = [vm.web[count.index * 2], vm.web[count.index * 2 + 1]]
  ipsec {{
    proposals = ["aes256-sha256-modp2048"]
    psk       = var.psk
  }}
}}
"#,
        half = n / 2
    ));
    s
}

/// Time this thread has spent on a CPU, in nanoseconds (Linux; `None` elsewhere). Wall time
/// on a shared machine overstates the cost; this does not.
fn thread_cpu_ns() -> Option<u64> {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[test]
fn ten_thousand_vms_load_in_bounded_time() {
    let src = generated(10_000);
    let cpu0 = thread_cpu_ns();
    let start = std::time::Instant::now();
    let l = config::load(
        &[SourceFile::new("big.smig.hcl", src)],
        &VarInputs::default(),
        Mode::Plan,
    )
    .unwrap();
    let took = start.elapsed();
    let cpu = cpu0
        .zip(thread_cpu_ns())
        .map(|(a, b)| std::time::Duration::from_nanos(b - a));
    println!("loaded 10000 VMs and 5000 secure links in {took:?} (on CPU: {cpu:?})");
    assert_eq!(l.vms.len(), 10_000);
    assert_eq!(l.secure_links.len(), 5_000);
    assert_eq!(l.vms["web[5]"].host, HostId::new("cloud", "c5"));
    assert_eq!(
        l.secure_links["pair[7]"].between,
        vec!["web[14]", "web[15]"]
    );
    // Generous for unoptimised builds on a shared 2-core machine; release is measured apart.
    assert!(took < std::time::Duration::from_secs(20), "took {took:?}");

    // The VMs alone.
    let src = generated(10_000).replace("count   = 5000", "count   = 0");
    let cpu0 = thread_cpu_ns();
    let start = std::time::Instant::now();
    let l = config::load(
        &[SourceFile::new("big.smig.hcl", src)],
        &VarInputs::default(),
        Mode::Plan,
    )
    .unwrap();
    let took = start.elapsed();
    let cpu = cpu0
        .zip(thread_cpu_ns())
        .map(|(a, b)| std::time::Duration::from_nanos(b - a));
    println!("loaded 10000 VMs in {took:?} (on CPU: {cpu:?})");
    assert_eq!((l.vms.len(), l.secure_links.len()), (10_000, 0));
}

#[test]
fn hostile_nesting_gives_a_diagnostic() {
    let deep = format!(
        "locals {{\n  x = {}1{}\n}}\n",
        "(".repeat(10_000),
        ")".repeat(10_000)
    );
    assert_eq!(codes(&deep, Mode::Validate), vec![Code::TooDeep]);
    assert_eq!(
        codes(&"vm {\n".repeat(10_000), Mode::Validate),
        vec![Code::TooDeep]
    );
    assert_eq!(
        codes(&format!("a = {}", "[for x in ".repeat(100)), Mode::Validate),
        vec![Code::TooDeep]
    );
    assert_eq!(codes("{:{", Mode::Validate), vec![Code::Syntax]);
}

#[test]
fn sensitive_values_from_anywhere_never_reach_diagnostics() {
    let src = r#"
variable "psk" {
  type      = string
  sensitive = true
  validation {
    condition     = length(var.psk) > 100
    error_message = "too short: ${var.psk}"
  }
}
variable "n" {
  type      = number
  sensitive = true
}
environment "dc" {
  trusted = false
  host "h" {
    libvirt = var.psk
    address = var.psk
    network = "netns:h"
  }
}
locals {
  a = var.psk + 1
  b = cidrhost(var.psk, 1)
  c = [for x in var.psk: x]
}
"#;
    for (cli, env, file) in [
        (
            vec![
                ("psk".to_string(), "canary-cli-1234".to_string()),
                ("n".into(), "canary-n".into()),
            ],
            vec![],
            None,
        ),
        (
            vec![],
            vec![
                ("psk".to_string(), "canary-env-1234".to_string()),
                ("n".into(), "canary-n".into()),
            ],
            None,
        ),
        (
            vec![],
            vec![],
            Some("psk = \"canary-file-1234\"\nn = \"canary-n\"\nx = \"canary-x\"\n"),
        ),
    ] {
        let vars = VarInputs {
            cli,
            env,
            files: file
                .map(|f| vec![SourceFile::new("secrets.hcl", f)])
                .unwrap_or_default(),
        };
        let err =
            config::load(&[SourceFile::new("s.smig.hcl", src)], &vars, Mode::Plan).unwrap_err();
        let mut rendered = String::new();
        miette::GraphicalReportHandler::new_themed(miette::GraphicalTheme::unicode_nocolor())
            .render_report(&mut rendered, &err)
            .unwrap();
        let debug = format!("{err:?}");
        assert!(!rendered.contains("canary"), "{rendered}");
        assert!(!debug.contains("canary"), "{debug}");
        assert!(err.codes().contains(&Code::Validation), "{:?}", err.codes());
    }
}

#[test]
fn unknown_values_in_validate_mode_are_not_errors() {
    let src = r#"
variable "n" { type = number }
variable "target" { type = string }
environment "dc" {
  trusted = true
  host "h" {
    libvirt = "qemu+tls://h/system"
    address = "10.9.0.1"
    network = "netns:h"
  }
}
subnet "app" { cidr = "10.0.0.0/24" }
vm "web" {
  count   = var.n
  host    = environment.dc.host.h
  subnet  = subnet.app
  address = cidrhost(subnet.app.cidr, count.index + 1)
}
vm "db" {
  host    = var.target
  subnet  = subnet.app
  address = "10.0.0.200"
}
secure_link "l" {
  between = concat(vm.web, [vm.db])
  ipsec {
    proposals = ["aes256"]
    psk       = "k"
  }
}
"#;
    assert_eq!(codes(src, Mode::Validate), vec![]);
    let mut plan = codes(src, Mode::Plan);
    plan.sort_by_key(|c| c.as_str());
    assert_eq!(plan, vec![Code::MissingVariable, Code::MissingVariable]);
}

/// A configuration large enough to be parsed in parts loads as the same text parsed whole
/// (CRLF line ends: no cut point is found), and an error in a late part is reported at its
/// line in the file.
#[test]
fn a_large_configuration_loads_alike_in_parts_and_whole() {
    use smig::plan::synthetic::{generate, Fixture, SyntheticSpec};
    let (desired, observed) = generate(&SyntheticSpec::new(2_000));
    let text = Fixture::from_parts(desired, observed).to_hcl();
    assert!(text.len() > 512 * 1024, "{} bytes", text.len());
    let load = |text: &str| {
        config::load(
            &[SourceFile::new("big.smig.hcl", text)],
            &VarInputs::default(),
            Mode::Plan,
        )
    };
    let in_parts = load(&text).unwrap();
    let whole = load(&text.replace('\n', "\r\n")).unwrap();
    assert_eq!(in_parts.vms.len(), 2_000);
    assert_eq!(format!("{in_parts:?}"), format!("{whole:?}"));

    let at = text.rfind("\nvm \"").unwrap() + 1;
    let line = text[..at].matches('\n').count() + 1;
    let broken = format!(
        "{}vm \"x\" {{\n  colour = 1\n}}\n\n{}",
        &text[..at],
        &text[at..]
    );
    let err = load(&broken).unwrap_err();
    assert_eq!(err.codes()[0], Code::UnknownAttribute);
    let shown = format!("{:?}", miette::Report::new(err));
    assert!(
        shown.contains(&format!("big.smig.hcl:{}:3", line + 1)),
        "{shown}"
    );
}
