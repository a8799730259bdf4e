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

/// What [`curl`] got: status, raw header block, body as JSON (`Null` if empty).
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: String,
    pub body: serde_json::Value,
}

/// A request by curl from inside `netns`, from source address `from`, with a
/// JSON body and extra headers (`Name: value`).
pub fn curl(
    netns: &Netns,
    from: &str,
    method: &str,
    url: &str,
    body: Option<&str>,
    headers: &[&str],
) -> Answer {
    let mut curl = netns.command("curl");
    curl.args([
        "-sS",
        "--max-time",
        "20",
        "--interface",
        from,
        "-D",
        "-",
        "-X",
        method,
    ]);
    if let Some(body) = body {
        curl.args(["-H", "content-type: application/json", "--data-binary", body]);
    }
    for header in headers {
        curl.args(["-H", header]);
    }
    let output = curl.arg(url).output().unwrap();
    assert!(
        output.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).unwrap();
    let (headers, body) = text.split_once("\r\n\r\n").unwrap();
    let status = headers.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = if body.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
    };
    Answer {
        status,
        headers: headers.to_owned(),
        body,
    }
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name).then(|| value.trim())
        })
    }
}
