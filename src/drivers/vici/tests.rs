use super::wire::{read_packet, write_packet};
use super::*;
use crate::model::{Environment, Host, Secret};
use std::sync::{Arc, Mutex as StdMutex};
use tokio::net::UnixListener;

fn host(env: &str, name: &str, address: &str, netns: &str) -> Host {
    Host {
        id: HostId::new(env, name),
        libvirt: format!("qemu+tls://{address}/system").into(),
        address: address.parse().unwrap(),
        network: format!("netns:{netns}"),
    }
}

fn landscape() -> Landscape {
    let mut l = Landscape::default();
    for (env, trusted, hosts) in [
        (
            "dc",
            true,
            vec![
                host("dc", "hv1", "10.77.0.11", "dc-hv1"),
                host("dc", "hv2", "10.77.0.12", "dc-hv2"),
            ],
        ),
        (
            "cloud",
            false,
            vec![host("cloud", "c1", "10.78.0.21", "cloud-c1")],
        ),
    ] {
        l.environments.insert(
            env.to_string(),
            Environment {
                name: env.into(),
                trusted,
                hosts: hosts
                    .into_iter()
                    .map(|h| (h.id.host().to_string(), h))
                    .collect(),
                routing_core: None,
            },
        );
    }
    l
}

fn hv1() -> HostId {
    HostId::new("dc", "hv1")
}
fn c1() -> HostId {
    HostId::new("cloud", "c1")
}

const NAME: &str = "smig-web_db-cloud.c1-dc.hv1";

fn config(local: HostId, remote: HostId, secret: &str) -> IpsecConfig {
    let addr = |h: &HostId| -> Ipv4Addr {
        if h == &hv1() {
            "10.77.0.11".parse().unwrap()
        } else {
            "10.78.0.21".parse().unwrap()
        }
    };
    IpsecConfig {
        name: NAME.to_string(),
        link: "web_db".to_string(),
        local_address: addr(&local),
        remote_address: addr(&remote),
        local,
        remote,
        proposals: vec!["aes256-sha256-modp2048".to_string()],
        credential: IpsecCredential::Psk(Secret::new(secret)),
    }
}

#[test]
fn lab_conventions_give_sockets_and_overlay_addresses() {
    let v = Vici::new(&landscape(), ViciOptions::lab()).unwrap();
    assert_eq!(
        v.socket(&hv1()).unwrap(),
        PathBuf::from("/run/smig-lab/hosts/hv1/charon.vici")
    );
    assert_eq!(v.overlay(&hv1()).unwrap(), Ipv4Addr::new(172, 31, 0, 11));
    assert_eq!(v.overlay(&c1()).unwrap(), Ipv4Addr::new(172, 31, 0, 21));
    assert!(v.socket(&HostId::new("dc", "nope")).is_err());

    let mut o = ViciOptions {
        socket_template: Some("/run/{netns}/{env}-{id}.vici".into()),
        ..ViciOptions::default()
    };
    o.sockets.insert(c1(), PathBuf::from("/elsewhere.vici"));
    o.overlays.insert(hv1(), Ipv4Addr::new(10, 9, 9, 9));
    let v = Vici::new(&landscape(), o).unwrap();
    assert_eq!(
        v.socket(&hv1()).unwrap(),
        PathBuf::from("/run/dc-hv1/dc-dc.hv1.vici")
    );
    assert_eq!(v.socket(&c1()).unwrap(), PathBuf::from("/elsewhere.vici"));
    assert_eq!(v.overlay(&hv1()).unwrap(), Ipv4Addr::new(10, 9, 9, 9));
    // No prefix and no explicit address: a clear error naming the host.
    let e = v.overlay(&c1()).unwrap_err().to_string();
    assert!(e.contains("cloud.c1"), "{e}");
}

#[test]
fn colliding_overlay_addresses_are_refused() {
    let mut l = landscape();
    let env = l.environments.get_mut("cloud").unwrap();
    // 10.78.0.11 maps to 172.31.0.11 under /24, like hv1's 10.77.0.11.
    let h = host("cloud", "c2", "10.78.0.11", "cloud-c2");
    env.hosts.insert("c2".into(), h);
    let e = Vici::new(&l, ViciOptions::lab()).unwrap_err().to_string();
    assert!(e.contains("172.31.0.11"), "{e}");
}

#[test]
fn load_conn_message_joins_the_overlay_addresses() {
    let v = Vici::new(&landscape(), ViciOptions::lab()).unwrap();
    let m = v
        .conn_message(&hv1(), &config(hv1(), c1(), "canary-1"), None)
        .unwrap();
    let conn = m.sub(NAME).expect("connection section");
    assert_eq!(conn.str("version").as_deref(), Some("2"));
    assert_eq!(conn.strs("local_addrs"), vec!["10.77.0.11"]);
    assert_eq!(conn.strs("remote_addrs"), vec!["10.78.0.21"]);
    assert_eq!(conn.strs("proposals"), vec!["aes256-sha256-modp2048"]);
    assert_eq!(conn.str("encap").as_deref(), Some("yes"));
    let local = conn.sub("local").unwrap();
    assert_eq!(local.str("auth").as_deref(), Some("psk"));
    assert_eq!(local.str("id"), Some(format!("{NAME}@dc.hv1")));
    assert_eq!(
        conn.sub("remote").unwrap().str("id"),
        Some(format!("{NAME}@cloud.c1"))
    );
    let child = conn.sub("children").unwrap().sub(NAME).unwrap();
    assert_eq!(child.strs("local_ts"), vec!["172.31.0.11/32"]);
    assert_eq!(child.strs("remote_ts"), vec!["172.31.0.21/32"]);
    assert_eq!(child.str("mode").as_deref(), Some("tunnel"));
    assert_eq!(child.str("start_action").as_deref(), Some("none"));
    // The connection itself never carries key material.
    let bytes = m.encode().unwrap();
    assert!(!String::from_utf8_lossy(&bytes).contains("canary"));

    // Loading another host's end is refused.
    assert!(v
        .conn_message(&c1(), &config(hv1(), c1(), "canary-1"), None)
        .is_err());
    // Certificates: public-key auth with the certificate's data, the CA for the peer.
    let mut cert = config(hv1(), c1(), "x");
    cert.credential = IpsecCredential::Cert {
        cert: "c.pem".into(),
        key: "k.pem".into(),
        ca: Some("ca.pem".into()),
    };
    assert!(v.conn_message(&hv1(), &cert, None).is_err());
    let files = CertFiles {
        cert: b"CERT".to_vec(),
        key: b"-----BEGIN RSA PRIVATE KEY----- canary-key".to_vec(),
        ca: Some(b"CA".to_vec()),
    };
    assert_eq!(files.key_type(), "rsa");
    assert!(!format!("{files:?}").contains("canary"));
    let m = v.conn_message(&hv1(), &cert, Some(&files)).unwrap();
    let conn = m.sub(NAME).unwrap();
    let local = conn.sub("local").unwrap();
    assert_eq!(local.str("auth").as_deref(), Some("pubkey"));
    assert_eq!(local.strs("certs"), vec!["CERT"]);
    assert_eq!(conn.sub("remote").unwrap().strs("cacerts"), vec!["CA"]);
    assert!(!String::from_utf8_lossy(&m.encode().unwrap()).contains("canary"));
}

#[tokio::test]
async fn unreadable_certificate_files_name_the_file() {
    let e = CertFiles::read("ipsec.load", &hv1(), "/nonexistent/c.pem", "k", None)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("/nonexistent/c.pem") && e.contains("dc.hv1"),
        "{e}"
    );
}

#[test]
fn names_identities_and_links() {
    assert_eq!(remote_host(NAME, &format!("{NAME}@cloud.c1")), Some(c1()));
    assert_eq!(remote_host(NAME, "other@cloud.c1"), None);
    assert_eq!(remote_host(NAME, "10.78.0.21"), None);
    assert_eq!(link_of(NAME, &hv1(), &c1()), "web_db");
    assert!(names_pair(NAME, &hv1(), &c1()) && names_pair(NAME, &c1(), &hv1()));
    assert!(!names_pair(NAME, &hv1(), &HostId::new("dc", "hv2")));
    assert_eq!(link_of(NAME, &c1(), &hv1()), "web_db");
    assert_eq!(
        link_of("smig-a-b-dc.hv1-dc.hv2", &HostId::new("dc", "hv2"), &hv1()),
        "a-b"
    );
}

/// A `list-sa` event as charon 5.9 sends it (trimmed).
pub(crate) fn sa_event(name: &str, state: &str, child_state: &str, bytes_in: &str) -> Message {
    Message::new().section(
        name,
        Message::new()
            .kv("uniqueid", "7")
            .kv("version", "2")
            .kv("state", state)
            .kv("local-host", "10.77.0.11")
            .kv("remote-host", "10.78.0.21")
            .kv("remote-id", format!("{name}@cloud.c1"))
            .section(
                "child-sas",
                Message::new().section(
                    &format!("{name}-3"),
                    Message::new()
                        .kv("name", name)
                        .kv("uniqueid", "3")
                        .kv("state", child_state)
                        .kv("mode", "TUNNEL")
                        .kv("bytes-in", bytes_in)
                        .kv("packets-in", "3")
                        .kv("bytes-out", "252")
                        .list("local-ts", ["172.31.0.11/32"])
                        .list("remote-ts", ["172.31.0.21/32"]),
                ),
            ),
    )
}

pub(crate) fn conn_event(name: &str) -> Message {
    Message::new().section(
        name,
        Message::new()
            .list("local_addrs", ["10.77.0.11"])
            .list("remote_addrs", ["10.78.0.21"])
            .kv("version", "IKEv2")
            .section(
                "local-1",
                Message::new()
                    .kv("class", "pre-shared key")
                    .kv("id", format!("{name}@dc.hv1")),
            )
            .section(
                "remote-1",
                Message::new()
                    .kv("class", "pre-shared key")
                    .kv("id", format!("{name}@cloud.c1")),
            )
            .section(
                "children",
                Message::new().section(name, Message::new().kv("mode", "TUNNEL")),
            ),
    )
}

#[test]
fn parses_listings() {
    let sas = parse_sas(&sa_event(NAME, "ESTABLISHED", "INSTALLED", "1234"));
    assert_eq!(sas.len(), 1);
    assert_eq!(sas[0].name, NAME);
    assert_eq!(sas[0].uniqueid, "7");
    let child = sas[0].installed(NAME).unwrap();
    assert_eq!((child.bytes_in, child.bytes_out), (1234, 252));
    let conns = parse_conns(&conn_event(NAME));
    assert_eq!(conns[0].remote_ids, vec![format!("{NAME}@cloud.c1")]);
    assert_eq!(conns[0].remote_addrs, vec!["10.78.0.21"]);
    assert_eq!(conns[0].children, vec![NAME.to_string()]);
}

pub(crate) type Log = Arc<StdMutex<Vec<(String, Message)>>>;
pub(crate) type Answer = Arc<dyn Fn(&str, &Message) -> (Vec<Message>, Message) + Send + Sync>;

/// A stand-in charon on a Unix socket: confirms event registrations, records every command
/// and answers through `answer`. With `close_first` the first connection is closed after that
/// many commands (a daemon restarted under a cached connection).
pub(crate) async fn fake_charon(
    path: PathBuf,
    answer: Answer,
    log: Log,
    close_first: Option<usize>,
) {
    let listener = UnixListener::bind(&path).unwrap();
    tokio::spawn(async move {
        let mut first = close_first;
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let answer = answer.clone();
            let log = log.clone();
            let close_after = first.take();
            tokio::spawn(async move {
                let mut registered = None;
                let mut answered = 0;
                while let Ok(p) = read_packet(&mut s).await {
                    match p {
                        Packet::EventRegister(e) => {
                            registered = Some(e);
                            write_packet(&mut s, &Packet::EventConfirm).await.unwrap();
                        }
                        Packet::EventUnregister(_) => {
                            registered = None;
                            write_packet(&mut s, &Packet::EventConfirm).await.unwrap();
                        }
                        Packet::CmdRequest(cmd, m) => {
                            log.lock().unwrap().push((cmd.clone(), m.clone()));
                            if cmd == "version" {
                                // A daemon that hangs: never answers, keeps the socket open.
                                std::future::pending::<()>().await;
                            }
                            if cmd == "get-shared" && m.str("old").is_some() {
                                // An older charon that lacks the command.
                                write_packet(&mut s, &Packet::CmdUnknown).await.unwrap();
                                continue;
                            }
                            let (events, ans) = answer(&cmd, &m);
                            if let Some(e) = &registered {
                                for ev in events {
                                    write_packet(&mut s, &Packet::Event(e.clone(), ev))
                                        .await
                                        .unwrap();
                                }
                            }
                            write_packet(&mut s, &Packet::CmdResponse(ans))
                                .await
                                .unwrap();
                            answered += 1;
                            if close_after == Some(answered) {
                                return;
                            }
                        }
                        _ => return,
                    }
                }
            });
        }
    });
}

fn driver_with_socket(path: &std::path::Path) -> Vici {
    let mut o = ViciOptions::lab();
    o.sockets.insert(hv1(), path.to_path_buf());
    o.request_timeout = Duration::from_secs(2);
    Vici::new(&landscape(), o).unwrap()
}

pub(crate) fn ok() -> Message {
    Message::new().kv("success", "yes")
}

#[tokio::test]
async fn load_sends_the_key_only_to_charon_and_checks_every_answer() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("charon.vici");
    let log: Log = Arc::default();
    let answer: Answer = Arc::new(|cmd, _| match cmd {
        "load-conn" => (
            vec![],
            Message::new()
                .kv("success", "no")
                .kv("errmsg", "invalid proposal"),
        ),
        _ => (vec![], ok()),
    });
    fake_charon(path.clone(), answer, log.clone(), None).await;
    let v = driver_with_socket(&path);
    let e = v
        .load(&hv1(), &config(hv1(), c1(), "canary-77f1"))
        .await
        .unwrap_err();
    let shown = format!("{e} {e:?}");
    assert!(shown.contains("invalid proposal"), "{shown}");
    assert!(shown.contains("dc.hv1"), "{shown}");
    assert!(!shown.contains("canary"), "{shown}");
    let log = log.lock().unwrap();
    assert_eq!(
        log.iter().map(|(c, _)| c.as_str()).collect::<Vec<_>>(),
        vec!["load-shared", "load-conn"]
    );
    let shared = &log[0].1;
    assert_eq!(shared.str("data").as_deref(), Some("canary-77f1"));
    assert_eq!(shared.str("type").as_deref(), Some("IKE"));
    assert_eq!(
        shared.strs("owners"),
        vec![format!("{NAME}@dc.hv1"), format!("{NAME}@cloud.c1")]
    );
    assert!(!format!("{shared:?}").contains("canary"));
}

#[tokio::test]
async fn connections_report_smig_sas_with_counters() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("charon.vici");
    let answer: Answer = Arc::new(|cmd, _| match cmd {
        "list-conns" => (
            vec![conn_event(NAME), conn_event("lab-baseline")],
            Message::new(),
        ),
        "list-sas" => (
            vec![
                sa_event(NAME, "ESTABLISHED", "INSTALLED", "4096"),
                sa_event("smig-gone-cloud.c1-dc.hv1", "ESTABLISHED", "INSTALLED", "1"),
                // Neither identity nor address tells the far end: the name does.
                Message::new().section(
                    "smig-nat-dc.hv1-dc.hv2",
                    Message::new()
                        .kv("uniqueid", "9")
                        .kv("state", "ESTABLISHED")
                        .kv("remote-host", "192.0.2.1")
                        .kv("remote-id", "CN=somebody"),
                ),
                sa_event("lab-baseline", "ESTABLISHED", "INSTALLED", "9"),
            ],
            Message::new(),
        ),
        _ => (vec![], ok()),
    });
    let log: Log = Arc::default();
    fake_charon(path.clone(), answer, log.clone(), Some(2)).await;
    let v = driver_with_socket(&path);
    assert_eq!(v.connections(&hv1()).await.unwrap().len(), 3);
    // The daemon closed the cached connection meanwhile: the driver reconnects once.
    let conns = v.connections(&hv1()).await.unwrap();
    assert_eq!(conns.len(), 3, "{conns:?}");
    let nat = conns
        .iter()
        .find(|c| c.name == "smig-nat-dc.hv1-dc.hv2")
        .unwrap();
    assert_eq!(
        (nat.remote.0.as_str(), nat.link.as_str()),
        ("dc.hv2", "nat")
    );
    assert!(!nat.sa_up);
    let c = conns.iter().find(|c| c.name == NAME).unwrap();
    assert_eq!(c.link, "web_db");
    assert_eq!(c.remote, c1());
    assert!(c.sa_up);
    assert_eq!((c.bytes_in, c.bytes_out), (4096, 252));
    // An SA left without its connection is still reported, so cleanup finds it.
    let gone = conns
        .iter()
        .find(|c| c.name == "smig-gone-cloud.c1-dc.hv1")
        .unwrap();
    assert_eq!(gone.link, "gone");
    assert!(gone.sa_up);
}

#[tokio::test]
async fn initiate_skips_an_installed_child_and_unload_tolerates_absence() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("charon.vici");
    let log: Log = Arc::default();
    let answer: Answer = Arc::new(|cmd, m| match cmd {
        "list-sas" if m.str("ike").as_deref() == Some(NAME) => (
            vec![sa_event(NAME, "ESTABLISHED", "INSTALLED", "1")],
            Message::new(),
        ),
        "list-sas" | "list-conns" => (vec![], Message::new()),
        "get-shared" => (vec![], Message::new().list("keys", ["other-psk"])),
        _ => (vec![], ok()),
    });
    fake_charon(path.clone(), answer, log.clone(), None).await;
    let v = driver_with_socket(&path);
    v.initiate(&hv1(), NAME).await.unwrap();
    assert!(!log.lock().unwrap().iter().any(|(c, _)| c == "initiate"));
    log.lock().unwrap().clear();
    v.unload(&hv1(), "smig-absent-cloud.c1-dc.hv1")
        .await
        .unwrap();
    let cmds: Vec<String> = log.lock().unwrap().iter().map(|(c, _)| c.clone()).collect();
    assert_eq!(cmds, vec!["list-sas", "list-conns", "get-shared"]);
    // Names smig does not own are never touched.
    assert!(v.unload(&hv1(), "lab-baseline").await.is_err());
}

#[tokio::test]
async fn a_missing_daemon_is_unreachable_naming_host_and_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent.vici");
    let v = driver_with_socket(&path);
    let e = v.connections(&hv1()).await.unwrap_err();
    match &e {
        DriverError::Unreachable { target, reason, .. } => {
            assert_eq!(target, "dc.hv1");
            assert!(reason.contains("absent.vici"), "{reason}");
        }
        other => panic!("expected unreachable, got {other}"),
    }
}

#[tokio::test]
async fn a_stopped_charon_holds_nothing_and_unload_completes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("charon.vici");
    // A socket file nobody listens on: what a stopped charon leaves behind.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    let v = driver_with_socket(&path);
    assert!(v.connections(&hv1()).await.unwrap().is_empty());
    v.unload(&hv1(), "smig-web_db-dc.hv1-cloud.c1")
        .await
        .unwrap();
    // Loading and initiating still need the daemon.
    assert!(matches!(
        v.initiate(&hv1(), "smig-web_db-dc.hv1-cloud.c1").await,
        Err(DriverError::Unreachable { .. })
    ));
}

#[tokio::test]
async fn an_unknown_command_is_a_clear_failure() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("charon.vici");
    let answer: Answer = Arc::new(|_, _| (vec![], Message::new().list("keys", ["k"])));
    fake_charon(path.clone(), answer, Arc::default(), None).await;
    let v = driver_with_socket(&path);
    let host = hv1();
    let mut s = v.session("ipsec.test", &host).await.unwrap();
    let e = s
        .query("get-shared", &Message::new().kv("old", "yes"))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("knows no command get-shared"), "{e}");
    drop(s);
    assert_eq!(v.shared_key_ids(&hv1()).await.unwrap(), vec!["k"]);
}

#[tokio::test]
async fn concurrent_calls_share_one_connection_one_request_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("charon.vici");
    let answer: Answer = Arc::new(|cmd, _| match cmd {
        "list-conns" => (vec![conn_event(NAME)], Message::new()),
        "list-sas" => (
            vec![sa_event(NAME, "ESTABLISHED", "INSTALLED", "10")],
            Message::new(),
        ),
        _ => (vec![], ok()),
    });
    let log: Log = Arc::default();
    fake_charon(path.clone(), answer, log.clone(), None).await;
    let v = Arc::new(driver_with_socket(&path));
    let calls: Vec<_> = (0..16)
        .map(|_| {
            let v = v.clone();
            tokio::spawn(async move { v.connections(&hv1()).await })
        })
        .collect();
    for c in calls {
        let conns = c.await.unwrap().unwrap();
        assert_eq!(conns.len(), 1);
        assert!(conns[0].sa_up);
    }
    // Each call's two listings ran back to back, never interleaved with another call's.
    let cmds: Vec<String> = log.lock().unwrap().iter().map(|(c, _)| c.clone()).collect();
    assert_eq!(cmds.len(), 32);
    for pair in cmds.chunks(2) {
        assert_eq!(pair, ["list-conns", "list-sas"]);
    }
}

#[tokio::test]
async fn a_hanging_daemon_times_out_and_the_next_call_starts_afresh() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("charon.vici");
    let answer: Answer = Arc::new(|_, _| (vec![], Message::new().list("keys", ["k"])));
    fake_charon(path.clone(), answer, Arc::default(), None).await;
    let mut o = ViciOptions::lab();
    o.sockets.insert(hv1(), path.clone());
    o.request_timeout = Duration::from_millis(200);
    let v = Vici::new(&landscape(), o).unwrap();
    let host = hv1();
    let mut s = v.session("ipsec.test", &host).await.unwrap();
    let e = s.command("version", &Message::new()).await.unwrap_err();
    assert!(matches!(e, DriverError::Timeout { .. }), "{e:?}");
    assert!(e.to_string().contains("dc.hv1"), "{e}");
    drop(s);
    // The late answer of the hung request can never be taken for this one's.
    assert_eq!(v.shared_key_ids(&hv1()).await.unwrap(), vec!["k"]);
}

fn with_core(mut l: Landscape) -> Landscape {
    if let Some(dc) = l.environments.get_mut("dc") {
        dc.routing_core = Some(crate::model::RoutingCore {
            network: "netns:dc-core".into(),
        });
    }
    l
}

const TUNNEL: &str = "smig-tunnel.batch.dc.cloud.c1";

fn tunnel_ends() -> (TunnelEnd, TunnelEnd) {
    (
        TunnelEnd {
            id: core_id("dc"),
            overlay: Ipv4Addr::new(172, 31, 0, 1),
        },
        TunnelEnd {
            id: c1(),
            overlay: Ipv4Addr::new(172, 31, 0, 21),
        },
    )
}

#[test]
fn tunnel_names_are_never_secure_link_names() {
    assert_eq!(tunnel_connection_name("batch", "dc", &c1()), TUNNEL);
    assert_eq!(tunnel_host(TUNNEL, "batch", "dc"), Some(c1()));
    assert_eq!(tunnel_host(TUNNEL, "app", "dc"), None);
    assert!(is_tunnel(TUNNEL));
    // A secure_link named "tunnel": its connection is a secure_link's, not a tunnel's.
    let link = crate::model::ipsec_connection_name("tunnel", &hv1(), &c1());
    assert!(!is_tunnel(&link), "{link}");
    assert!(!is_tunnel(NAME));
}

#[test]
fn routing_cores_get_their_socket_from_the_core_template() {
    let v = Vici::new(&with_core(landscape()), ViciOptions::lab()).unwrap();
    assert_eq!(
        v.socket(&core_id("dc")).unwrap(),
        PathBuf::from("/run/smig-lab/hosts/core/charon.vici")
    );
    let o = ViciOptions {
        core_socket_template: Some("/run/{netns}/{env}.vici".into()),
        ..ViciOptions::lab()
    };
    let v = Vici::new(&with_core(landscape()), o).unwrap();
    assert_eq!(
        v.socket(&core_id("dc")).unwrap(),
        PathBuf::from("/run/dc-core/dc.vici")
    );
    let o = ViciOptions {
        core_socket_template: None,
        ..ViciOptions::lab()
    };
    let v = Vici::new(&with_core(landscape()), o).unwrap();
    let e = v.socket(&core_id("dc")).unwrap_err().to_string();
    assert!(e.contains("routing core of dc"), "{e}");
}

#[test]
fn tunnel_conn_messages_join_the_overlays_and_only_the_host_end_has_an_address() {
    let v = Vici::new(&with_core(landscape()), ViciOptions::lab()).unwrap();
    let (core, host) = tunnel_ends();
    let m = v.tunnel_conn_message(TUNNEL, &core, &host).unwrap();
    let conn = m.sub(TUNNEL).unwrap();
    assert!(conn.strs("local_addrs").is_empty());
    assert_eq!(conn.strs("remote_addrs"), vec!["10.78.0.21"]);
    assert_eq!(conn.str("encap").as_deref(), Some("yes"));
    assert_eq!(
        conn.sub("local").unwrap().str("id"),
        Some(format!("{TUNNEL}@core:dc"))
    );
    assert_eq!(
        conn.sub("remote").unwrap().str("id"),
        Some(format!("{TUNNEL}@cloud.c1"))
    );
    let child = conn.sub("children").unwrap().sub(TUNNEL).unwrap();
    assert_eq!(child.strs("local_ts"), vec!["172.31.0.1/32"]);
    assert_eq!(child.strs("remote_ts"), vec!["172.31.0.21/32"]);
    assert_eq!(child.str("dpd_action").as_deref(), Some("restart"));
    let m = v.tunnel_conn_message(TUNNEL, &host, &core).unwrap();
    let conn = m.sub(TUNNEL).unwrap();
    assert_eq!(conn.strs("local_addrs"), vec!["10.78.0.21"]);
    assert_eq!(conn.strs("remote_addrs"), vec!["%any"]);
    let child = conn.sub("children").unwrap().sub(TUNNEL).unwrap();
    assert_eq!(child.str("dpd_action").as_deref(), Some("clear"));
}

#[test]
fn fresh_keys_differ_and_never_show() {
    let (a, b) = (fresh_psk().unwrap(), fresh_psk().unwrap());
    assert_ne!(a.expose(), b.expose());
    assert_eq!(a.expose().len(), 64);
    assert!(!format!("{a} {a:?}").contains(a.expose()));
}

#[tokio::test]
async fn tunnel_up_keys_both_ends_alike_and_initiates_from_the_core() {
    let dir = tempfile::tempdir().unwrap();
    let (core_path, host_path) = (dir.path().join("core.vici"), dir.path().join("c1.vici"));
    let up = Arc::new(StdMutex::new(false));
    let answer = |up: Arc<StdMutex<bool>>| -> Answer {
        Arc::new(move |cmd, _| match cmd {
            "list-sas" if *up.lock().unwrap() => (
                vec![sa_event(TUNNEL, "ESTABLISHED", "INSTALLED", "1")],
                Message::new(),
            ),
            "initiate" => {
                *up.lock().unwrap() = true;
                (vec![], ok())
            }
            _ => (vec![], ok()),
        })
    };
    let (core_log, host_log): (Log, Log) = (Arc::default(), Arc::default());
    fake_charon(
        core_path.clone(),
        answer(up.clone()),
        core_log.clone(),
        None,
    )
    .await;
    fake_charon(
        host_path.clone(),
        answer(up.clone()),
        host_log.clone(),
        None,
    )
    .await;
    let mut o = ViciOptions::lab();
    o.core_socket_template = Some(core_path.display().to_string());
    o.sockets.insert(c1(), host_path);
    let v = Vici::new(&with_core(landscape()), o).unwrap();
    let (core, host) = tunnel_ends();
    v.tunnel_up(TUNNEL, &core, &host).await.unwrap();
    let cmds = |log: &Log| -> Vec<String> {
        log.lock()
            .unwrap()
            .iter()
            .map(|(c, _)| c.clone())
            .filter(|c| c != "list-sas")
            .collect()
    };
    assert_eq!(cmds(&host_log), ["load-shared", "load-conn"]);
    assert_eq!(cmds(&core_log), ["load-shared", "load-conn", "initiate"]);
    let key = |log: &Log| {
        log.lock()
            .unwrap()
            .iter()
            .find(|(c, _)| c == "load-shared")
            .and_then(|(_, m)| m.str("data"))
            .unwrap()
    };
    let (k1, k2) = (key(&core_log), key(&host_log));
    assert_eq!(k1, k2, "both ends get the same key");
    assert_eq!(k1.len(), 64);
    // Up on both ends: a repeated call changes nothing and draws no new key.
    v.tunnel_up(TUNNEL, &core, &host).await.unwrap();
    assert_eq!(cmds(&core_log).len(), 3);
    // Discovery of secure_link connections does not report the tunnel's.
    assert!(v.connections(&c1()).await.unwrap().is_empty());
}
