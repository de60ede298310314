//! The driver against libvirt's test driver (`test:///FILE`: a private in-memory hypervisor per
//! connection, no daemon). It supports listing, state, define/undefine, start, shutdown,
//! destroy, suspend and resume; not device updates, job info or migration, which the driver
//! reports as failures (the lab test covers them on real hosts).

use super::*;
use crate::drivers::AbortSignal;
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};

const NODE_A: &str = r#"<node xmlns:test='http://libvirt.org/schemas/domain/test/1.0'>
  <domain type='test'>
    <name>web</name>
    <uuid>6695eb01-f6a4-8304-79aa-97f2502e1901</uuid>
    <memory>131072</memory><vcpu>1</vcpu><os><type>hvm</type></os>
    <devices>
      <interface type='bridge'><mac address='52:54:00:0A:00:0B'/><source bridge='br-app'/></interface>
    </devices>
  </domain>
  <domain type='test'>
    <name>batch1</name>
    <uuid>6695eb01-f6a4-8304-79aa-97f2502e1902</uuid>
    <memory>131072</memory><vcpu>1</vcpu><os><type>hvm</type></os>
    <devices>
      <interface type='bridge'><mac address='52:54:00:14:00:0b'/><source bridge='br-batch'/><link state='down'/></interface>
    </devices>
    <test:runstate>3</test:runstate>
  </domain>
  <domain type='test'>
    <name>idle</name>
    <uuid>6695eb01-f6a4-8304-79aa-97f2502e1903</uuid>
    <memory>131072</memory><vcpu>1</vcpu><os><type>hvm</type></os>
    <devices>
      <interface type='bridge'><mac address='52:54:00:0a:00:0e'/><source bridge='br-app'/></interface>
    </devices>
    <test:runstate>5</test:runstate>
  </domain>
  <domain type='test'>
    <name>scratch</name>
    <uuid>6695eb01-f6a4-8304-79aa-97f2502e1904</uuid>
    <memory>131072</memory><vcpu>1</vcpu><os><type>hvm</type></os>
    <test:transient/>
  </domain>
</node>"#;

const NODE_B: &str = r#"<node>
  <domain type='test'>
    <name>db</name>
    <uuid>6695eb01-f6a4-8304-79aa-97f2502e1905</uuid>
    <memory>131072</memory><vcpu>1</vcpu><os><type>hvm</type></os>
    <devices>
      <interface type='bridge'><mac address='52:54:00:0a:00:0c'/><source bridge='br-app'/></interface>
    </devices>
  </domain>
</node>"#;

const NEW_DOMAIN: &str = r#"<domain type='test'>
  <name>fresh</name>
  <uuid>6695eb01-f6a4-8304-79aa-97f2502e1906</uuid>
  <memory>131072</memory><vcpu>1</vcpu><os><type>hvm</type></os>
  <devices>
    <interface type='bridge'><mac address='52:54:00:0a:00:1f'/><source bridge='br-app'/></interface>
  </devices>
</domain>"#;

fn a() -> HostId {
    HostId::new("dc", "hv1")
}
fn b() -> HostId {
    HostId::new("dc", "hv2")
}

/// Two test hypervisors, each from its own node file (kept alive with the driver).
struct Lab {
    driver: Libvirt,
    uri_b: String,
    _files: Vec<tempfile::NamedTempFile>,
}

fn node(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new()
        .suffix(".xml")
        .tempfile()
        .expect("temp file");
    f.write_all(text.as_bytes()).expect("write node file");
    f
}

fn lab_with(options: LibvirtOptions) -> Lab {
    let fa = node(NODE_A);
    let fb = node(NODE_B);
    let uri_a = format!("test://{}", fa.path().display());
    let uri_b = format!("test://{}", fb.path().display());
    let hosts = BTreeMap::from([
        (a(), LibvirtHost::new(uri_a)),
        (b(), LibvirtHost::new(uri_b.clone())),
    ]);
    Lab {
        driver: Libvirt::new(hosts, options),
        uri_b,
        _files: vec![fa, fb],
    }
}

fn lab() -> Lab {
    lab_with(LibvirtOptions {
        shutdown_grace: Duration::ZERO,
        ..LibvirtOptions::default()
    })
}

fn request(lab: &Lab, domain: &str, mode: MigrationMode) -> MigrationRequest {
    MigrationRequest {
        domain: domain.into(),
        from: a(),
        to: b(),
        to_uri: lab.uri_b.clone(),
        mode,
        tls: false,
        paused: false,
        max_downtime_ms: None,
        bandwidth_mibps: None,
    }
}

fn counting() -> (ProgressSink, Arc<Mutex<Vec<MigrationProgress>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    (Arc::new(move |p| lock(&s).push(p)), seen)
}

async fn state(d: &Libvirt, host: &HostId, name: &str) -> Option<DomainState> {
    d.domain(host, name).await.expect("domain").map(|d| d.state)
}

#[test]
fn pki_path_goes_into_tls_uris_only() {
    let mut h = LibvirtHost::new("qemu+tls://10.77.0.11/system");
    assert_eq!(h.connect_uri(), "qemu+tls://10.77.0.11/system");
    h.pki_path = Some("/run/pki".into());
    assert_eq!(
        h.connect_uri(),
        "qemu+tls://10.77.0.11/system?pkipath=/run/pki"
    );
    h.uri = "qemu+tls://10.77.0.11/system?no_verify=0".into();
    assert_eq!(
        h.connect_uri(),
        "qemu+tls://10.77.0.11/system?no_verify=0&pkipath=/run/pki"
    );
    h.uri = "qemu+tls://10.77.0.11/system?pkipath=/mine".into();
    assert_eq!(
        h.connect_uri(),
        "qemu+tls://10.77.0.11/system?pkipath=/mine"
    );
    h.uri = "qemu+tcp://10.77.0.11/system".into();
    assert_eq!(h.connect_uri(), "qemu+tcp://10.77.0.11/system");
}

#[tokio::test]
async fn discovers_states_persistence_nics_and_links_on_every_host() {
    let lab = lab();
    let all = lab.driver.inspect_all().await;
    assert_eq!(all.len(), 2);
    let on_a = all[&a()].as_ref().expect("host a");
    let names: Vec<&str> = on_a.keys().map(String::as_str).collect();
    assert_eq!(names, ["batch1", "idle", "scratch", "web"]);

    let web = &on_a["web"];
    assert_eq!(web.domain.state, DomainState::Running);
    assert!(web.domain.persistent);
    assert_eq!(web.domain.nic_link_up, Some(true));
    assert_eq!(web.nics.len(), 1);
    assert_eq!(web.nics[0].mac.as_deref(), Some("52:54:00:0a:00:0b"));
    assert_eq!(web.nics[0].source.as_deref(), Some("br-app"));
    assert_eq!(web.job, None);

    let batch1 = &on_a["batch1"];
    assert_eq!(batch1.domain.state, DomainState::Paused);
    assert_eq!(batch1.domain.nic_link_up, Some(false));

    assert_eq!(on_a["idle"].domain.state, DomainState::ShutOff);
    assert!(on_a["idle"].domain.persistent);

    let scratch = &on_a["scratch"].domain;
    assert_eq!(scratch.state, DomainState::Running);
    assert!(!scratch.persistent);
    assert_eq!(scratch.nic_link_up, None);

    let on_b = all[&b()].as_ref().expect("host b");
    assert_eq!(on_b.keys().collect::<Vec<_>>(), ["db"]);

    // The trait's view: the model's domains, per host, in the order asked.
    let of = lab.driver.domains_of(&[b(), a()]).await;
    assert_eq!(of[0].0, b());
    assert_eq!(of[1].0, a());
    assert_eq!(
        of[1].1.as_ref().expect("a")["batch1"],
        Domain {
            state: DomainState::Paused,
            persistent: true,
            nic_link_up: Some(false)
        }
    );
    assert_eq!(
        lab.driver.domains(&a()).await.expect("domains")["web"],
        web.domain
    );
    assert_eq!(lab.driver.domain(&b(), "nope").await.expect("lookup"), None);
}

#[tokio::test]
async fn a_closed_port_is_unreachable_naming_the_host_without_hiding_the_others() {
    let lab = lab();
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let gone = HostId::new("cloud", "c9");
    let mut hosts = BTreeMap::from([(
        gone.clone(),
        LibvirtHost {
            uri: format!("qemu+tcp://127.0.0.1:{port}/system"),
            pki_path: None,
            timeout: Duration::from_secs(3),
        },
    )]);
    hosts.extend(lock(&lab.driver.inner.hosts).clone());
    let driver = Libvirt::new(hosts, LibvirtOptions::default());
    let t0 = Instant::now();
    let all = driver.inspect_all().await;
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    match &all[&gone] {
        Err(e @ DriverError::Unreachable { target, .. }) => {
            assert_eq!(target, "cloud.c9");
            assert!(e.to_string().contains("cloud.c9 is unreachable"), "{e}");
            assert!(e.to_string().contains(&port.to_string()), "{e}");
        }
        other => panic!("expected Unreachable, got {other:?}"),
    }
    assert!(all[&a()].is_ok());
    assert!(all[&b()].is_ok());
    let e = driver.pause(&gone, "web").await.unwrap_err();
    assert!(matches!(e, DriverError::Unreachable { .. }), "{e}");
}

#[tokio::test]
async fn a_host_that_never_answers_is_unreachable_within_its_timeout() {
    // Accepts the TCP connection and never speaks: libvirt's handshake waits forever.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
    let port = listener.local_addr().expect("addr").port();
    let held = Arc::new(Mutex::new(Vec::new()));
    let keep = held.clone();
    std::thread::spawn(move || {
        for s in listener.incoming().flatten() {
            lock(&keep).push(s);
        }
    });
    let mute = HostId::new("cloud", "mute");
    let driver = Libvirt::new(
        BTreeMap::from([(
            mute.clone(),
            LibvirtHost {
                uri: format!("qemu+tcp://127.0.0.1:{port}/system"),
                pki_path: None,
                timeout: Duration::from_millis(700),
            },
        )]),
        LibvirtOptions::default(),
    );
    let t0 = Instant::now();
    let e = driver.domains(&mute).await.unwrap_err();
    let took = t0.elapsed();
    // Let the blocked libvirt call end (EOF), so the runtime can shut down.
    lock(&held).clear();
    assert!(
        took >= Duration::from_millis(650) && took < Duration::from_secs(3),
        "{took:?}"
    );
    match e {
        DriverError::Unreachable { target, reason, .. } => {
            assert_eq!(target, "cloud.mute");
            assert!(reason.contains("no connection within 0.7 s"), "{reason}");
        }
        other => panic!("expected Unreachable, got {other:?}"),
    }
}

#[tokio::test]
async fn an_unconfigured_host_is_a_clear_error() {
    let lab = lab();
    let e = lab
        .driver
        .domains(&HostId::new("x", "y"))
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("no libvirt URI is configured"),
        "{e}"
    );
}

#[tokio::test]
async fn pause_resume_start_shutdown_and_their_idempotence() {
    let lab = lab();
    let d = &lab.driver;
    d.pause(&a(), "web").await.expect("pause");
    assert_eq!(state(d, &a(), "web").await, Some(DomainState::Paused));
    d.pause(&a(), "web").await.expect("pause again");
    let e = d.start(&a(), "web").await.unwrap_err();
    assert!(e.to_string().contains("paused, not shut off"), "{e}");
    d.resume(&a(), "web").await.expect("resume");
    assert_eq!(state(d, &a(), "web").await, Some(DomainState::Running));
    d.resume(&a(), "web").await.expect("resume again");

    d.shutdown(&a(), "web").await.expect("shutdown");
    assert_eq!(state(d, &a(), "web").await, Some(DomainState::ShutOff));
    d.shutdown(&a(), "web").await.expect("shutdown again");
    let e = d.pause(&a(), "web").await.unwrap_err();
    assert!(e.to_string().contains("not running"), "{e}");
    let e = d.resume(&a(), "web").await.unwrap_err();
    assert!(e.to_string().contains("not running"), "{e}");

    d.start(&a(), "web").await.expect("start");
    assert_eq!(state(d, &a(), "web").await, Some(DomainState::Running));
    d.start(&a(), "web").await.expect("start again");

    // A transient domain is gone once stopped.
    d.shutdown(&a(), "scratch")
        .await
        .expect("shutdown transient");
    assert_eq!(state(d, &a(), "scratch").await, None);

    let e = d.shutdown(&a(), "nope").await.unwrap_err();
    assert!(e.to_string().contains("domain nope is not defined"), "{e}");
    let e = d.start(&a(), "nope").await.unwrap_err();
    assert!(matches!(e, DriverError::Failed { .. }), "{e}");
}

#[tokio::test]
async fn shutdown_with_a_grace_period_stops_a_guest_that_powers_off() {
    let lab = lab_with(LibvirtOptions {
        shutdown_grace: Duration::from_secs(5),
        ..LibvirtOptions::default()
    });
    let t0 = Instant::now();
    lab.driver.shutdown(&b(), "db").await.expect("shutdown");
    assert!(t0.elapsed() < Duration::from_secs(5));
    assert_eq!(
        state(&lab.driver, &b(), "db").await,
        Some(DomainState::ShutOff)
    );
}

#[tokio::test]
async fn set_link_changes_the_persistent_definition_and_reports_what_libvirt_cannot_do() {
    let lab = lab();
    let d = &lab.driver;
    // Shut off and persistent: the definition changes (redefined, the test driver has no
    // device update), and discovery reads it back.
    d.set_link(&a(), "idle", false).await.expect("link down");
    let idle = d.domain(&a(), "idle").await.expect("lookup").expect("idle");
    assert_eq!(idle.nic_link_up, Some(false));
    assert_eq!(idle.state, DomainState::ShutOff);
    d.set_link(&a(), "idle", false)
        .await
        .expect("link down again");
    d.set_link(&a(), "idle", true).await.expect("link up");
    assert_eq!(
        d.domain(&a(), "idle")
            .await
            .expect("lookup")
            .expect("idle")
            .nic_link_up,
        Some(true)
    );
    // A running domain needs a live device update, which this libvirt driver lacks.
    let e = d.set_link(&a(), "web", false).await.unwrap_err();
    assert!(matches!(e, DriverError::Failed { .. }), "{e}");
    assert!(e.to_string().contains("52:54:00:0a:00:0b"), "{e}");
    assert!(e.to_string().contains("not supported"), "{e}");
    // Already in the asked state: nothing to update, so it succeeds.
    d.set_link(&a(), "web", true).await.expect("already up");
    let e = d.set_link(&a(), "scratch", false).await.unwrap_err();
    assert!(e.to_string().contains("has no network interface"), "{e}");
}

#[tokio::test]
async fn define_checks_the_name_and_replaces_a_definition() {
    let lab = lab();
    let d = &lab.driver;
    let e = d.define(&b(), "other", NEW_DOMAIN).await.unwrap_err();
    assert!(
        e.to_string().contains("defines domain fresh, not other"),
        "{e}"
    );
    let e = d.define(&b(), "fresh", "<domain><name>").await.unwrap_err();
    assert!(e.to_string().contains("does not parse"), "{e}");
    d.define(&b(), "fresh", NEW_DOMAIN).await.expect("define");
    let fresh = d
        .domain(&b(), "fresh")
        .await
        .expect("lookup")
        .expect("fresh");
    assert_eq!(fresh.state, DomainState::ShutOff);
    assert!(fresh.persistent);
    assert_eq!(fresh.nic_link_up, Some(true));
    d.define(&b(), "fresh", NEW_DOMAIN)
        .await
        .expect("define again");
    // The same name with another identity is refused by libvirt, and said so.
    let other = NEW_DOMAIN.replace("2e1906", "2e1907");
    let e = d.define(&b(), "fresh", &other).await.unwrap_err();
    assert!(e.to_string().contains("already exists with uuid"), "{e}");
    d.start(&b(), "fresh").await.expect("start");
    assert_eq!(state(d, &b(), "fresh").await, Some(DomainState::Running));
    let e = d
        .define(
            &b(),
            "bad",
            "<domain type='nonsense'><name>bad</name></domain>",
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("defining bad"), "{e}");
}

#[tokio::test]
async fn cold_migration_defines_on_the_target_then_undefines_on_the_source() {
    let lab = lab();
    let d = &lab.driver;
    let req = request(&lab, "idle", MigrationMode::Cold);
    let (sink, seen) = counting();
    d.migrate(&req, sink, AbortSignal::never())
        .await
        .expect("cold migration");
    assert_eq!(state(d, &a(), "idle").await, None);
    let moved = d.domain(&b(), "idle").await.expect("lookup").expect("idle");
    assert_eq!(moved.state, DomainState::ShutOff);
    assert!(moved.persistent);
    let seen = lock(&seen).clone();
    assert!(seen.len() >= 2);
    assert_eq!(seen.last().map(|p| p.percent()), Some(100));
    // Repeating it finds the work done.
    d.migrate(&req, counting().0, AbortSignal::never())
        .await
        .expect("again");
    // And it starts on the target.
    d.start(&b(), "idle").await.expect("start on target");
}

#[tokio::test]
async fn cold_migration_interrupted_after_define_is_finished_by_a_repeat() {
    let lab = lab();
    let d = &lab.driver;
    // As if a crash came between the define on the target and the undefine on the source.
    let text = d
        .run("test", &a(), |ctx, conn| {
            lookup_some(ctx, conn, "idle")?
                .xml_desc(sys::VIR_DOMAIN_XML_INACTIVE)
                .map_err(|e| ctx.lv("xml", e))
        })
        .await
        .expect("xml");
    d.define(&b(), "idle", &text)
        .await
        .expect("define on target");
    d.migrate(
        &request(&lab, "idle", MigrationMode::Cold),
        counting().0,
        AbortSignal::never(),
    )
    .await
    .expect("finish");
    assert_eq!(state(d, &a(), "idle").await, None);
    assert_eq!(state(d, &b(), "idle").await, Some(DomainState::ShutOff));
}

#[tokio::test]
async fn migration_refuses_wrong_states_and_conflicts() {
    let lab = lab();
    let d = &lab.driver;
    let never = AbortSignal::never;
    let e = d
        .migrate(
            &request(&lab, "web", MigrationMode::Cold),
            counting().0,
            never(),
        )
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("offline migration needs it shut off"),
        "{e}"
    );
    let e = d
        .migrate(
            &request(&lab, "idle", MigrationMode::Live),
            counting().0,
            never(),
        )
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("live migration needs it active"),
        "{e}"
    );
    let e = d
        .migrate(
            &request(&lab, "nope", MigrationMode::Live),
            counting().0,
            never(),
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("domain nope is not defined"), "{e}");
    // The same name on both hosts with different identities.
    d.define(&b(), "fresh", NEW_DOMAIN).await.expect("define b");
    let other = NEW_DOMAIN.replace("2e1906", "2e1907");
    d.define(&a(), "fresh", &other).await.expect("define a");
    let e = d
        .migrate(
            &request(&lab, "fresh", MigrationMode::Cold),
            counting().0,
            never(),
        )
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("already exists on the target"),
        "{e}"
    );
    assert_eq!(state(d, &a(), "fresh").await, Some(DomainState::ShutOff));
    // Already on the target, gone from the source: done.
    d.migrate(
        &request(&lab, "db", MigrationMode::Live),
        counting().0,
        never(),
    )
    .await
    .expect("db is on b already");
}

#[tokio::test]
async fn a_live_migration_libvirt_refuses_leaves_the_domain_on_the_source() {
    // The test driver has no migration: the failure is reported, and nothing moved.
    for p2p in [true, false] {
        let lab = lab_with(LibvirtOptions {
            peer_to_peer: p2p,
            ..LibvirtOptions::default()
        });
        let mut req = request(&lab, "web", MigrationMode::Live);
        req.bandwidth_mibps = Some(10);
        let e = lab
            .driver
            .migrate(&req, counting().0, AbortSignal::never())
            .await
            .unwrap_err();
        match &e {
            DriverError::Failed { target, reason, .. } => {
                assert_eq!(target, "dc.hv1");
                assert!(reason.contains("migrating web to dc.hv2"), "{reason}");
            }
            other => panic!("expected Failed, got {other:?}"),
        }
        assert_eq!(
            state(&lab.driver, &a(), "web").await,
            Some(DomainState::Running)
        );
        assert_eq!(state(&lab.driver, &b(), "web").await, None);
    }
}

#[tokio::test]
async fn an_abort_raised_before_the_start_changes_nothing() {
    let lab = lab();
    let (handle, signal) = AbortSignal::new();
    handle.abort();
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let sink: ProgressSink = Arc::new(move |_| {
        c.fetch_add(1, Ordering::SeqCst);
    });
    let e = lab
        .driver
        .migrate(&request(&lab, "idle", MigrationMode::Cold), sink, signal)
        .await
        .unwrap_err();
    assert!(matches!(e, DriverError::Aborted { .. }), "{e}");
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    assert_eq!(
        state(&lab.driver, &a(), "idle").await,
        Some(DomainState::ShutOff)
    );
}

#[tokio::test]
async fn a_migration_to_an_unreachable_target_names_the_target() {
    let lab = lab();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let mut req = request(&lab, "web", MigrationMode::Live);
    req.to = HostId::new("cloud", "c1");
    req.to_uri = format!("qemu+tcp://127.0.0.1:{port}/system");
    let e = lab
        .driver
        .migrate(&req, counting().0, AbortSignal::never())
        .await
        .unwrap_err();
    match e {
        DriverError::Unreachable { target, .. } => assert_eq!(target, "cloud.c1"),
        other => panic!("expected Unreachable, got {other:?}"),
    }
    assert_eq!(
        state(&lab.driver, &a(), "web").await,
        Some(DomainState::Running)
    );
}

#[tokio::test]
async fn job_info_is_none_without_a_job() {
    let lab = lab();
    assert_eq!(lab.driver.job_info(&a(), "web").await.expect("job"), None);
    assert_eq!(lab.driver.job_info(&a(), "idle").await.expect("job"), None);
    assert!(lab.driver.job_info(&a(), "nope").await.is_err());
}

#[tokio::test]
async fn connections_are_opened_once_per_host_and_shared_by_clones() {
    let lab = lab();
    let d2 = lab.driver.clone();
    lab.driver.pause(&a(), "web").await.expect("pause");
    // The clone sees the same (in-memory) hypervisor: the same connection.
    assert_eq!(state(&d2, &a(), "web").await, Some(DomainState::Paused));
    assert_eq!(lock(&lab.driver.inner.connections).len(), 1);
    lab.driver.domains(&b()).await.expect("b");
    assert_eq!(lock(&lab.driver.inner.connections).len(), 2);
}
