//! The setup wizard's API: what the machine has (interfaces, DVR profiles),
//! and each step as an edit of a draft config that comes back checked by
//! the config file's own parser, with its diff against the file. Nothing
//! here writes the file: the draft is applied through `POST /api/config`
//! (confirm or revert).

use std::net::IpAddr;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::apply::invalid_config;
use super::claim::MIN_PASSWORD_CHARS;
use super::{AppState, api_error};
use crate::config::Config;
use crate::config::acme::{ChallengePreference, LETSENCRYPT};
use crate::config::edit::{self, CameraSegment, Edit, Listed};
use crate::config::store::StoreError;

/// `GET /api/interfaces`: the NICs, for the network step.
pub(super) async fn interfaces() -> Response {
    match tokio::task::spawn_blocking(crate::firewall::interfaces).await {
        Ok(Ok(nics)) => Json(nics).into_response(),
        Ok(Err(e)) => api_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => {
            tracing::error!("interfaces: {e}");
            api_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "camgate cannot list its interfaces",
            )
        }
    }
}

#[derive(Serialize)]
struct ProfileView {
    name: &'static str,
    description: &'static str,
    upstream_port: u16,
    /// The ports the router must forward to camgate besides 443 and 80.
    forwards: Vec<ForwardView>,
    /// Its split rules, for the wizard's preview table.
    rules: Vec<crate::proxy::profiles::RuleInWords>,
    /// A first camera's MJPEG stream, for a token's ready URL.
    stream_example: Option<&'static str>,
    /// How to add camgate's restream of a camera to this DVR (`{url}`).
    restream: &'static str,
}

#[derive(Serialize)]
struct ForwardView {
    protocol: &'static str,
    ports: String,
    stun: bool,
}

/// `GET /api/profiles`: the built-in DVR profiles.
pub(super) async fn profiles() -> Response {
    let views: Vec<ProfileView> = crate::proxy::profiles::all()
        .iter()
        .map(|profile| ProfileView {
            name: profile.name,
            description: &profile.description,
            upstream_port: profile.upstream_port,
            forwards: profile
                .forwards
                .iter()
                .map(|forward| ForwardView {
                    protocol: forward.protocol.as_str(),
                    ports: forward.ports.to_string(),
                    stun: forward.stun,
                })
                .collect(),
            rules: profile.rules_in_words(),
            stream_example: profile.stream_example.as_deref(),
            restream: &profile.restream,
        })
        .collect();
    Json(views).into_response()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct EditRequest {
    /// The draft so far (the file's text at the start).
    config: String,
    edit: Step,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SegmentRequest {
    interface: String,
    vlan: Option<u16>,
    address: String,
}

/// A step's form, as the browser sends it.
#[derive(Debug, Deserialize)]
#[serde(tag = "step", rename_all = "snake_case", deny_unknown_fields)]
enum Step {
    Network {
        uplink: String,
        cameras: Option<SegmentRequest>,
    },
    Dvr {
        upstream: String,
        profile: String,
    },
    RemoteAccess {
        hostname: String,
        email: Option<String>,
        challenge: String,
        directory: Option<String>,
        directory_ca: Option<String>,
    },
    User {
        name: String,
        password: String,
        role: String,
    },
    Token {
        name: String,
        scope: Vec<String>,
        expires: Option<String>,
    },
    Camera {
        name: String,
        mac: String,
        address: String,
        username: Option<String>,
        password: Option<String>,
        /// Restreamed streams by name; absent keeps the camera's.
        streams: Option<std::collections::BTreeMap<String, String>>,
    },
    Remove {
        list: Listed,
        name: String,
    },
}

/// What a draft sets that the wizard's forms show: they start from it, not
/// from guesses, on every visit after the first.
pub(super) fn form_values(config: &Config) -> serde_json::Value {
    let site = config.sites.first();
    let acme = config.acme.as_ref();
    serde_json::json!({
        "uplink": config.network.as_ref().map(|network| &network.uplink),
        "cameras": config.network.as_ref().and_then(|network| network.cameras.as_ref()).map(|cameras| serde_json::json!({
            "interface": cameras.parent,
            "vlan": cameras.vlan,
            "address": cameras.address.to_string(),
        })),
        "dvr": site.map(|site| serde_json::json!({
            "upstream": site.upstream.uri.to_string().trim_end_matches('/'),
            "profile": site.profile.name,
            "host": site.upstream.uri.host(),
        })),
        "remote": site.filter(|site| site.hosts.first().is_some_and(|host| host != edit::PLACEHOLDER_HOST)).map(|site| serde_json::json!({
            "hostname": site.hosts.first(),
            "email": acme.and_then(|acme| acme.contact.first()).map(|contact| contact.trim_start_matches("mailto:")),
            "challenge": acme.map(|acme| match acme.challenge {
                ChallengePreference::Auto => "auto",
                ChallengePreference::Http01 => "http-01",
                ChallengePreference::TlsAlpn01 => "tls-alpn-01",
            }),
            "directory": acme.map(|acme| acme.directory.as_str()).filter(|directory| *directory != LETSENCRYPT),
            "directory_ca": acme.and_then(|acme| acme.directory_ca.as_ref()),
        })),
        "users": config.auth.users.iter().map(|user| serde_json::json!({
            "name": user.name,
            "role": match user.role {
                crate::auth::Role::Admin => "admin",
                crate::auth::Role::Viewer => "viewer",
            },
        })).collect::<Vec<_>>(),
        "tokens": config.auth.tokens.iter().map(|token| serde_json::json!({
            "name": token.name,
            "site": token.site,
            "expires": token.expires.map(|at| humantime::format_rfc3339_seconds(at).to_string()),
        })).collect::<Vec<_>>(),
        "cameras_named": config.network.iter().flat_map(|network| &network.cameras).flat_map(|cameras| &cameras.known)
            .map(|camera| serde_json::json!({
                "name": camera.name, "mac": camera.mac, "address": camera.address,
                "streams": config.streams.sources.iter().filter(|s| s.camera == camera.name)
                    .map(|s| (s.name.clone(), s.url.to_string())).collect::<std::collections::BTreeMap<_, _>>(),
            }))
            .collect::<Vec<_>>(),
    })
}

#[derive(Debug, Serialize)]
struct EditAnswer {
    /// The new draft, valid as a config file.
    config: String,
    /// What its forms show.
    values: serde_json::Value,
    /// From the file to the draft.
    diff: String,
    /// A new token's secret: shown once, kept nowhere.
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<String>,
}

/// A form field left empty is not set.
fn given(text: Option<String>) -> Option<String> {
    text.map(|text| text.trim().to_owned())
        .filter(|text| !text.is_empty())
}

/// `POST /api/config/edit`: one step's change to the draft.
pub(super) async fn edit(
    State(state): State<AppState>,
    body: Result<Json<EditRequest>, JsonRejection>,
) -> Response {
    let EditRequest { config, edit: step } = match body {
        Ok(Json(request)) => request,
        Err(rejection) => return api_error(rejection.status(), rejection.body_text()),
    };
    let mut token = None;
    let edit = match step {
        Step::Network { uplink, cameras } => Edit::Network {
            uplink: uplink.trim().to_owned(),
            cameras: cameras.map(|segment| CameraSegment {
                interface: segment.interface.trim().to_owned(),
                vlan: segment.vlan,
                address: segment.address.trim().to_owned(),
            }),
        },
        Step::Dvr { upstream, profile } => {
            let upstream = upstream.trim().to_owned();
            // The DVR's own address may open the cameras' ports.
            let dvr_host = upstream
                .parse::<axum::http::Uri>()
                .ok()
                .and_then(|uri| uri.host().map(|host| host.trim_matches(['[', ']']).to_owned()))
                .filter(|host| host.parse::<IpAddr>().is_ok());
            Edit::Dvr {
                upstream,
                profile,
                dvr_host,
            }
        }
        Step::RemoteAccess {
            hostname,
            email,
            challenge,
            directory,
            directory_ca,
        } => Edit::RemoteAccess {
            hostname: hostname.trim().to_ascii_lowercase(),
            email: given(email),
            challenge,
            directory: given(directory),
            directory_ca: given(directory_ca),
        },
        Step::User { name, password, role } => {
            if password.chars().count() < MIN_PASSWORD_CHARS {
                return api_error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!("the password needs at least {MIN_PASSWORD_CHARS} characters"),
                );
            }
            let hashed =
                tokio::task::spawn_blocking(move || crate::auth::password::hash(password.as_bytes())).await;
            let Ok(Ok(password_hash)) = hashed else {
                return api_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "camgate could not hash the password",
                );
            };
            Edit::User {
                name: name.trim().to_owned(),
                password_hash,
                role,
            }
        }
        Step::Token { name, scope, expires } => {
            let Ok((secret, digest)) = crate::auth::token::generate() else {
                return api_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "camgate has no randomness for a token",
                );
            };
            token = Some(secret);
            Edit::Token {
                name: name.trim().to_owned(),
                secret_sha256: crate::auth::token::hex(&digest),
                scope: scope.into_iter().map(|entry| entry.trim().to_owned()).collect(),
                expires: given(expires),
            }
        }
        Step::Camera {
            name,
            mac,
            address,
            username,
            password,
            streams,
        } => Edit::Camera {
            name: name.trim().to_owned(),
            mac: mac.trim().to_owned(),
            address: address.trim().to_owned(),
            login: match (given(username), password.filter(|password| !password.is_empty())) {
                (Some(user), Some(password)) => Some((user, password)),
                (None, None) => None,
                _ => {
                    return api_error(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "give the camera's user name and password, or neither",
                    );
                }
            },
            streams: streams.map(|streams| {
                streams
                    .into_iter()
                    .map(|(name, url)| (name.trim().to_owned(), url.trim().to_owned()))
                    .collect()
            }),
        },
        Step::Remove { list, name } => Edit::Remove { table: list, name },
    };
    if let Edit::Network {
        cameras: Some(segment),
        ..
    } = &edit
        && let Some(clash) = camera_subnet_clash(segment).await
    {
        return api_error(StatusCode::UNPROCESSABLE_ENTITY, clash);
    }
    let draft = match edit::apply(&config, &edit) {
        Ok(draft) => draft,
        Err(e) => return api_error(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
    };
    let store = Arc::clone(&state.applier.store);
    let checked = tokio::task::spawn_blocking(move || -> Result<Option<EditAnswer>, StoreError> {
        let config = store.check(&draft)?;
        // The wizard is run by an admin: it never leaves the appliance
        // without one (a config file may, for setups run from the shell).
        if !config
            .auth
            .users
            .iter()
            .any(|user| user.role == crate::auth::Role::Admin)
        {
            return Ok(None);
        }
        let values = form_values(&config);
        let diff = edit::diff(&store.read()?, &draft);
        Ok(Some(EditAnswer {
            config: draft,
            values,
            diff,
            token: None,
        }))
    })
    .await;
    match checked {
        Ok(Ok(Some(answer))) => Json(EditAnswer { token, ..answer }).into_response(),
        Ok(Ok(None)) => api_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "keep at least one administrator: nobody could manage camgate from here otherwise",
        ),
        Ok(Err(StoreError::Invalid(e))) => invalid_config(&state.applier.store, &e),
        Ok(Err(e)) => api_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => {
            tracing::error!("wizard edit: {e}");
            api_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "camgate could not check the change",
            )
        }
    }
}

/// The camera subnet must not overlap a network camgate is already on
/// through another port (the home LAN above all): said before the change,
/// not when the firewall refuses to apply it.
async fn camera_subnet_clash(segment: &CameraSegment) -> Option<String> {
    let subnet = segment.address.parse::<ipnet::IpNet>().ok()?.trunc();
    let nics = tokio::task::spawn_blocking(crate::firewall::interfaces)
        .await
        .ok()?
        .ok()?;
    nics.iter()
        .filter(|nic| nic.name != segment.interface)
        .flat_map(|nic| nic.addresses.iter().map(move |address| (nic, address.trunc())))
        .find(|(_, network)| network.contains(&subnet.network()) || subnet.contains(&network.network()))
        .map(|(nic, network)| {
            format!(
                "the camera network {subnet} overlaps {network} on {}: choose another range, e.g. 10.77.0.1/24 \
                 or 172.31.77.1/24",
                nic.name
            )
        })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DetectRequest {
    address: String,
}

/// `POST /api/dvr/detect`: which DVR answers at an address, by probing its
/// known ports.
pub(super) async fn detect_dvr(body: Result<Json<DetectRequest>, JsonRejection>) -> Response {
    let address = match body {
        Ok(Json(request)) => request.address,
        Err(rejection) => return api_error(rejection.status(), rejection.body_text()),
    };
    let Ok(address) = address.trim().trim_matches(['[', ']']).parse::<IpAddr>() else {
        return api_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "give the DVR's IP address, e.g. 192.168.1.20",
        );
    };
    Json(crate::detect::detect(address, DETECT_PROBE_TIMEOUT).await).into_response()
}

const DETECT_PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);
const CONNECTION_TEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ConnectionTestRequest {
    upstream: String,
}

/// The test ran: a DVR that does not answer is its result, not a failure
/// of camgate (so a 5xx keeps meaning that camgate broke).
#[derive(Debug, Serialize)]
struct ConnectionTestAnswer {
    reachable: bool,
    #[serde(flatten)]
    test: Option<crate::detect::ConnectionTest>,
    /// Why not, in words.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// `POST /api/dvr/test`: whether the DVR answers at an upstream URL, and if
/// not, why.
pub(super) async fn test_dvr(body: Result<Json<ConnectionTestRequest>, JsonRejection>) -> Response {
    let upstream = match body {
        Ok(Json(request)) => request.upstream,
        Err(rejection) => return api_error(rejection.status(), rejection.body_text()),
    };
    let Ok(uri) = upstream.trim().parse::<axum::http::Uri>() else {
        return api_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "give the DVR's address as a URL, e.g. http://192.168.1.20:8090",
        );
    };
    let (test, error) = match crate::detect::test_connection(&uri, CONNECTION_TEST_TIMEOUT).await {
        Ok(test) => (Some(test), None),
        Err(e @ crate::detect::DetectError::InvalidUpstream { .. }) => {
            return api_error(StatusCode::UNPROCESSABLE_ENTITY, e.to_string());
        }
        Err(e) => (None, Some(e.to_string())),
    };
    Json(ConnectionTestAnswer {
        reachable: test.is_some(),
        test,
        error,
    })
    .into_response()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RtspTestRequest {
    url: String,
    username: Option<String>,
    password: Option<String>,
}

/// The test ran; whether the camera served a stream description, or why not.
#[derive(Debug, Serialize)]
struct RtspTestAnswer {
    ok: bool,
    #[serde(flatten)]
    check: Option<crate::cameras::rtsp_check::RtspCheck>,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// `POST /api/cameras/rtsp-test`: DESCRIBE on a camera's RTSP URL, with its
/// login: what it serves (codec, resolution), or why not. Only for cameras
/// on camgate's camera network: the admin API is no RTSP probe for the LAN.
pub(super) async fn test_rtsp(
    State(state): State<AppState>,
    body: Result<Json<RtspTestRequest>, JsonRejection>,
) -> Response {
    let request = match body {
        Ok(Json(request)) => request,
        Err(rejection) => return api_error(rejection.status(), rejection.body_text()),
    };
    let running = state.applier.running();
    let Some(subnet) = running
        .network
        .as_ref()
        .and_then(|network| network.cameras.as_ref())
        .map(|cameras| cameras.address.trunc())
    else {
        return api_error(
            StatusCode::CONFLICT,
            "camgate runs no camera network yet: apply the network step first",
        );
    };
    let host = url_host(&request.url);
    if host.is_none_or(|host| !subnet.contains(&host)) {
        return api_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "give the RTSP URL of a camera on camgate's camera network ({subnet}), e.g. rtsp://{}:554/stream1",
                subnet.hosts().nth(19).unwrap_or(subnet.addr())
            ),
        );
    }
    let login = match (
        given(request.username),
        request.password.filter(|password| !password.is_empty()),
    ) {
        (Some(user), Some(password)) => Some((user, password)),
        (None, None) => None,
        _ => {
            return api_error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "give the camera's user name and password, or neither",
            );
        }
    };
    let login = login
        .as_ref()
        .map(|(user, password)| (user.as_str(), password.as_str()));
    let result =
        crate::cameras::rtsp_check::check(&request.url, login, crate::cameras::rtsp_check::DEFAULT_TIMEOUT)
            .await;
    let answer = match result {
        Ok(check) => RtspTestAnswer {
            ok: true,
            check: Some(check),
            code: None,
            error: None,
        },
        Err(e) => RtspTestAnswer {
            ok: false,
            check: None,
            code: Some(e.code()),
            error: Some(e.to_string()),
        },
    };
    Json(answer).into_response()
}

/// The IPv4 address an `rtsp://` URL names, if it names one.
fn url_host(url: &str) -> Option<std::net::Ipv4Addr> {
    let rest = url.trim().strip_prefix("rtsp://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let host = authority.rsplit('@').next()?;
    host.split(':').next()?.parse().ok()
}
