//! The setup wizard's steps as edits of the config file's text: each sets
//! the keys its step is about and keeps everything else — comments, order,
//! keys the wizard does not know — as it was. The result is checked by the
//! same parser as any config file before anyone sees it as valid.
//!
//! Pure: passwords arrive hashed and tokens as digests (the admin API does
//! that), so these are plain text transformations.

use toml_edit::{Array, ArrayOfTables, DocumentMut, Item, Table, value};

/// The site the wizard manages when the file has none yet.
pub const WIZARD_SITE: &str = "dvr";
/// The site's host until the remote-access step names the public one: a
/// name reserved for home networks, which never gets a public certificate.
pub const PLACEHOLDER_HOST: &str = "dvr.home.arpa";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CameraSegment {
    pub interface: String,
    pub vlan: Option<u16>,
    /// camgate's address there with the prefix, `"10.77.0.1/24"`.
    pub address: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Edit {
    /// `[network] uplink`, and `[cameras]` (none: no camera segment).
    Network {
        uplink: String,
        cameras: Option<CameraSegment>,
    },
    /// The first site's upstream and profile (a site `dvr` if none). The
    /// DVR's address joins `[cameras] dvr_hosts`, so it can reach cameras.
    Dvr {
        upstream: String,
        profile: String,
        dvr_host: Option<String>,
    },
    /// The first site's public name, and `[acme]` for it.
    RemoteAccess {
        hostname: String,
        email: Option<String>,
        challenge: String,
        directory: Option<String>,
        directory_ca: Option<String>,
    },
    /// Adds or replaces a `[[user]]` by name.
    User {
        name: String,
        password_hash: String,
        role: String,
    },
    /// Adds a `[[token]]` for the first site.
    Token {
        name: String,
        secret_sha256: String,
        scope: Vec<String>,
        expires: Option<String>,
    },
    /// Adds or replaces a `[[camera]]` by name.
    Camera {
        name: String,
        mac: String,
        address: String,
        login: Option<(String, String)>,
        /// Its restreamed streams by name (`main = "/stream1"`): `None`
        /// keeps what the camera has, empty removes them.
        streams: Option<std::collections::BTreeMap<String, String>>,
    },
    /// Removes the `[[user]]`, `[[token]]` or `[[camera]]` named so.
    Remove { table: Listed, name: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Listed {
    User,
    Token,
    Camera,
}

impl Listed {
    fn key(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Token => "token",
            Self::Camera => "camera",
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EditError {
    #[error("the configuration is not valid TOML: {0}")]
    Syntax(String),
    #[error("`{0}` in the configuration is not a table; fix it by hand first")]
    NotATable(String),
    #[error("set up the DVR first: a token belongs to its site")]
    NoSite,
    #[error("a {0} named {1:?} already exists")]
    Exists(&'static str, String),
    #[error("there is no {0} named {1:?}")]
    Missing(&'static str, String),
}

/// `text` with `edit` made.
pub fn apply(text: &str, edit: &Edit) -> Result<String, EditError> {
    let mut document: DocumentMut = text
        .parse()
        .map_err(|e: toml_edit::TomlError| EditError::Syntax(e.message().to_owned()))?;
    match edit {
        Edit::Network { uplink, cameras } => {
            table(&mut document, "network")?.insert("uplink", value(uplink));
            match cameras {
                None => {
                    document.remove("cameras");
                }
                Some(segment) => {
                    let cameras = table(&mut document, "cameras")?;
                    cameras.insert("interface", value(&segment.interface));
                    match segment.vlan {
                        Some(vlan) => cameras.insert("vlan", value(i64::from(vlan))),
                        None => cameras.remove("vlan"),
                    };
                    cameras.insert("address", value(&segment.address));
                }
            }
        }
        Edit::Dvr {
            upstream,
            profile,
            dvr_host,
        } => {
            let site = first_site(&mut document, true)?.expect("created if missing");
            site.insert("upstream", value(upstream));
            site.insert("profile", value(profile));
            if let (Some(host), Some(cameras)) =
                (dvr_host, document.get_mut("cameras").and_then(Item::as_table_mut))
            {
                let hosts = cameras.entry("dvr_hosts").or_insert_with(|| value(Array::new()));
                if let Some(hosts) = hosts.as_array_mut()
                    && !hosts.iter().any(|existing| existing.as_str() == Some(host))
                {
                    hosts.push(host.as_str());
                }
            }
        }
        Edit::RemoteAccess {
            hostname,
            email,
            challenge,
            directory,
            directory_ca,
        } => {
            let site = first_site(&mut document, true)?.expect("created if missing");
            site.insert("hosts", value(Array::from_iter([hostname.as_str()])));
            let acme = table(&mut document, "acme")?;
            set_or_remove(acme, "email", email.as_deref());
            acme.insert("accept_terms", value(true));
            acme.insert("challenge", value(challenge));
            set_or_remove(acme, "directory", directory.as_deref());
            set_or_remove(acme, "directory_ca", directory_ca.as_deref());
        }
        Edit::User {
            name,
            password_hash,
            role,
        } => {
            let entry = upsert(&mut document, Listed::User, name)?;
            entry.insert("password_hash", value(password_hash));
            entry.insert("role", value(role));
        }
        Edit::Token {
            name,
            secret_sha256,
            scope,
            expires,
        } => {
            let site = first_site(&mut document, false)?
                .ok_or(EditError::NoSite)?
                .get("name")
                .and_then(Item::as_str)
                .ok_or(EditError::NoSite)?
                .to_owned();
            if find(&document, Listed::Token, name).is_some() {
                return Err(EditError::Exists("token", name.clone()));
            }
            let entry = upsert(&mut document, Listed::Token, name)?;
            entry.insert("secret_sha256", value(secret_sha256));
            entry.insert("site", value(site));
            entry.insert("scope", value(Array::from_iter(scope.iter().map(String::as_str))));
            set_or_remove(entry, "expires", expires.as_deref());
        }
        Edit::Camera {
            name,
            mac,
            address,
            login,
            streams,
        } => {
            let entry = upsert(&mut document, Listed::Camera, name)?;
            entry.insert("mac", value(mac.to_ascii_lowercase()));
            entry.insert("address", value(address));
            set_or_remove(entry, "username", login.as_ref().map(|(user, _)| user.as_str()));
            set_or_remove(
                entry,
                "password",
                login.as_ref().map(|(_, password)| password.as_str()),
            );
            match streams {
                None => {}
                Some(streams) if streams.is_empty() => {
                    entry.remove("streams");
                }
                Some(streams) => {
                    let table: toml_edit::InlineTable = streams
                        .iter()
                        .map(|(name, url)| (name.as_str(), toml_edit::Value::from(url.as_str())))
                        .collect();
                    entry.insert("streams", value(table));
                }
            }
        }
        Edit::Remove { table, name } => {
            let index =
                find(&document, *table, name).ok_or_else(|| EditError::Missing(table.key(), name.clone()))?;
            let list = document
                .get_mut(table.key())
                .and_then(Item::as_array_of_tables_mut)
                .expect("found in it");
            list.remove(index);
            if list.is_empty() {
                document.remove(table.key());
            }
        }
    }
    Ok(document.to_string())
}

/// The table `key`, created (at the end) if missing.
fn table<'d>(document: &'d mut DocumentMut, key: &str) -> Result<&'d mut Table, EditError> {
    document
        .entry(key)
        .or_insert_with(|| Item::Table(Table::new()))
        .as_table_mut()
        .ok_or_else(|| EditError::NotATable(key.to_owned()))
}

fn set_or_remove(table: &mut Table, key: &str, text: Option<&str>) {
    match text {
        Some(text) => table.insert(key, value(text)),
        None => table.remove(key),
    };
}

/// The first `[[site]]`; with `create`, a new one if there is none.
fn first_site(document: &mut DocumentMut, create: bool) -> Result<Option<&mut Table>, EditError> {
    if document.get("site").is_none() {
        if !create {
            return Ok(None);
        }
        let mut site = Table::new();
        site.insert("name", value(WIZARD_SITE));
        site.insert("hosts", value(Array::from_iter([PLACEHOLDER_HOST])));
        let mut sites = ArrayOfTables::new();
        sites.push(site);
        document.insert("site", Item::ArrayOfTables(sites));
    }
    let sites = document
        .get_mut("site")
        .and_then(Item::as_array_of_tables_mut)
        .ok_or_else(|| EditError::NotATable("[[site]]".to_owned()))?;
    Ok(sites.get_mut(0))
}

/// The index of the `[[key]]` entry named `name`.
fn find(document: &DocumentMut, list: Listed, name: &str) -> Option<usize> {
    document
        .get(list.key())
        .and_then(Item::as_array_of_tables)?
        .iter()
        .position(|entry| entry.get("name").and_then(Item::as_str) == Some(name))
}

/// The `[[key]]` entry named `name`, appended if missing.
fn upsert<'d>(document: &'d mut DocumentMut, list: Listed, name: &str) -> Result<&'d mut Table, EditError> {
    let index = find(document, list, name);
    let entries = document
        .entry(list.key())
        .or_insert_with(|| Item::ArrayOfTables(ArrayOfTables::new()))
        .as_array_of_tables_mut()
        .ok_or_else(|| EditError::NotATable(format!("[[{}]]", list.key())))?;
    let index = index.unwrap_or_else(|| {
        let mut entry = Table::new();
        entry.insert("name", value(name));
        entries.push(entry);
        entries.len() - 1
    });
    Ok(entries.get_mut(index).expect("found or pushed"))
}

/// A unified diff from `old` to `new` (empty if they are equal).
pub fn diff(old: &str, new: &str) -> String {
    similar::TextDiff::from_lines(old, new)
        .unified_diff()
        .context_radius(2)
        .header("running", "to apply")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "# my notes\n[daemon]\nmode = \"dev\" # keep\n\n[[user]]\nname = \"ann\"\npassword_hash = \"h\"\nrole = \"admin\"\n";

    fn camera_segment() -> CameraSegment {
        CameraSegment {
            interface: "eth1".to_owned(),
            vlan: Some(30),
            address: "10.77.0.1/24".to_owned(),
        }
    }

    #[test]
    fn steps_set_their_keys_and_keep_comments() {
        let text = apply(
            BASE,
            &Edit::Network {
                uplink: "eth0".to_owned(),
                cameras: Some(camera_segment()),
            },
        )
        .unwrap();
        assert!(
            text.starts_with("# my notes\n[daemon]\nmode = \"dev\" # keep\n"),
            "{text}"
        );
        assert!(text.contains("[network]\nuplink = \"eth0\"\n"), "{text}");
        assert!(
            text.contains("[cameras]\ninterface = \"eth1\"\nvlan = 30\naddress = \"10.77.0.1/24\"\n"),
            "{text}"
        );

        let text = apply(
            &text,
            &Edit::Dvr {
                upstream: "http://192.168.1.20:8090".to_owned(),
                profile: "agentdvr".to_owned(),
                dvr_host: Some("192.168.1.20".to_owned()),
            },
        )
        .unwrap();
        assert!(text.contains("dvr_hosts = [\"192.168.1.20\"]"), "{text}");
        assert!(text.contains("[[site]]\nname = \"dvr\"\nhosts = [\"dvr.home.arpa\"]\nupstream = \"http://192.168.1.20:8090\"\nprofile = \"agentdvr\"\n"), "{text}");
        // Again: the DVR host is not listed twice.
        let again = apply(
            &text,
            &Edit::Dvr {
                upstream: "http://192.168.1.20:8090".to_owned(),
                profile: "agentdvr".to_owned(),
                dvr_host: Some("192.168.1.20".to_owned()),
            },
        )
        .unwrap();
        assert_eq!(again, text);

        let text = apply(
            &text,
            &Edit::RemoteAccess {
                hostname: "dvr.example.org".to_owned(),
                email: None,
                challenge: "auto".to_owned(),
                directory: Some("https://ca.test/dir".to_owned()),
                directory_ca: None,
            },
        )
        .unwrap();
        assert!(text.contains("hosts = [\"dvr.example.org\"]"), "{text}");
        assert!(
            text.contains(
                "[acme]\naccept_terms = true\nchallenge = \"auto\"\ndirectory = \"https://ca.test/dir\"\n"
            ),
            "{text}"
        );

        let text = apply(
            &text,
            &Edit::Network {
                uplink: "eth0".to_owned(),
                cameras: None,
            },
        )
        .unwrap();
        assert!(!text.contains("[cameras]"), "{text}");
    }

    #[test]
    fn listed_entries_are_added_replaced_and_removed_by_name() {
        let user = |hash: &str| Edit::User {
            name: "bob".to_owned(),
            password_hash: hash.to_owned(),
            role: "viewer".to_owned(),
        };
        let text = apply(BASE, &user("h1")).unwrap();
        let text = apply(&text, &user("h2")).unwrap();
        assert_eq!(text.matches("name = \"bob\"").count(), 1, "{text}");
        assert!(text.contains("password_hash = \"h2\""), "{text}");
        let text = apply(
            &text,
            &Edit::Remove {
                table: Listed::User,
                name: "bob".to_owned(),
            },
        )
        .unwrap();
        assert_eq!(text, BASE);
        assert_eq!(
            apply(
                BASE,
                &Edit::Remove {
                    table: Listed::Camera,
                    name: "porch".to_owned()
                }
            ),
            Err(EditError::Missing("camera", "porch".to_owned()))
        );
    }

    #[test]
    fn tokens_need_the_dvr_site_and_unique_names() {
        let token = Edit::Token {
            name: "ha".to_owned(),
            secret_sha256: "ab".to_owned(),
            scope: vec!["/video.mjpg".to_owned()],
            expires: None,
        };
        assert_eq!(apply(BASE, &token), Err(EditError::NoSite));
        let with_site = apply(
            BASE,
            &Edit::Dvr {
                upstream: "http://192.168.1.20".to_owned(),
                profile: "generic".to_owned(),
                dvr_host: None,
            },
        )
        .unwrap();
        let text = apply(&with_site, &token).unwrap();
        assert!(text.contains("[[token]]\nname = \"ha\"\nsecret_sha256 = \"ab\"\nsite = \"dvr\"\nscope = [\"/video.mjpg\"]\n"), "{text}");
        assert_eq!(
            apply(&text, &token),
            Err(EditError::Exists("token", "ha".to_owned()))
        );
    }

    #[test]
    fn a_key_of_the_wrong_type_is_an_error_not_a_loss() {
        assert_eq!(
            apply(
                "network = 3\n",
                &Edit::Network {
                    uplink: "eth0".to_owned(),
                    cameras: None
                }
            ),
            Err(EditError::NotATable("network".to_owned()))
        );
        assert!(matches!(
            apply(
                "[x\n",
                &Edit::Network {
                    uplink: "eth0".to_owned(),
                    cameras: None
                }
            ),
            Err(EditError::Syntax(_))
        ));
    }

    #[test]
    fn a_cameras_streams_are_set_kept_or_removed() {
        let camera = |streams: Option<&[(&str, &str)]>| Edit::Camera {
            name: "porch".to_owned(),
            mac: "AA:BB:CC:00:11:22".to_owned(),
            address: "10.77.0.20".to_owned(),
            login: None,
            streams: streams.map(|list| {
                list.iter()
                    .map(|(n, u)| ((*n).to_owned(), (*u).to_owned()))
                    .collect()
            }),
        };
        let text = apply(BASE, &camera(Some(&[("main", "/stream1"), ("sub", "/stream2")]))).unwrap();
        assert!(
            text.contains("streams = { main = \"/stream1\", sub = \"/stream2\" }\n"),
            "{text}"
        );
        let kept = apply(&text, &camera(None)).unwrap();
        assert!(kept.contains("streams = { main"), "{kept}");
        let removed = apply(&kept, &camera(Some(&[]))).unwrap();
        assert!(!removed.contains("streams"), "{removed}");
    }

    #[test]
    fn the_diff_shows_what_changes() {
        assert_eq!(diff("a\n", "a\n"), "");
        let shown = diff("a\nb\n", "a\nc\n");
        assert!(shown.contains("-b\n+c\n"), "{shown}");
    }
}
