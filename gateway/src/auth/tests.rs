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
    credentials: Credentials,
    shared: AuthShared,
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
    Fixture {
        credentials: Credentials::new(&[alice().clone()], &[token, expired]),
        shared: AuthShared::new(
            GuardSettings {
                failures: 3,
                ..GuardSettings::default()
            },
            Box::new(NoSink),
        ),
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
    async fn check(&self, client: &str, exempt: bool, query: Option<&str>, presented: Presented) -> Outcome {
        let attempt = Attempt {
            site: "dvr",
            rule: Some("streams"),
            requirement: &self.requirement,
            client: client.parse().unwrap(),
            exempt,
            path: &self.path,
            query,
        };
        authenticate(&self.credentials, &self.shared, &attempt, presented).await
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
