//! A scripted browser for the HTTP flow: follows nothing by itself, keeps
//! cookies per host (including `Secure` ones on http://127.0.0.1, as browsers
//! do for loopback), and reads the message a result page would post.

use std::collections::HashMap;

use reqwest::Response;
use serde_json::Value;

#[derive(Debug, Default, Clone)]
pub struct Browser {
    /// host:port -> cookie name -> (value, raw Set-Cookie line)
    pub cookies: HashMap<String, HashMap<String, (String, String)>>,
}

fn host_of(url: &str) -> String {
    let u = url::Url::parse(url).unwrap();
    format!(
        "{}:{}",
        u.host_str().unwrap(),
        u.port_or_known_default().unwrap()
    )
}

impl Browser {
    pub fn new() -> Self {
        Self::default()
    }

    pub async fn get(&mut self, url: &str) -> Response {
        self.request(reqwest::Method::GET, url, None, None).await
    }

    pub async fn post_json(&mut self, url: &str, origin: &str, body: &Value) -> Response {
        self.request(reqwest::Method::POST, url, Some(origin), Some(body))
            .await
    }

    /// A POST of JSON with a `DPoP` proof header.
    pub async fn post_json_dpop(
        &mut self,
        url: &str,
        origin: &str,
        body: &Value,
        proof: &str,
    ) -> Response {
        let headers = [("dpop", proof)];
        self.request_with(
            reqwest::Method::POST,
            url,
            Some(origin),
            Some(body),
            &headers,
        )
        .await
    }

    pub async fn request(
        &mut self,
        method: reqwest::Method,
        url: &str,
        origin: Option<&str>,
        body: Option<&Value>,
    ) -> Response {
        self.request_with(method, url, origin, body, &[]).await
    }

    pub async fn request_with(
        &mut self,
        method: reqwest::Method,
        url: &str,
        origin: Option<&str>,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> Response {
        let host = host_of(url);
        let client = super::http_client();
        let mut req = client.request(method, url);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        if let Some(jar) = self.cookies.get(&host)
            && !jar.is_empty()
        {
            let header: Vec<String> = jar.iter().map(|(k, (v, _))| format!("{k}={v}")).collect();
            req = req.header("cookie", header.join("; "));
        }
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let response = req.send().await.expect("request");
        for value in response.headers().get_all("set-cookie") {
            let raw = value.to_str().unwrap().to_string();
            let (pair, _) = raw.split_once(';').unwrap_or((&raw, ""));
            let (name, val) = pair.split_once('=').unwrap();
            let jar = self.cookies.entry(host.clone()).or_default();
            if val.is_empty() || raw.contains("Max-Age=0") {
                jar.remove(name);
            } else {
                jar.insert(name.to_string(), (val.to_string(), raw.clone()));
            }
        }
        response
    }

    /// The raw `Set-Cookie` line of a cookie this browser holds for `url`'s host.
    pub fn set_cookie_line(&self, url: &str, name: &str) -> Option<String> {
        self.cookies
            .get(&host_of(url))?
            .get(name)
            .map(|(_, raw)| raw.clone())
    }

    /// Sends the cookies of `from`'s host to `to`'s as well: two replicas
    /// behind one load balancer are one site to a real browser (this one
    /// keeps cookies per host and port).
    pub fn share_cookies(&mut self, from: &str, to: &str) {
        let jar = self
            .cookies
            .get(&host_of(from))
            .cloned()
            .unwrap_or_default();
        self.cookies.insert(host_of(to), jar);
    }

    pub fn forget_cookies(&mut self) {
        self.cookies.clear();
    }
}

pub fn location(response: &Response) -> String {
    response
        .headers()
        .get("location")
        .unwrap_or_else(|| panic!("no Location in {} response", response.status()))
        .to_str()
        .unwrap()
        .to_string()
}

/// What a chatgate result page would post, or `None` for a page that posts
/// nothing: `{ "mode", "target_origin", "message" }`.
pub async fn posted_message(response: Response) -> Option<Value> {
    let html = response.text().await.unwrap();
    let start_tag = "<script type=\"application/json\" id=\"chatgate-message\">";
    let start = html.find(start_tag)? + start_tag.len();
    let end = start + html[start..].find("</script>")?;
    Some(serde_json::from_str(&html[start..end]).expect("message JSON"))
}
