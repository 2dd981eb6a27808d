//! ObservationLambda: FIND (spec 5.1), an OpenSearch query over the observations the caller's
//! domain subtree may see. Served only when `search.url` is set.

use std::sync::{Arc, RwLock};

use rule_engine::Directory;
use serde_json::{Map, Value};
use sinks::search::{prepare_find, FindError, SearchClient, SearchError};

use super::error::FunctionError;
use crate::auth::Caller;

#[derive(Clone)]
pub struct ObservationApi {
    client: SearchClient,
    directory: Arc<RwLock<Directory>>,
}

impl ObservationApi {
    pub fn new(client: SearchClient, directory: Arc<RwLock<Directory>>) -> Self {
        ObservationApi { client, directory }
    }

    /// Spec 5.1.1: translates the query from the spec's Elasticsearch dialect to OpenSearch's
    /// ([`dialect`]), checks its requirements, restricts it to the caller's domain subtree and
    /// returns OpenSearch's output as it is.
    pub async fn find(
        &self,
        caller: &Caller,
        payload: &Map<String, Value>,
    ) -> Result<Value, FunctionError> {
        let refused = |e: FindError| FunctionError::keyed_on(e.key, e.property, e.message);
        let body = {
            let directory = match self.directory.read() {
                Ok(d) => d,
                Err(poisoned) => poisoned.into_inner(),
            };
            let domains = directory.domains();
            // The spec's `domains` lookup names a domain the caller must be allowed to search.
            let lookup = |id: &str| {
                if domains.is_within(id, &caller.domain) {
                    Ok(domains.path(id).join("/"))
                } else {
                    Err(FindError::not_authorized_domain(id))
                }
            };
            let caller_path = domains.path(&caller.domain).join("/");
            prepare_find(payload, &caller_path, &lookup).map_err(refused)?
        };
        match self.client.search(body).await {
            Ok(output) => Ok(output),
            Err(SearchError::BadQuery(reason)) => Err(FunctionError::invalid_arguments(
                "query",
                format!("the search engine refused the query: {reason}"),
            )),
            Err(e) => {
                let reference = super::rule_lambda::reference();
                tracing::error!(error = %e, reference = %reference, "observation search failed");
                Err(FunctionError::internal(&reference))
            }
        }
    }
}
