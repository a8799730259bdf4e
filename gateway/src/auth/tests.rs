use std::sync::OnceLock;

use http::HeaderValue;

use super::*;
use crate::proxy::path::{PathPolicy, canonicalize};

fn headers(authorization: &[u8]) -> HeaderMap {
    let mut map = HeaderMap::new();
    map.insert(AUTHORIZATION, HeaderValue::from_bytes(authorization).unwrap());
    map
}

fn basic(user: &str, password: &str) -> Vec<u8> {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
    .into_bytes()
}

#[test]
fn authorization_headers_and_query_tokens_are_read_strictly() {
    assert_eq!(presented(&HeaderMap::new(), None), Presented::None);
    assert_eq!(
        presented(&headers(&basic("alice", "pa:ss")), None),
        Presented::Basic {
            user: "alice".into(),
            password: b"pa:ss".to_vec()
        }
    );
    assert_eq!(
        presented(&headers(b"bearer cgt_x"), None),
        Presented::Token("cgt_x".into())
    );
    assert_eq!(
        presented(&HeaderMap::new(), Some("a=1&token=cgt%5Fy")),
        Presented::Token("cgt_y".into())
    );
    // The header wins over the query.
    assert_eq!(
        presented(&headers(b"Bearer cgt_h"), Some("token=cgt_q")),
        Presented::Token("cgt_h".into())
    );
    let mut two = headers(b"Bearer a");
    two.append(AUTHORIZATION, HeaderValue::from_static("Bearer b"));
    let latin1 = [b"Basic ".as_slice(), &[0xe9]].concat();
    let non_utf8_user = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode([0xff, b':', b'x'])
    );
    let long = format!("Bearer {}", "a".repeat(5000));
    for (map, query) in [
        (two, None),
        (headers(b"Basic !!!"), None),
        (headers(&basic("", "x")), None),
        (headers(b"Basic YWxpY2U="), None),
        (headers(&latin1), None),
        (headers(non_utf8_user.as_bytes()), None),
        (headers(b"Bearer"), None),
        (headers(b"Bearer a b"), None),
        (headers(b"Digest username=x"), None),
        (headers(long.as_bytes()), None),
        (HeaderMap::new(), Some("token=a&token=b")),
        (HeaderMap::new(), Some("token=")),
    ] {
        assert!(
            matches!(presented(&map, query), Presented::Malformed(_)),
            "{map:?} {query:?}"
        );
    }
}

struct Fixture {
    shared: Arc<AuthShared>,
    requirement: Requirement,
    secret: String,
    path: CanonicalPath,
}

fn alice() -> &'static User {
    static USER: OnceLock<User> = OnceLock::new();
    USER.get_or_init(|| User {
        name: "alice".into(),
        digest: PasswordDigest::parse(&password::hash(b"s3cret").unwrap()).unwrap(),
        role: Role::Viewer,
    })
}

fn fixture(users: &[&str], tokens: &[&str]) -> Fixture {
    let (secret, digest) = token::generate().unwrap();
    let token = Token {
        name: "ha".into(),
        digest,
        site: "dvr".into(),
        scope: vec![ScopeEntry::parse("/video.mjpg?oids=1", true).unwrap()],
        expires: None,
    };
    let expired = Token {
        name: "old".into(),
        digest: token::digest("cgt_old"),
        expires: Some(SystemTime::UNIX_EPOCH),
        ..token.clone()
    };
    let config = crate::config::auth::Auth {
        users: vec![alice().clone()],
        tokens: vec![token, expired],
        guard: GuardSettings {
            failures: 3,
            ..GuardSettings::default()
        },
        sessions: SessionSettings::default(),
    };
    Fixture {
        shared: Arc::new(AuthShared::new(&config, Sessions::in_memory(), Box::new(NoSink))),
        requirement: Requirement {
            from: vec![],
            users: users.iter().map(|s| s.to_string()).collect(),
            tokens: tokens.iter().map(|s| s.to_string()).collect(),
        },
        secret,
        path: canonicalize("/video.mjpg", PathPolicy::default()).unwrap(),
    }
}

impl Fixture {
    fn attempt<'a>(
        &'a self,
        site: &'a str,
        client: &str,
        exempt: bool,
        query: Option<&'a str>,
    ) -> Attempt<'a> {
        Attempt {
            site,
            rule: Some("streams"),
            requirement: &self.requirement,
            client: client.parse().unwrap(),
            exempt,
            path: &self.path,
            query,
        }
    }

    async fn check(&self, client: &str, exempt: bool, query: Option<&str>, presented: Presented) -> Outcome {
        authenticate(
            &self.shared,
            &self.attempt("dvr", client, exempt, query),
            presented,
        )
        .await
    }

    async fn login(&self, site: &str, password: &str, previous: Option<&str>) -> Result<String, Outcome> {
        let attempt = self.attempt(site, "203.0.113.7", false, None);
        login(&self.shared, &attempt, "alice".into(), password.into(), previous).await
    }
}

fn pw(user: &str, password: &str) -> Presented {
    Presented::Basic {
        user: user.into(),
        password: password.as_bytes().to_vec(),
    }
}

#[tokio::test]
async fn passwords_grant_listed_users_and_wrong_ones_lead_to_a_ban() {
    let f = fixture(&["alice"], &[]);
    let wan = "203.0.113.5";
    assert_eq!(f.check(wan, false, None, Presented::None).await, Outcome::Missing);
    assert_eq!(
        f.check(wan, false, None, pw("alice", "s3cret")).await,
        Outcome::Granted(Principal::User("alice".into()))
    );
    assert!(matches!(
        f.check(wan, false, None, pw("alice", "nope")).await,
        Outcome::Invalid(_)
    ));
    assert!(matches!(
        f.check(wan, false, None, pw("mallory", "x")).await,
        Outcome::Invalid(_)
    ));
    assert!(matches!(
        f.check(wan, false, None, pw("alice", "nope")).await,
        Outcome::Banned(_)
    ));
    // During the ban even the right password fails.
    assert!(matches!(
        f.check(wan, false, None, pw("alice", "s3cret")).await,
        Outcome::Banned(_)
    ));
    // The LAN is never banned.
    for _ in 0..10 {
        assert!(matches!(
            f.check("192.168.1.9", true, None, pw("alice", "x")).await,
            Outcome::Invalid(_)
        ));
    }
    assert_eq!(
        f.check("192.168.1.9", true, None, pw("alice", "s3cret")).await,
        Outcome::Granted(Principal::User("alice".into()))
    );
}

#[tokio::test]
async fn users_not_on_the_rule_are_forbidden() {
    let f = fixture(&["bob"], &["*"]);
    assert!(matches!(
        f.check("203.0.113.5", false, None, pw("alice", "s3cret")).await,
        Outcome::Forbidden(_)
    ));
}

#[tokio::test]
async fn tokens_are_held_to_their_rule_site_scope_and_expiry() {
    let f = fixture(&[], &["*"]);
    let wan = "203.0.113.6";
    let token = || Presented::Token(f.secret.clone());
    assert_eq!(
        f.check(wan, false, Some("oids=1"), token()).await,
        Outcome::Granted(Principal::Token("ha".into()))
    );
    assert!(matches!(
        f.check(wan, false, Some("oids=2"), token()).await,
        Outcome::Forbidden(_)
    ));
    assert!(matches!(
        f.check(wan, false, Some("oids=1"), Presented::Token("cgt_old".into()))
            .await,
        Outcome::Forbidden("the token has expired")
    ));
    let named = fixture(&[], &["other"]);
    assert!(matches!(
        named
            .check(wan, false, Some("oids=1"), Presented::Token(named.secret.clone()))
            .await,
        Outcome::Forbidden(_)
    ));
    for _ in 0..2 {
        assert!(matches!(
            f.check(wan, false, None, Presented::Token("cgt_guess".into()))
                .await,
            Outcome::Invalid(_)
        ));
    }
    assert!(matches!(
        f.check(wan, false, None, Presented::Malformed("x")).await,
        Outcome::Banned(_)
    ));
}

#[tokio::test]
async fn sessions_grant_their_user_on_their_site_until_revoked() {
    let f = fixture(&["alice"], &[]);
    let wan = "203.0.113.7";
    assert!(matches!(
        f.login("dvr", "wrong", None).await,
        Err(Outcome::Invalid(_))
    ));
    let first = f.login("dvr", "s3cret", None).await.unwrap();
    let session = |cookie: &str| Presented::Session(cookie.to_owned());
    assert_eq!(
        f.check(wan, false, None, session(&first)).await,
        Outcome::Granted(Principal::User("alice".into()))
    );
    // Logging in again rotates: the old cookie is dead.
    let second = f.login("dvr", "s3cret", Some(&first)).await.unwrap();
    assert_ne!(first, second);
    assert_eq!(f.check(wan, false, None, session(&first)).await, Outcome::Missing);
    // Another site's session does not open this one.
    let elsewhere = f.login("garage", "s3cret", None).await.unwrap();
    assert_eq!(
        f.check(wan, false, None, session(&elsewhere)).await,
        Outcome::Forbidden("the session is for another site")
    );
    // A tampered cookie is a failure the guard counts; a well-formed
    // unknown one is just a session that ended.
    let mut tampered = second.clone();
    tampered.push('0');
    assert!(matches!(
        f.check(wan, false, None, session(&tampered)).await,
        Outcome::Invalid(_)
    ));
    let flipped = format!(
        "{}{}",
        &second[..10],
        if &second[10..11] == "a" { "b" } else { "a" }
    ) + &second[11..];
    assert_eq!(
        f.check(wan, false, None, session(&flipped)).await,
        Outcome::Missing
    );
    // Logout ends it server-side.
    assert!(logout(&f.shared, &second, wan.parse().unwrap(), "dvr").await);
    assert_eq!(
        f.check(wan, false, None, session(&second)).await,
        Outcome::Missing
    );
}

#[tokio::test]
async fn a_new_password_or_a_removed_user_ends_sessions() {
    let f = fixture(&["*"], &[]);
    let cookie = f.login("dvr", "s3cret", None).await.unwrap();
    let wan = "203.0.113.8";
    let mut config = crate::config::auth::Auth {
        users: vec![alice().clone()],
        ..crate::config::auth::Auth::default()
    };
    f.shared.configure(&config);
    assert!(matches!(
        f.check(wan, false, None, Presented::Session(cookie.clone()))
            .await,
        Outcome::Granted(_)
    ));
    config.users[0].digest = PasswordDigest::parse(&password::hash(b"n3w").unwrap()).unwrap();
    f.shared.configure(&config);
    assert_eq!(
        f.check(wan, false, None, Presented::Session(cookie.clone()))
            .await,
        Outcome::Missing
    );
    assert!(
        f.shared
            .sessions
            .table()
            .list(crate::clock::unix_now(), SessionSettings::default())
            .is_empty()
    );
}

#[test]
fn the_session_cookie_is_read_after_explicit_credentials() {
    let mut map = HeaderMap::new();
    map.insert(
        COOKIE,
        HeaderValue::from_static("a=1; __Host-camgate-session=cgs_x"),
    );
    assert_eq!(presented(&map, None), Presented::Session("cgs_x".into()));
    assert_eq!(presented(&map, Some("token=t")), Presented::Token("t".into()));
    map.insert(AUTHORIZATION, HeaderValue::from_static("Bearer b"));
    assert_eq!(presented(&map, None), Presented::Token("b".into()));
    let mut split = HeaderMap::new();
    split.append(COOKIE, HeaderValue::from_static("a=1"));
    split.append(COOKIE, HeaderValue::from_static("__Host-camgate-session=cgs_y"));
    assert_eq!(presented(&split, None), Presented::Session("cgs_y".into()));
    let mut lookalike = HeaderMap::new();
    lookalike.insert(COOKIE, HeaderValue::from_static("x__Host-camgate-session=cgs_z"));
    assert_eq!(presented(&lookalike, None), Presented::None);
}

#[tokio::test]
async fn camgate_credentials_are_recognised_where_no_rule_consumes_them() {
    let f = fixture(&["alice"], &[]);
    let bearer = headers(format!("Bearer {}", f.secret).as_bytes());
    assert!(f.shared.is_camgate_authorization(&bearer));
    assert!(!f.shared.is_camgate_authorization(&headers(b"Bearer dvr-session")));
    // Basic: only once camgate has verified exactly these credentials.
    let alice = headers(&basic("alice", "s3cret"));
    assert!(!f.shared.is_camgate_authorization(&alice));
    let _ = f.check("203.0.113.9", false, None, pw("alice", "s3cret")).await;
    assert!(f.shared.is_camgate_authorization(&alice));
    assert!(
        !f.shared
            .is_camgate_authorization(&headers(&basic("alice", "other")))
    );
    assert!(!f.shared.is_camgate_authorization(&HeaderMap::new()));

    let strip = |q| without_camgate_tokens(Some(q)).map(std::borrow::Cow::into_owned);
    assert_eq!(strip("token=cgt_abc&x=1").as_deref(), Some("x=1"));
    assert_eq!(
        strip("token=dvr-own&x=cgt_1").as_deref(),
        Some("token=dvr-own&x=cgt_1")
    );
    assert_eq!(strip("token=cgt_abc"), None);
}

#[tokio::test]
async fn a_user_locked_on_one_site_is_not_locked_elsewhere() {
    let f = fixture(&["alice"], &[]);
    // Wrong passwords from many addresses: the name locks (3 × 3) on "dvr".
    for i in 0..9 {
        let _ = f
            .check(&format!("203.0.113.{}", 10 + i), false, None, pw("alice", "x"))
            .await;
    }
    assert!(matches!(
        f.check("203.0.113.50", false, None, pw("alice", "s3cret")).await,
        Outcome::Banned(_)
    ));
    let admin = Attempt {
        site: "admin",
        ..f.attempt("dvr", "192.168.1.2", false, None)
    };
    assert_eq!(
        authenticate(&f.shared, &admin, pw("alice", "s3cret")).await,
        Outcome::Granted(Principal::User("alice".into()))
    );
}
