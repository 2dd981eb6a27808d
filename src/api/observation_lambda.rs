//! ObservationLambda: FIND (spec 5.1), an OpenSearch query over the observations the caller's
//! domain subtree may see. Served only when `search.url` is set.

use std::sync::{Arc, RwLock};

use rule_engine::Directory;
use serde_json::{Map, Value};
use sinks::search::{check_find_query, restrict_to_domain, SearchClient, SearchError};

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

    /// Spec 5.1.1: checks the query's requirements, restricts it to the caller's domain subtree
    /// and returns OpenSearch's output as it is.
    pub async fn find(
        &self,
        caller: &Caller,
        payload: &Map<String, Value>,
    ) -> Result<Value, FunctionError> {
        let payload_value = Value::Object(payload.clone());
        check_find_query(&payload_value)
            .map_err(|e| FunctionError::keyed_on(e.key, e.property, e.message))?;
        let query = payload.get("query").cloned().unwrap_or(Value::Null);
        let domain_path = {
            let directory = match self.directory.read() {
                Ok(d) => d,
                Err(poisoned) => poisoned.into_inner(),
            };
            directory.domains().path(&caller.domain).join("/")
        };
        let body = restrict_to_domain(query, &domain_path);
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
