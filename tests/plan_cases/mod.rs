//! The golden plan cases as Rust fixtures: one per planner branch. `testdata/plans/<case>/`
//! holds the same landscapes as `main.smig.hcl` + `observed.json` (checked by
//! `tests/plan_golden_inputs.rs`).

use smig::model::{MigrationMode, Strategy};
use smig::plan::synthetic::Fixture;

/// A dc with three hosts and a routing core, a cloud with two hosts, subnets `app` and `data`.
fn two_sites() -> Fixture {
    Fixture::new()
        .environment("dc", true, &["hv1", "hv2", "hv3"], true)
        .environment("cloud", false, &["c1", "c2"], false)
        .subnet("app", "192.168.10.0/24")
        .subnet("data", "192.168.20.0/24")
        .tls_ports(&[443, 636, 5432])
}

/// Every case, by directory name.
pub fn cases() -> Vec<(&'static str, Fixture)> {
    vec![
        ("01-live-block-first", Fixture::reference()),
        (
            "02-live-prestaged",
            Fixture::reference().migration("db", MigrationMode::Live, Strategy::Prestaged),
        ),
        (
            "03-cold",
            Fixture::reference().migration("db", MigrationMode::Cold, Strategy::BlockFirst),
        ),
        (
            "04-whole-subnet",
            two_sites()
                .vm("web", "app", "192.168.10.11", "dc.hv1", "dc.hv1")
                .vm("db1", "data", "192.168.20.11", "dc.hv2", "cloud.c1")
                .vm("db2", "data", "192.168.20.12", "dc.hv2", "cloud.c1")
                .link("web_db1", &["web", "db1"])
                .link("web_db2", &["web", "db2"]),
        ),
        (
            "05-nonmanaged-connections",
            Fixture::reference()
                // unsecured: neither IPsec nor a TLS port
                .connection("db", "192.168.10.12:3306", "192.168.10.11:51000", false)
                // secured: a policy TLS port
                .connection("db", "192.168.10.12:5432", "192.168.10.11:51001", false)
                // secured: carried by IPsec
                .connection("db", "192.168.10.12:8080", "192.168.10.11:51002", true),
        ),
        (
            "06-back-to-trusted",
            Fixture::reference()
                .vm("db", "app", "192.168.10.12", "cloud.c1", "dc.hv2")
                .sa_up("web_db", "dc.hv1", "cloud.c1"),
        ),
        (
            "07-trusted-to-trusted",
            two_sites()
                .vm("web", "app", "192.168.10.11", "dc.hv1", "dc.hv1")
                .vm("db", "app", "192.168.10.12", "dc.hv2", "dc.hv3")
                .link("web_db", &["web", "db"]),
        ),
        (
            "08-new-link-only",
            Fixture::reference().vm("db", "app", "192.168.10.12", "cloud.c1", "cloud.c1"),
        ),
        (
            "09-several-vms",
            two_sites()
                .vm("web", "app", "192.168.10.11", "dc.hv1", "dc.hv1")
                .vm("db1", "app", "192.168.10.21", "dc.hv2", "cloud.c1")
                .vm("db2", "app", "192.168.10.22", "dc.hv2", "cloud.c1")
                .vm("cache", "app", "192.168.10.31", "dc.hv2", "dc.hv3")
                .link("app", &["web", "db1", "db2"]),
        ),
        (
            "10-no-changes",
            Fixture::reference()
                .vm("db", "app", "192.168.10.12", "cloud.c1", "cloud.c1")
                .sa_up("web_db", "dc.hv1", "cloud.c1"),
        ),
        (
            "11-removed-link",
            Fixture::reference()
                .vm("db", "app", "192.168.10.12", "cloud.c1", "cloud.c1")
                .sa_up("web_db", "dc.hv1", "cloud.c1")
                .sa_up("old_link", "dc.hv1", "cloud.c1"),
        ),
        (
            "12-insecure-transport-allowed",
            Fixture::reference()
                .cleartext_libvirt("cloud.c1")
                .allow_insecure_transport(),
        ),
    ]
}

/// The fixture of one case.
pub fn case(name: &str) -> Fixture {
    cases()
        .into_iter()
        .find(|(n, _)| *n == name)
        .map(|(_, f)| f)
        .unwrap_or_else(|| panic!("no case {name}"))
}
