//! HTTP requests from inside a namespace, with a real client (ureq) that
//! ignores proxy settings and never treats a status code as an error.

use std::time::Duration;

use crate::netns::Netns;

#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// GET `url` from inside `netns`; `Err` for transport failures (refused,
/// timeout), `Ok` for any HTTP status.
pub fn get(netns: &Netns, url: &str) -> Result<Reply, ureq::Error> {
    request(netns, "GET", url, &[])
}

/// A body-less request with extra `headers`, like [`get`].
pub fn request(
    netns: &Netns,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
) -> Result<Reply, ureq::Error> {
    netns.run(|| {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .proxy(None)
            .http_status_as_error(false)
            .allow_non_standard_methods(true)
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into();
        let mut builder = ureq::http::Request::builder().method(method).uri(url);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let request = builder.body(()).map_err(ureq::Error::from)?;
        let mut response = agent.run(request)?;
        let headers = response
            .headers()
            .iter()
            .map(|(name, value)| {
                (
                    name.to_string(),
                    String::from_utf8_lossy(value.as_bytes()).into_owned(),
                )
            })
            .collect();
        Ok(Reply {
            status: response.status().as_u16(),
            headers,
            body: response.body_mut().read_to_string()?,
        })
    })
}

/// GET that must succeed with 200.
pub fn get_ok(netns: &Netns, url: &str) -> Reply {
    let reply = get(netns, url).unwrap_or_else(|e| panic!("GET {url}: {e}"));
    assert_eq!(reply.status, 200, "GET {url}: {}", reply.body);
    reply
}
