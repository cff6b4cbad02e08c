//! The ownership protocol (`prescale::cluster`) against a real 3-member etcd: instances in
//! this process share the buckets exactly once and fairly, take a dead or departed
//! instance's buckets at higher epochs, give a joiner its share without leaving a bucket
//! unowned, and stop acting when etcd loses its quorum, until it is back.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::etcd_client::pb::event::EventType;
use common::{Etcd, EtcdClient, poll_until_async};
use prescale::cluster::{BUCKETS, Cluster, ClusterError, Share, SharedCount, Standing};
use prescale::config::{ClusterConfig, EtcdAuth, EtcdTls, Secret};

/// Short, so that expiry is quick; etcd's own minimum is 2 s.
const TTL: Duration = Duration::from_secs(3);
/// Room for a busy machine on top of what the protocol promises.
const SLACK: Duration = Duration::from_secs(5);
const DEADLINE: Duration = Duration::from_secs(60);

/// One etcd cluster at a time: ports are picked free and bound by etcd a moment later, so
/// clusters started side by side can race for one (etcd then exits: `address already in
/// use`). Serial, the tests also time what they promise without competing for the cores.
static ONE_ETCD: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn config(etcd: &Etcd, name: &str) -> ClusterConfig {
    config_with(etcd, name, None)
}

fn config_with(etcd: &Etcd, name: &str, auth: Option<EtcdAuth>) -> ClusterConfig {
    ClusterConfig {
        etcd: etcd
            .endpoints()
            .iter()
            .map(|e| e.parse().expect("endpoint URL"))
            .collect(),
        name: name.to_owned(),
        advertise: format!("http://127.0.0.1:1/{name}").parse().expect("URL"),
        lease_ttl: TTL,
        prefix: "/prescale-test".to_owned(),
        auth,
        tls: None,
    }
}

async fn join(etcd: &Etcd, name: &str) -> Cluster {
    Cluster::join(&config(etcd, name))
        .await
        .unwrap_or_else(|e| panic!("{name} cannot join: {e}"))
}

/// Each bucket's owner and epoch as the instances themselves see it (`owned()`, which is
/// what they act on), or why that is not an exact, fair cover of every bucket.
fn shared_once(instances: &[&Cluster]) -> Result<BTreeMap<u16, (String, u64)>, String> {
    let share = usize::from(BUCKETS).div_ceil(instances.len());
    let mut all = BTreeMap::new();
    for c in instances {
        let owned = c.owned();
        if owned.len() > share {
            return Err(format!("{} owns {} > {share}", c.name(), owned.len()));
        }
        for (b, epoch) in owned {
            if let Some((other, _)) = all.insert(b, (c.name().to_owned(), epoch)) {
                return Err(format!("bucket {b} owned by {other} and {}", c.name()));
            }
        }
    }
    if all.len() != usize::from(BUCKETS) {
        return Err(format!("{} of {BUCKETS} buckets owned", all.len()));
    }
    Ok(all)
}

/// Panics when two instances act on one bucket.
fn assert_disjoint(instances: &[&Cluster]) {
    let mut seen = BTreeMap::new();
    for c in instances {
        for b in c.owned().into_keys() {
            if let Some(other) = seen.insert(b, c.name().to_owned()) {
                panic!("bucket {b} is acted on by both {other} and {}", c.name());
            }
        }
    }
}

/// Waits until the instances share every bucket exactly once, fairly.
async fn wait_shared(instances: &[&Cluster], within: Duration) -> BTreeMap<u16, (String, u64)> {
    let started = Instant::now();
    loop {
        let why = match shared_once(instances) {
            Ok(all) => return all,
            Err(why) => why,
        };
        assert!(
            started.elapsed() < within,
            "buckets not shared exactly once within {within:?}: {why}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_share_every_bucket_once_and_a_dead_one_is_replaced() {
    let _one = ONE_ETCD.lock().await;
    let etcd = tokio::task::spawn_blocking(|| Etcd::start(3))
        .await
        .expect("etcd");
    let a = join(&etcd, "a").await;
    let b = join(&etcd, "b").await;
    let c = join(&etcd, "c").await;
    let before = wait_shared(&[&a, &b, &c], DEADLINE).await;
    // The owners as read from etcd agree with what each instance acts on.
    poll_until_async("a's view of the owners to agree", DEADLINE, || async {
        let seen: BTreeMap<u16, (String, u64)> = a
            .owners()
            .into_iter()
            .map(|(b, o)| (b, (o.member, o.epoch)))
            .collect();
        (seen == before).then_some(())
    })
    .await;
    assert_eq!(a.members().len(), 3);
    let target_epoch = a.epoch("web").or(b.epoch("web")).or(c.epoch("web"));
    assert!(target_epoch.is_some(), "nobody owns target `web`");

    // c dies without a word (its task stops, its lease is not renewed).
    let mut changes = a.changes();
    changes.mark_unchanged();
    let died = Instant::now();
    drop(c);
    let after = wait_shared(&[&a, &b], TTL + SLACK).await;
    assert!(
        changes.has_changed().expect("a's task runs"),
        "a took buckets silently"
    );
    println!("c's buckets taken after {:?}", died.elapsed());
    for (bucket, (owner, epoch)) in &before {
        if owner == "c" {
            let (new_owner, new_epoch) = &after[bucket];
            assert!(
                new_epoch > epoch,
                "bucket {bucket}: epoch {new_epoch} after {epoch}"
            );
            assert_ne!(new_owner, "c");
        } else {
            assert_eq!(
                &after[bucket],
                &(owner.clone(), *epoch),
                "bucket {bucket} moved"
            );
        }
    }
    assert_eq!(
        poll_until_async("c to leave the members", DEADLINE, || async {
            (a.members().len() == 2).then_some(2)
        })
        .await,
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaving_instance_is_replaced_at_once_and_a_joiner_takes_its_share_without_a_gap() {
    let _one = ONE_ETCD.lock().await;
    let etcd = tokio::task::spawn_blocking(|| Etcd::start(3))
        .await
        .expect("etcd");
    let a = join(&etcd, "a").await;
    let b = join(&etcd, "b").await;
    let c = join(&etcd, "c").await;
    wait_shared(&[&a, &b, &c], DEADLINE).await;

    // A graceful leave revokes the lease: no waiting for it to expire.
    let left = Instant::now();
    c.leave().await;
    assert!(c.owned().is_empty() && !c.is_live());
    drop(c);
    wait_shared(&[&a, &b], TTL).await;
    println!("c's buckets taken {:?} after it left", left.elapsed());

    // A fourth joins while the others act: at every moment each bucket is acted on by at
    // most one instance, and etcd never has a bucket without an owner.
    let watcher = EtcdClient::new(&etcd.endpoints());
    let start = watcher
        .get("/prescale-test/owners/")
        .await
        .expect("revision")
        .header
        .expect("header")
        .revision;
    let joined = Instant::now();
    let d = join(&etcd, "d").await;
    // (c's name is free again too.)
    let e = join(&etcd, "c").await;
    let all = loop {
        assert_disjoint(&[&a, &b, &d, &e]);
        if let Ok(all) = shared_once(&[&a, &b, &d, &e]) {
            break all;
        }
        assert!(
            joined.elapsed() < TTL + SLACK,
            "joiners did not get their share: {:?}",
            shared_once(&[&a, &b, &d, &e])
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    println!("joiners have their share after {:?}", joined.elapsed());
    assert_eq!(all.values().filter(|(o, _)| o == "d").count(), 64);
    let now = watcher
        .get_prefix("/prescale-test/owners/")
        .await
        .expect("owners");
    assert_eq!(now.kvs.len(), usize::from(BUCKETS));
    // Every change of an owner key since before the join was a rewrite, never a delete.
    let mut stream = watcher
        .watch_prefix("/prescale-test/owners/", start + 1)
        .await
        .expect("watch");
    // The last change of an owner key (a delete is always followed by a put, since all
    // are present now).
    let end = now
        .kvs
        .iter()
        .map(|kv| kv.mod_revision)
        .max()
        .expect("owners");
    let mut rewrites = 0;
    'events: while let Some(r) = stream.message().await.expect("watch message") {
        for ev in r.events {
            let kv = ev.kv.expect("kv");
            if kv.mod_revision > end {
                break 'events;
            }
            assert_eq!(
                ev.r#type,
                i32::from(EventType::Put),
                "owner key {} deleted during the join",
                String::from_utf8_lossy(&kv.key)
            );
            rewrites += 1;
            if kv.mod_revision == end {
                break 'events;
            }
        }
    }
    assert!(
        rewrites >= 128,
        "only {rewrites} owner changes for two joiners"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_quorum_stops_all_acting_and_its_return_resumes_it() {
    let _one = ONE_ETCD.lock().await;
    let mut etcd = tokio::task::spawn_blocking(|| Etcd::start(3))
        .await
        .expect("etcd");
    let a = join(&etcd, "a").await;
    let b = join(&etcd, "b").await;
    let c = join(&etcd, "c").await;
    let before = wait_shared(&[&a, &b, &c], DEADLINE).await;

    // One member down: quorum holds, ownership stays where it was.
    etcd.kill(2);
    let killed = Instant::now();
    while killed.elapsed() < TTL * 2 {
        assert_disjoint(&[&a, &b, &c]);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = wait_shared(&[&a, &b, &c], TTL + SLACK).await;
    assert_eq!(after, before, "one etcd member down moved buckets");

    // Quorum lost: nobody acts on anything within the lease.
    let lost = Instant::now();
    etcd.kill(1);
    let stopped = poll_until_async("every instance to stop acting", TTL + SLACK, || async {
        [&a, &b, &c]
            .iter()
            .all(|c| c.owned().is_empty() && c.epoch("web").is_none())
            .then(|| lost.elapsed())
    })
    .await;
    println!("acting stopped {stopped:?} after the quorum was lost");
    // The local clock alone guarantees it: the last successful renewal's send time + TTL
    // − 1 s. A leader that lost its followers renews until its quorum check fails, one to
    // two election timeouts (1–2 s) later; the slack is for this poll on a busy machine.
    assert!(stopped <= TTL + Duration::from_millis(1_500), "{stopped:?}");

    // Quorum back: acting resumes, every bucket owned exactly once.
    // Kept until the end: dropping it stops etcd.
    let _etcd = tokio::task::spawn_blocking(move || {
        etcd.restart(1);
        etcd.wait_all_healthy();
        etcd
    })
    .await
    .expect("etcd back");
    wait_shared(&[&a, &b, &c], DEADLINE).await;
}

/// etcd frozen longer than the lease: when it thaws, the lease has expired and the
/// keep-alive stream can no longer be opened for it ("lease not found"); the instance
/// must notice, join again with a new lease and take the buckets back at higher epochs,
/// rather than retry the dead lease forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_whose_lease_expired_while_etcd_was_frozen_joins_again() {
    let _one = ONE_ETCD.lock().await;
    let etcd = tokio::task::spawn_blocking(|| Etcd::start(1))
        .await
        .expect("etcd");
    let a = join(&etcd, "a").await;
    let before = wait_shared(&[&a], DEADLINE).await;
    etcd.signal(0, "STOP");
    poll_until_async("a to stop acting", TTL + SLACK, || async {
        a.owned().is_empty().then_some(())
    })
    .await;
    // The scenario, not a synchronisation: etcd stays frozen past the lease (its clock
    // runs on, so once thawed it expires the lease).
    tokio::time::sleep(TTL * 2).await;
    etcd.signal(0, "CONT");
    let after = wait_shared(&[&a], TTL * 2 + SLACK).await;
    for (bucket, (owner, epoch)) in &after {
        assert_eq!(owner, "a");
        assert!(*epoch > before[bucket].1, "bucket {bucket} kept its epoch");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_whose_lease_is_revoked_stops_at_once_and_rejoins_at_higher_epochs() {
    let _one = ONE_ETCD.lock().await;
    let etcd = tokio::task::spawn_blocking(|| Etcd::start(3))
        .await
        .expect("etcd");
    let a = join(&etcd, "a").await;
    let b = join(&etcd, "b").await;
    let before = wait_shared(&[&a, &b], DEADLINE).await;
    // Revoke b's lease behind its back, as etcd does when it decides the lease expired.
    let admin = EtcdClient::new(&etcd.endpoints());
    let member = admin
        .get("/prescale-test/members/b")
        .await
        .expect("b's member key");
    let lease = member.kvs.first().expect("b is a member").lease;
    admin.lease_revoke(lease).await.expect("revoke");
    // a takes everything at once, b rejoins with a new lease and is handed its share; at
    // no moment do both act on one bucket.
    let revoked = Instant::now();
    let after = loop {
        assert_disjoint(&[&a, &b]);
        if let Ok(all) = shared_once(&[&a, &b])
            && all.iter().all(|(bucket, (owner, epoch))| {
                owner == "a" && before[bucket].0 == "a" || *epoch > before[bucket].1
            })
        {
            break all;
        }
        assert!(
            revoked.elapsed() < TTL + SLACK,
            "b did not rejoin with its share: {:?}",
            shared_once(&[&a, &b])
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    for (bucket, (owner, epoch)) in &after {
        if owner == "b" {
            assert!(
                *epoch > before[bucket].1,
                "bucket {bucket} kept its epoch {epoch}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_authentication_is_used_and_a_wrong_password_is_refused_without_showing_it() {
    let _one = ONE_ETCD.lock().await;
    use common::etcd_client::pb;
    let etcd = tokio::task::spawn_blocking(|| Etcd::start(1))
        .await
        .expect("etcd");
    let mut admin = EtcdClient::new(&etcd.endpoints()).auth();
    let user = |name: &str, password: &str| pb::AuthUserAddRequest {
        name: name.to_owned(),
        password: password.to_owned(),
    };
    let grant = |user: &str, role: &str| pb::AuthUserGrantRoleRequest {
        user: user.to_owned(),
        role: role.to_owned(),
    };
    admin.user_add(user("root", "root-pw")).await.expect("root");
    admin
        .user_grant_role(grant("root", "root"))
        .await
        .expect("root role");
    let role = pb::AuthRoleAddRequest {
        name: "prescale".to_owned(),
    };
    admin.role_add(role).await.expect("role");
    // Read and write every key under the prefix: [`/prescale-test/`, `/prescale-test0`).
    let keys = pb::AuthRoleGrantPermissionRequest {
        name: "prescale".to_owned(),
        perm: Some(pb::Permission {
            perm_type: pb::permission::Type::Readwrite.into(),
            key: b"/prescale-test/".to_vec(),
            range_end: b"/prescale-test0".to_vec(),
        }),
    };
    admin.role_grant_permission(keys).await.expect("grant");
    admin
        .user_add(user("prescale", "s3cret-pw"))
        .await
        .expect("user");
    admin
        .user_grant_role(grant("prescale", "prescale"))
        .await
        .expect("user role");
    admin
        .auth_enable(pb::AuthEnableRequest {})
        .await
        .expect("enable auth");

    let auth = |password: &str| {
        Some(EtcdAuth {
            username: "prescale".to_owned(),
            password: Secret::new(password),
        })
    };
    let a = Cluster::join(&config_with(&etcd, "a", auth("s3cret-pw")))
        .await
        .expect("a joins with its credentials");
    let b = Cluster::join(&config_with(&etcd, "b", auth("s3cret-pw")))
        .await
        .expect("b joins with its credentials");
    wait_shared(&[&a, &b], DEADLINE).await;
    b.leave().await;
    wait_shared(&[&a], TTL).await;

    // Changing a user's password (to the same one, here) makes etcd forget the user's
    // tokens ("invalid auth token"): `a` authenticates again and reads on.
    let signed_in = pb::AuthenticateRequest {
        name: "root".to_owned(),
        password: "root-pw".to_owned(),
    };
    let root = admin.authenticate(signed_in).await.expect("root's token");
    let mut change = tonic::Request::new(pb::AuthUserChangePasswordRequest {
        name: "prescale".to_owned(),
        password: "s3cret-pw".to_owned(),
    });
    let token = root.into_inner().token.parse().expect("an ASCII token");
    change.metadata_mut().insert("token", token);
    admin
        .user_change_password(change)
        .await
        .expect("password changed");
    let read = a.shared_state("web").await;
    assert!(read.is_ok(), "a's old token was not replaced: {read:?}");

    let refused = Cluster::join(&config_with(&etcd, "c", auth("wrong-pw")))
        .await
        .err()
        .expect("a wrong password is refused")
        .to_string();
    assert!(
        refused.contains("connect") && !refused.contains("wrong-pw"),
        "{refused}"
    );
    let anonymous = Cluster::join(&config(&etcd, "d")).await.err();
    assert!(anonymous.is_some(), "joined without credentials");
}

/// Runs `openssl` with `args` in `dir`; panics with its output when it fails.
fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl (Debian package openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA `<name>.pem` / `<name>.key` in `dir`.
fn make_ca(dir: &std::path::Path, name: &str) {
    let (pem, key, cn) = (
        format!("{name}.pem"),
        format!("{name}.key"),
        format!("/CN={name}"),
    );
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &pem,
            "-days",
            "2",
            "-subj",
            &cn,
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_etcd_trusts_the_configured_ca_only() {
    let _one = ONE_ETCD.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    make_ca(d, "ca");
    make_ca(d, "other-ca");
    openssl(
        d,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    );
    std::fs::write(
        d.join("ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .expect("write ext");
    openssl(
        d,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "ext",
        ],
    );
    let (cert, key) = (d.join("server.pem"), d.join("server.key"));
    let etcd = tokio::task::spawn_blocking(move || Etcd::start_tls(1, cert, key))
        .await
        .expect("etcd");
    let with_ca = |ca: &str| {
        let mut c = config(&etcd, "a");
        c.tls = Some(EtcdTls {
            ca_file: d.join(ca),
            ca_pem: std::fs::read_to_string(d.join(ca)).expect("read CA"),
            identity: None,
        });
        c
    };
    assert!(etcd.endpoints()[0].starts_with("https://"));
    let a = Cluster::join(&with_ca("ca.pem"))
        .await
        .expect("a joins over TLS");
    wait_shared(&[&a], DEADLINE).await;
    a.leave().await;
    let refused = Cluster::join(&with_ca("other-ca.pem"))
        .await
        .err()
        .expect("joined while trusting another CA");
    let refused = refused.to_string();
    assert!(refused.contains("certificate"), "{refused}");
}

/// What an owner shares for the next one is written only at its epoch, read back as
/// written, and a count or pause that cannot be read (garbage written by hand, say) is an
/// error naming its key, never a guess: a new owner holds rather than act on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_state_is_fenced_by_the_epoch_and_garbage_is_refused_naming_the_key() {
    let _one = ONE_ETCD.lock().await;
    let etcd = tokio::task::spawn_blocking(|| Etcd::start(1))
        .await
        .expect("etcd");
    let a = join(&etcd, "a").await;
    let epoch = poll_until_async("a to own web", DEADLINE, || async {
        match a.standing("web") {
            Standing::Owner(e) => Some(e),
            _ => None,
        }
    })
    .await;
    let count = |replicas, at| SharedCount {
        replicas,
        at,
        epoch,
    };
    a.share("web", epoch, Share::Asked(count(7, 100)))
        .await
        .expect("asked");
    a.share("web", epoch, Share::Delivered(count(5, 90)))
        .await
        .expect("delivered");
    a.share("web", epoch, Share::Paused(true))
        .await
        .expect("paused");
    let state = a.shared_state("web").await.expect("read");
    assert_eq!(
        (state.asked, state.delivered, state.paused),
        (Some(count(7, 100)), Some(count(5, 90)), true)
    );
    assert_eq!(state.running(), Some(7));

    // An older epoch cannot write.
    let stale = a.share("web", epoch - 1, Share::Paused(false)).await;
    assert!(
        matches!(stale, Err(ClusterError::NotOwner { .. })),
        "{stale:?}"
    );
    assert!(a.shared_state("web").await.expect("read").paused);

    let admin = EtcdClient::new(&etcd.endpoints());
    for (field, garbage) in [("asked", "{\"replicas\": -3}"), ("paused", "yes")] {
        let key = format!("/prescale-test/targets/web/{field}");
        admin.put(&key, garbage).await.expect("put");
        let e = a
            .shared_state("web")
            .await
            .expect_err("refused")
            .to_string();
        assert!(e.contains(&key) && e.contains(garbage), "{e}");
        admin.delete(&key).await.expect("delete");
    }
    a.leave().await;
}

/// An instance started while one etcd member of three is down joins through the others
/// (its first requests may go to the dead member: they are tried again) and takes every
/// bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_joins_while_one_etcd_member_is_down() {
    let _one = ONE_ETCD.lock().await;
    let mut etcd = tokio::task::spawn_blocking(|| Etcd::start(3))
        .await
        .expect("etcd");
    etcd.kill(0);
    let a = join(&etcd, "a").await;
    let all = wait_shared(&[&a], DEADLINE).await;
    assert_eq!(all.len(), usize::from(BUCKETS));
    a.leave().await;
}
