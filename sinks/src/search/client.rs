//! The HTTP side: three documented OpenSearch REST calls (`PUT _index_template/<name>`,
//! `POST _bulk`, `POST <alias>/_search`) over the workspace's reqwest client.
//!
//! Why not the `opensearch` crate: it pins its own reqwest major, which need not be the
//! workspace's (a second reqwest in the build), its `rustls-tls` feature builds aws-lc-rs, which
//! the workspace avoids (rustls with ring only), and it brings many crates of its own (serde_with
//! with darling proc macros, flate2 and async-compression, ...) for three calls whose bodies are
//! raw NDJSON and JSON either way.

use bytes::Bytes;
use serde_json::Value;

use super::config::SearchConfig;
use super::error::SearchError;
use crate::error_text::{error_chain, truncate};

/// Longest error text kept for a log line or a FIND error reference, in bytes.
const ERROR_TEXT_MAX: usize = 400;

/// A pooled keep-alive client for one OpenSearch endpoint; cheap to clone.
#[derive(Clone)]
pub struct SearchClient {
    http: reqwest::Client,
    base: url::Url,
    auth: Option<(String, String)>,
    alias: String,
}

impl std::fmt::Debug for SearchClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SearchClient")
            .field("base", &self.base.as_str())
            .field("alias", &self.alias)
            .field("auth", &self.auth.as_ref().map(|(user, _)| user))
            .finish()
    }
}

/// How a request went, before any retry decision.
#[derive(Debug)]
pub(crate) enum Exchange {
    /// A complete response.
    Response {
        /// Its status.
        status: u16,
        /// Its body.
        body: Bytes,
    },
    /// No complete response: connection refused or reset, timeout, TLS failure.
    Failed(String),
}

impl SearchClient {
    /// Validates `config` and builds the client. [`SearchError::NotConfigured`] when
    /// `search.url` is not set.
    pub fn new(config: &SearchConfig) -> Result<Self, SearchError> {
        config.validate()?;
        let base = config.base_url()?.ok_or(SearchError::NotConfigured)?;
        let http = reqwest::Client::builder()
            .use_rustls_tls()
            .timeout(config.timeout())
            .connect_timeout(config.timeout())
            .user_agent(concat!("ccstream/", env!("CARGO_PKG_VERSION")))
            .pool_idle_timeout(std::time::Duration::from_secs(90))
            .tcp_nodelay(true)
            .build()
            .map_err(SearchError::Client)?;
        let auth = config.username.clone().zip(config.password.clone());
        Ok(Self {
            http,
            base,
            auth,
            alias: config.alias.clone(),
        })
    }

    /// The alias FIND searches.
    pub fn alias(&self) -> &str {
        &self.alias
    }

    /// Runs a search on the alias and returns OpenSearch's JSON output as it is (spec 5.1.1.2).
    /// Pass a body checked by [`check_find_query`](super::check_find_query) and restricted by
    /// [`restrict_to_domain`](super::restrict_to_domain).
    ///
    /// Query parameters: `rest_total_hits_as_int=true` so that `hits.total` is a number, as in
    /// the Elasticsearch 2.3 output the spec's clients read; `ignore_unavailable` and
    /// `allow_no_indices` so that a search before the first observation was indexed (no index
    /// carries the alias yet) answers with no hits instead of an error.
    ///
    /// A 4xx is the query's fault ([`SearchError::BadQuery`] with OpenSearch's reason), except
    /// 401/403 (our credentials) and 429 (overload): those, 5xx and connection errors are
    /// [`SearchError::Unavailable`].
    pub async fn search(&self, body: Value) -> Result<Value, SearchError> {
        let mut url = self.endpoint(&format!("{}/_search", self.alias))?;
        url.query_pairs_mut()
            .append_pair("rest_total_hits_as_int", "true")
            .append_pair("ignore_unavailable", "true")
            .append_pair("allow_no_indices", "true");
        let request = self.http.post(url).json(&body);
        match self.send(request).await {
            Exchange::Failed(reason) => Err(SearchError::Unavailable(reason)),
            Exchange::Response { status, body } => match status {
                200..=299 => serde_json::from_slice(&body).map_err(|e| {
                    SearchError::Unavailable(format!("search response is not JSON: {e}"))
                }),
                401 | 403 | 429 => Err(SearchError::Unavailable(format!(
                    "HTTP {status}: {}",
                    error_reason(&body)
                ))),
                400..=499 => Err(SearchError::BadQuery(error_reason(&body))),
                _ => Err(SearchError::Unavailable(format!(
                    "HTTP {status}: {}",
                    error_reason(&body)
                ))),
            },
        }
    }

    /// `PUT _index_template/<name>`.
    pub(crate) async fn put_template(&self, name: &str, body: &Value) -> Exchange {
        match self.endpoint(&format!("_index_template/{name}")) {
            Ok(url) => self.send(self.http.put(url).json(body)).await,
            Err(e) => Exchange::Failed(e.to_string()),
        }
    }

    /// `POST _bulk` with an NDJSON body. `filter_path` keeps the response to what the indexer
    /// reads (a few bytes per item instead of a few hundred).
    pub(crate) async fn bulk(&self, body: Bytes) -> Exchange {
        let mut url = match self.endpoint("_bulk") {
            Ok(url) => url,
            Err(e) => return Exchange::Failed(e.to_string()),
        };
        url.query_pairs_mut()
            .append_pair("filter_path", "errors,items.*.status,items.*.error");
        let request = self
            .http
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/x-ndjson")
            .body(body);
        self.send(request).await
    }

    fn endpoint(&self, path: &str) -> Result<url::Url, SearchError> {
        self.base
            .join(path)
            .map_err(|e| SearchError::Unavailable(format!("cannot build the URL for {path}: {e}")))
    }

    async fn send(&self, mut request: reqwest::RequestBuilder) -> Exchange {
        if let Some((user, password)) = &self.auth {
            request = request.basic_auth(user, Some(password));
        }
        let response = match request.send().await {
            Ok(response) => response,
            Err(e) => return Exchange::Failed(error_chain(&e, ERROR_TEXT_MAX)),
        };
        let status = response.status().as_u16();
        match response.bytes().await {
            Ok(body) => Exchange::Response { status, body },
            Err(e) => Exchange::Failed(error_chain(&e, ERROR_TEXT_MAX)),
        }
    }
}

/// OpenSearch's reason from an error body (`{"error":{"root_cause":[{"type","reason"}],...}}`),
/// as `type: reason`; the raw body (cut) when it has another shape.
pub(crate) fn error_reason(body: &[u8]) -> String {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let error = parsed.as_ref().map(|v| &v["error"]);
    let cause = error
        .and_then(|e| e["root_cause"].get(0))
        .filter(|c| c.is_object())
        .or(error.filter(|e| e.is_object()));
    let mut text = match (cause, error) {
        (Some(cause), _) => {
            let kind = cause["type"].as_str().unwrap_or("error");
            let reason = cause["reason"].as_str().unwrap_or("");
            format!("{kind}: {reason}")
        }
        (None, Some(Value::String(text))) => text.clone(),
        _ => String::from_utf8_lossy(body).into_owned(),
    };
    truncate(&mut text, 500);
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_reasons_are_read_from_the_documented_shape() {
        let body = br#"{"error":{"root_cause":[{"type":"parsing_exception","reason":"unknown query [foo]"}],"type":"x","reason":"y"},"status":400}"#;
        assert_eq!(error_reason(body), "parsing_exception: unknown query [foo]");
        let body = br#"{"error":{"type":"search_phase_execution_exception","reason":"all shards failed"},"status":400}"#;
        assert_eq!(
            error_reason(body),
            "search_phase_execution_exception: all shards failed"
        );
        assert_eq!(error_reason(br#"{"error":"plain"}"#), "plain");
        assert_eq!(error_reason(b"Bad Gateway"), "Bad Gateway");
    }

    #[test]
    fn a_client_needs_a_url() {
        assert!(matches!(
            SearchClient::new(&SearchConfig::default()),
            Err(SearchError::NotConfigured)
        ));
        let config = SearchConfig {
            url: Some("http://127.0.0.1:9200".into()),
            ..SearchConfig::default()
        };
        let client = SearchClient::new(&config).expect("builds");
        assert_eq!(client.alias(), "observations");
    }
}
