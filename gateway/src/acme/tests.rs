//! The renewer against a fake CA under tokio's paused time: days pass in
//! milliseconds, and every order's time is recorded.

use std::collections::VecDeque;
use std::sync::Mutex;

use super::certificate::testing::TestCa;
use super::*;
use crate::tls::CertTable;

const HOST: &str = "dvr.example.org";
const DAY: Duration = Duration::from_secs(86_400);

/// Wall-clock time that moves with tokio's (paused) clock.
#[derive(Debug, Clone, Copy)]
struct PausedClock {
    base: SystemTime,
    start: tokio::time::Instant,
}

impl PausedClock {
    fn new() -> Self {
        Self {
            base: SystemTime::UNIX_EPOCH + 20_000 * DAY,
            start: tokio::time::Instant::now(),
        }
    }
}

impl Clock for PausedClock {
    fn now(&self) -> SystemTime {
        self.base + self.start.elapsed()
    }
}

#[derive(Debug, Clone, PartialEq)]
struct Ordered {
    at: SystemTime,
    challenge: ChallengeKind,
    replaces: bool,
}

struct FakeCa {
    ca: TestCa,
    clock: PausedClock,
    lifetime: Duration,
    failures: Mutex<VecDeque<AcmeError>>,
    /// Fail every order while set.
    down: Mutex<Option<AcmeError>>,
    /// ARI: a one-day window this long after each certificate's start.
    window: Mutex<Option<Duration>>,
    orders: Mutex<Vec<Ordered>>,
}

impl std::fmt::Debug for FakeCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FakeCa")
    }
}

impl FakeCa {
    fn new(clock: PausedClock, lifetime: Duration) -> Self {
        Self {
            ca: TestCa::new("Fake Issuing CA"),
            clock,
            lifetime,
            failures: Mutex::default(),
            down: Mutex::default(),
            window: Mutex::default(),
            orders: Mutex::default(),
        }
    }

    fn orders(&self) -> Vec<Ordered> {
        self.orders.lock().unwrap().clone()
    }

    /// Order times, as days (fractional) since the clock's start.
    fn order_days(&self) -> Vec<f64> {
        self.orders()
            .iter()
            .map(|o| o.at.duration_since(self.clock.base).unwrap().as_secs_f64() / DAY.as_secs_f64())
            .collect()
    }
}

impl CertificateAuthority for FakeCa {
    fn directory(&self) -> &str {
        "https://fake-ca.example/directory"
    }

    async fn order(&self, request: OrderRequest<'_>) -> Result<String, AcmeError> {
        let now = self.clock.now();
        self.orders.lock().unwrap().push(Ordered {
            at: now,
            challenge: request.challenge,
            replaces: request.replaces.is_some(),
        });
        if let Some(mut error) = self.down.lock().unwrap().clone() {
            if let FailureKind::Validation(_) = error.kind {
                error.kind = FailureKind::Validation(request.challenge);
            }
            return Err(error);
        }
        if let Some(error) = self.failures.lock().unwrap().pop_front() {
            return Err(error);
        }
        Ok(self.ca.sign_csr(request.csr_der, now, self.lifetime))
    }

    async fn renewal_window(
        &self,
        leaf: &CertificateDer<'static>,
    ) -> Result<Option<(Window, Duration)>, AcmeError> {
        let Some(offset) = *self.window.lock().unwrap() else {
            return Ok(None);
        };
        let (validity, _) = certificate::describe(leaf).unwrap();
        let start = validity.not_before + offset;
        Ok(Some((
            Window {
                start,
                end: start + DAY,
            },
            Duration::from_secs(6 * 3600),
        )))
    }
}

struct Harness {
    ca: Arc<FakeCa>,
    resolver: Arc<CertResolver>,
    status: watch::Receiver<Vec<AcmeHostStatus>>,
    plans: watch::Sender<Option<Arc<Plan<FakeCa>>>>,
    drain: Drain,
    _dir: tempfile::TempDir,
}

fn settings(hosts: &[&str], challenge: ChallengePreference) -> Acme {
    Acme {
        directory: "https://fake-ca.example/directory".to_owned(),
        directory_ca: None,
        contact: Vec::new(),
        challenge,
        hosts: hosts.iter().map(|h| (*h).to_owned()).collect(),
        key_type: KeyType::EcdsaP256,
    }
}

impl Harness {
    fn start(lifetime: Duration, challenge: ChallengePreference) -> Self {
        Self::start_in(
            tempfile::tempdir().unwrap(),
            PausedClock::new(),
            lifetime,
            challenge,
        )
    }

    fn start_in(
        dir: tempfile::TempDir,
        clock: PausedClock,
        lifetime: Duration,
        challenge: ChallengePreference,
    ) -> Self {
        let ca = Arc::new(FakeCa::new(clock, lifetime));
        let resolver = Arc::new(CertResolver::new(
            CertTable::load(&[], dir.path(), &[]).unwrap(),
            Arc::default(),
        ));
        let (status_tx, status) = watch::channel(Vec::new());
        let plan = Arc::new(Plan {
            settings: settings(&[HOST], challenge),
            ca: Arc::clone(&ca),
            has_http: true,
        });
        let (plans, plans_rx) = watch::channel(Some(plan));
        let drain = Drain::new(tokio_util::sync::CancellationToken::new());
        let renewer = Renewer::new(Arc::clone(&resolver), dir.path(), clock, || 0.0, status_tx);
        drain.spawn(renewer.run(plans_rx, drain.clone()));
        Self {
            ca,
            resolver,
            status,
            plans,
            drain,
            _dir: dir,
        }
    }

    fn host(&self) -> AcmeHostStatus {
        self.status
            .borrow()
            .iter()
            .find(|h| h.host == HOST)
            .unwrap()
            .clone()
    }

    /// Lets time pass (paused time: instantly) until `state`.
    async fn wait_for_state(&mut self, state: &str) -> AcmeHostStatus {
        for _ in 0..10_000 {
            if self
                .status
                .borrow()
                .iter()
                .any(|h| h.host == HOST && h.state == state)
            {
                return self.host();
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        panic!("never reached {state}: {:?}", self.host());
    }

    fn served(&self) -> Option<String> {
        self.resolver
            .issued(HOST)
            .map(|key| crate::tls::sha256_hex(&key.cert[0]))
    }
}

fn refused(kind: FailureKind, retry_after: Option<Duration>) -> AcmeError {
    AcmeError {
        message: "refused".to_owned(),
        kind,
        retry_after,
    }
}

#[tokio::test(start_paused = true)]
async fn issues_at_start_then_renews_at_two_thirds_of_the_lifetime() {
    let mut lab = Harness::start(90 * DAY, ChallengePreference::Auto);
    let first = lab.wait_for_state("valid").await;
    assert_eq!(first.issuer.as_deref(), Some("Fake Issuing CA"));
    assert_eq!(lab.served(), first.sha256);
    assert_eq!(first.challenge, Some(ChallengeKind::Http01));
    assert!(!first.renewal_info, "the fake CA offers no ARI");

    tokio::time::sleep(200 * DAY).await;
    let days = lab.ca.order_days();
    // Day 0, then every 60 days (jitter 0): ⅔ of 90.
    assert_eq!(days.len(), 4, "{days:?}");
    for (i, day) in days.iter().enumerate() {
        let expected = 60.0 * i as f64;
        assert!(
            (day - expected).abs() < 0.01,
            "order {i} on day {day}, expected {expected}"
        );
    }
    let now = lab.host();
    assert_ne!(now.sha256, first.sha256, "renewed and swapped");
    assert_eq!(lab.served(), now.sha256);
    assert!(lab.ca.orders().iter().all(|o| !o.replaces));
    lab.drain.stop();
}

#[tokio::test(start_paused = true)]
async fn a_failing_ca_backs_off_keeps_the_certificate_until_it_expires_then_recovers() {
    let mut lab = Harness::start(90 * DAY, ChallengePreference::Http01);
    let good = lab.wait_for_state("valid").await;
    *lab.ca.down.lock().unwrap() = Some(refused(FailureKind::Other, None));

    // Renewal starts on day 60 and fails; the certificate keeps serving.
    tokio::time::sleep(60 * DAY + Duration::from_secs(30)).await;
    let retrying = lab.wait_for_state("retrying").await;
    assert_eq!(retrying.last_error.as_deref(), Some("refused"));
    assert_eq!(lab.served(), good.sha256);
    assert!(
        retrying
            .detail
            .starts_with("serving the certificate from Fake Issuing CA"),
        "{}",
        retrying.detail
    );

    tokio::time::sleep(DAY).await;
    let orders = lab.ca.orders();
    let gaps: Vec<u64> = orders[1..]
        .windows(2)
        .map(|pair| pair[1].at.duration_since(pair[0].at).unwrap().as_secs())
        .collect();
    // 1 min, doubling, up to a day (30 days left: cap 1 day).
    assert_eq!(gaps[..6], [60, 120, 240, 480, 960, 1920], "{gaps:?}");
    assert!(gaps.iter().all(|gap| *gap <= 86_400));
    assert_eq!(lab.served(), good.sha256, "still serving while retrying");

    // Day 90: expired, withdrawn, the status says so loudly.
    tokio::time::sleep(30 * DAY).await;
    let expired = lab.wait_for_state("expired").await;
    assert!(expired.detail.starts_with("EXPIRED at "), "{}", expired.detail);
    assert_eq!(lab.served(), None, "the self-signed certificate serves again");

    // The CA comes back: the next retry (at most a day later) issues.
    *lab.ca.down.lock().unwrap() = None;
    tokio::time::sleep(DAY + Duration::from_secs(60)).await;
    let back = lab.wait_for_state("valid").await;
    assert_eq!(back.failures, 0);
    assert_eq!(back.last_error, None);
    assert!(lab.served().is_some());
    lab.drain.stop();
}

#[tokio::test(start_paused = true)]
async fn retry_after_from_the_ca_is_respected() {
    let lab = Harness::start(90 * DAY, ChallengePreference::Http01);
    lab.ca
        .failures
        .lock()
        .unwrap()
        .push_back(refused(FailureKind::Other, Some(Duration::from_secs(3 * 3600))));
    tokio::time::sleep(4 * 3600 * Duration::from_secs(1)).await;
    let days = lab.ca.order_days();
    assert_eq!(days.len(), 2, "{days:?}");
    let hours = days[1] * 24.0;
    assert!((hours - 3.0).abs() < 0.01, "second order after {hours} h");
    assert_eq!(lab.host().state, "valid");
    lab.drain.stop();
}

#[tokio::test(start_paused = true)]
async fn automatic_mode_switches_challenge_after_a_failed_validation() {
    let lab = Harness::start(90 * DAY, ChallengePreference::Auto);
    lab.ca
        .failures
        .lock()
        .unwrap()
        .push_back(refused(FailureKind::Validation(ChallengeKind::Http01), None));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let challenges: Vec<ChallengeKind> = lab.ca.orders().iter().map(|o| o.challenge).collect();
    assert_eq!(
        challenges,
        [ChallengeKind::Http01, ChallengeKind::TlsAlpn01],
        "switched at once"
    );
    assert_eq!(lab.host().state, "valid");

    // Both failing: they alternate with backoff in between.
    let lab = Harness::start(90 * DAY, ChallengePreference::Auto);
    *lab.ca.down.lock().unwrap() = Some(refused(FailureKind::Validation(ChallengeKind::Http01), None));
    tokio::time::sleep(Duration::from_secs(200)).await;
    let orders = lab.ca.orders();
    let challenges: Vec<ChallengeKind> = orders.iter().map(|o| o.challenge).collect();
    assert_eq!(
        challenges[..3],
        [
            ChallengeKind::Http01,
            ChallengeKind::TlsAlpn01,
            ChallengeKind::Http01
        ]
    );
    let gap = orders[2].at.duration_since(orders[1].at).unwrap();
    assert!(gap >= Duration::from_secs(60), "{gap:?}");
    lab.drain.stop();
}

#[tokio::test(start_paused = true)]
async fn the_cas_renewal_window_sets_the_time_and_orders_replace() {
    let lab = Harness::start(90 * DAY, ChallengePreference::Http01);
    *lab.ca.window.lock().unwrap() = Some(20 * DAY);
    tokio::time::sleep(45 * DAY).await;
    let orders = lab.ca.orders();
    let days = lab.ca.order_days();
    assert_eq!(orders.len(), 3, "{days:?}");
    assert!(
        (days[1] - 20.0).abs() < 0.01 && (days[2] - 40.0).abs() < 0.01,
        "{days:?}"
    );
    assert!(!orders[0].replaces);
    assert!(
        orders[1].replaces,
        "an ARI renewal names the certificate it replaces"
    );
    assert!(lab.host().renewal_info);
    lab.drain.stop();
}

#[tokio::test(start_paused = true)]
async fn a_stored_certificate_serves_at_start_and_a_removed_host_is_withdrawn() {
    let dir = tempfile::tempdir().unwrap();
    let clock = PausedClock::new();
    let path = dir.path().to_owned();
    let mut first = Harness::start_in(dir, clock, 90 * DAY, ChallengePreference::Http01);
    let issued = first.wait_for_state("valid").await;
    first.drain.stop();
    // Keep the directory; start again on it.
    let dir = std::mem::replace(&mut first._dir, tempfile::tempdir().unwrap());
    assert_eq!(dir.path(), path);
    let mut again = Harness::start_in(dir, clock, 90 * DAY, ChallengePreference::Http01);
    let restored = again.wait_for_state("valid").await;
    assert_eq!(restored.sha256, issued.sha256);
    assert!(
        again.ca.orders().is_empty(),
        "no new order for a good stored certificate"
    );
    assert_eq!(again.served(), issued.sha256);

    again.plans.send_replace(Some(Arc::new(Plan {
        settings: settings(&["other.example.org"], ChallengePreference::Http01),
        ca: Arc::clone(&again.ca),
        has_http: true,
    })));
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(again.served(), None);
    assert!(again.status.borrow().iter().all(|h| h.host != HOST));
    again.drain.stop();
}

#[tokio::test(start_paused = true)]
async fn another_key_type_orders_a_new_certificate_at_once() {
    let mut lab = Harness::start(90 * DAY, ChallengePreference::Http01);
    let first = lab.wait_for_state("valid").await;
    let mut p384 = settings(&[HOST], ChallengePreference::Http01);
    p384.key_type = KeyType::EcdsaP384;
    lab.plans.send_replace(Some(Arc::new(Plan {
        settings: p384,
        ca: Arc::clone(&lab.ca),
        has_http: true,
    })));
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(lab.ca.orders().len(), 2, "re-issued for the new key type");
    let second = lab.wait_for_state("valid").await;
    assert_ne!(second.sha256, first.sha256);
    // And not again: the new certificate is of the configured kind.
    tokio::time::sleep(DAY).await;
    assert_eq!(lab.ca.orders().len(), 2);
    lab.drain.stop();
}

#[tokio::test(start_paused = true)]
async fn a_certificate_that_cannot_be_stored_still_serves_and_is_not_ordered_again() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("acme")).unwrap();
    // A file where the certificates' directory should be.
    std::fs::write(dir.path().join("acme/certs"), "in the way").unwrap();
    let mut lab = Harness::start_in(dir, PausedClock::new(), 90 * DAY, ChallengePreference::Http01);
    let issued = lab.wait_for_state("valid").await;
    assert!(
        issued
            .last_error
            .as_deref()
            .unwrap_or("")
            .starts_with("cannot store the certificate"),
        "{issued:?}"
    );
    assert_eq!(lab.served(), issued.sha256);
    tokio::time::sleep(30 * DAY).await;
    assert_eq!(lab.ca.orders().len(), 1, "no duplicate orders");
    lab.drain.stop();
}

#[tokio::test(start_paused = true)]
async fn a_stored_certificate_that_expired_while_camgate_was_off_is_reported_expired() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    let clock = PausedClock::new();
    let mut first = Harness::start_in(dir, clock, DAY, ChallengePreference::Http01);
    first.wait_for_state("valid").await;
    first.drain.stop();
    let dir = std::mem::replace(&mut first._dir, tempfile::tempdir().unwrap());
    assert_eq!(dir.path(), path);
    // Two days "off".
    tokio::time::sleep(2 * DAY).await;
    let mut again = Harness::start_in(dir, clock, DAY, ChallengePreference::Http01);
    *again.ca.down.lock().unwrap() = Some(refused(FailureKind::Other, None));
    let expired = again.wait_for_state("expired").await;
    assert!(expired.detail.starts_with("EXPIRED at "), "{}", expired.detail);
    assert_eq!(again.served(), None);
    again.drain.stop();
}

#[tokio::test(start_paused = true)]
async fn a_reload_restarts_the_backoff_but_not_before_the_cas_retry_after() {
    let lab = Harness::start(90 * DAY, ChallengePreference::Http01);
    lab.ca
        .failures
        .lock()
        .unwrap()
        .push_back(refused(FailureKind::Other, Some(Duration::from_secs(3600))));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(lab.ca.orders().len(), 1);
    let mut changed = settings(&[HOST], ChallengePreference::Http01);
    changed.contact = vec!["mailto:new@example.org".to_owned()];
    lab.plans.send_replace(Some(Arc::new(Plan {
        settings: changed,
        ca: Arc::clone(&lab.ca),
        has_http: true,
    })));
    tokio::time::sleep(Duration::from_secs(1800)).await;
    assert_eq!(lab.ca.orders().len(), 1, "the CA asked for an hour");
    tokio::time::sleep(Duration::from_secs(1900)).await;
    assert_eq!(lab.ca.orders().len(), 2);
    lab.drain.stop();
}
