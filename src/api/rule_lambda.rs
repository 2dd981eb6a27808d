//! RuleLambda: the Rule API of spec 6.2 (CREATE, GET, LIST, UPDATE, REMOVE) with the
//! authorization of DESIGN.md. Knows nothing of HTTP; the invoke endpoint calls [`RuleApi::handle`].

use std::sync::{Arc, RwLock};

use rule_engine::domain::Visibility;
use rule_engine::{validate_rule, Directory, Rule, ValidateMode};
use serde_json::{Map, Value};
use sinks::webhook::{check_url_now, SsrfPolicy};
use tokio::sync::Notify;

use super::error::FunctionError;
use crate::auth::{Caller, Role};
use crate::store::{RuleStore, StoreError, Versioned};

/// `objectType` of NOT_AUTHORIZED errors from this API.
const OBJECT_TYPE: &str = "RULE";
/// Compare-and-swap attempts before an update gives up under contention. Each retry re-reads the
/// rule and re-checks authorization, so a rule moved meanwhile is judged on its new domain.
const CAS_ATTEMPTS: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Create,
    Get,
    List,
    Update,
    Remove,
}

impl Action {
    pub fn parse(s: &str) -> Option<Action> {
        Some(match s {
            "CREATE" => Action::Create,
            "GET" => Action::Get,
            "LIST" => Action::List,
            "UPDATE" => Action::Update,
            "REMOVE" => Action::Remove,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Create => "CREATE",
            Action::Get => "GET",
            Action::List => "LIST",
            Action::Update => "UPDATE",
            Action::Remove => "REMOVE",
        }
    }

    fn writes(self) -> bool {
        matches!(self, Action::Create | Action::Update | Action::Remove)
    }
}

#[derive(Clone)]
pub struct RuleApi {
    store: RuleStore,
    /// The domain tree authorization reads lives in the directory (life cycle events move it).
    directory: Arc<RwLock<Directory>>,
    /// `Some("dev")` outside production: generated ids are `dev-00000001` (spec 6.2.1.1).
    id_prefix: Option<String>,
    /// Webhook destinations refused at send time are refused at CREATE/UPDATE too, when the
    /// URL alone shows it, so the tenant learns why at once.
    ssrf: Arc<SsrfPolicy>,
    /// Told after every rule write, so this replica's engine reloads at once.
    rules_changed: Arc<Notify>,
}

impl RuleApi {
    pub fn new(
        store: RuleStore,
        directory: Arc<RwLock<Directory>>,
        id_prefix: Option<String>,
        ssrf: Arc<SsrfPolicy>,
        rules_changed: Arc<Notify>,
    ) -> Self {
        RuleApi {
            store,
            directory,
            id_prefix,
            ssrf,
            rules_changed,
        }
    }

    /// Runs `action` (already parsed from the payload) for `caller`.
    pub async fn handle(
        &self,
        caller: &Caller,
        action: Action,
        payload: &Map<String, Value>,
    ) -> Result<Value, FunctionError> {
        if action.writes() && caller.role != Role::ReadWrite {
            return Err(FunctionError::not_authorized(action.as_str(), OBJECT_TYPE));
        }
        // Spec 6.2: CREATE and UPDATE read the rule from `attributes`; a missing `attributes`
        // is treated as empty so the first missing property is named.
        let empty = Value::Object(Map::new());
        let attributes = payload.get("attributes").unwrap_or(&empty);
        match action {
            Action::Create => self.create(caller, attributes).await,
            Action::Get => self.get(caller, attributes).await,
            Action::List => self.list(caller).await,
            Action::Update => self.update(caller, attributes).await,
            Action::Remove => self.remove(caller, attributes).await,
        }
    }

    fn visibility(&self, caller: &Caller, rule_domain: &str) -> Visibility {
        // std RwLock: held only for this lookup, never across an await.
        let directory = match self.directory.read() {
            Ok(d) => d,
            Err(poisoned) => poisoned.into_inner(),
        };
        directory.domains().visibility(&caller.domain, rule_domain)
    }

    fn require_writable(&self, caller: &Caller, domain: &str) -> Result<(), FunctionError> {
        match self.visibility(caller, domain) {
            Visibility::Writable => Ok(()),
            Visibility::ReadOnly | Visibility::Hidden => {
                Err(FunctionError::not_authorized_domain(domain))
            }
        }
    }

    async fn create(&self, caller: &Caller, attributes: &Value) -> Result<Value, FunctionError> {
        let rule = validate_rule(attributes, ValidateMode::Create)?;
        self.check_destinations(&rule)?;
        self.require_writable(caller, &rule.filter.domain)?;
        let stored = if rule.id.is_empty() {
            self.store
                .insert_with_generated_id(&rule, self.id_prefix.as_deref())
                .await
        } else {
            self.store.insert(&rule).await
        };
        match stored {
            Ok(stored) => {
                self.rules_changed.notify_one();
                tracing::info!(rule = %stored.rule.id, user = %caller.user, "rule created");
                Ok(rule_output(&stored.rule, false))
            }
            Err(StoreError::AlreadyExists(id)) => Err(FunctionError::rule_id_exists(&id)),
            Err(e) => Err(store_failure(e)),
        }
    }

    async fn get(&self, caller: &Caller, attributes: &Value) -> Result<Value, FunctionError> {
        let id = required_id(attributes)?;
        let stored = self.load(id).await?;
        match self.visibility(caller, &stored.rule.filter.domain) {
            Visibility::Writable => Ok(rule_output(&stored.rule, false)),
            Visibility::ReadOnly => Ok(rule_output(&stored.rule, true)),
            Visibility::Hidden => Err(FunctionError::not_authorized_domain(
                &stored.rule.filter.domain,
            )),
        }
    }

    async fn list(&self, caller: &Caller) -> Result<Value, FunctionError> {
        let rules = self.store.list().await.map_err(store_failure)?;
        let visible = rules
            .iter()
            .filter_map(|v| match self.visibility(caller, &v.rule.filter.domain) {
                Visibility::Writable => Some(rule_output(&v.rule, false)),
                Visibility::ReadOnly => Some(rule_output(&v.rule, true)),
                Visibility::Hidden => None,
            })
            .collect();
        Ok(Value::Array(visible))
    }

    async fn update(&self, caller: &Caller, attributes: &Value) -> Result<Value, FunctionError> {
        let rule = validate_rule(attributes, ValidateMode::Update)?;
        self.check_destinations(&rule)?;
        for _ in 0..CAS_ATTEMPTS {
            let current = self.load(&rule.id).await?;
            self.require_writable(caller, &current.rule.filter.domain)?;
            self.require_writable(caller, &rule.filter.domain)?;
            match self.store.update(&rule, current.version).await {
                Ok(stored) => {
                    self.rules_changed.notify_one();
                    tracing::info!(rule = %stored.rule.id, user = %caller.user, "rule updated");
                    return Ok(rule_output(&stored.rule, false));
                }
                Err(StoreError::Conflict(_)) => continue,
                Err(e) => return Err(store_failure(e)),
            }
        }
        Err(store_failure(StoreError::Conflict(rule.id)))
    }

    async fn remove(&self, caller: &Caller, attributes: &Value) -> Result<Value, FunctionError> {
        let id = required_id(attributes)?;
        for _ in 0..CAS_ATTEMPTS {
            let current = self.load(id).await?;
            self.require_writable(caller, &current.rule.filter.domain)?;
            match self.store.remove(id, Some(current.version)).await {
                Ok(true) => {
                    self.rules_changed.notify_one();
                    tracing::info!(rule = %id, user = %caller.user, "rule removed");
                    // Spec 6.2.4.2: no output.
                    return Ok(Value::Null);
                }
                // Removed between our read and our delete: it is gone either way.
                Ok(false) => return Err(FunctionError::rule_not_found(id)),
                Err(StoreError::Conflict(_)) => continue,
                Err(e) => return Err(store_failure(e)),
            }
        }
        Err(store_failure(StoreError::Conflict(id.to_owned())))
    }

    /// Refuses webhook URLs that the SSRF guard would refuse whatever DNS says (loopback or
    /// private IP literals, `localhost`, other schemes). Host names are checked again when
    /// sent, against every address they resolve to (validation already requires a literal
    /// scheme and host, so variables never reach the host).
    fn check_destinations(&self, rule: &Rule) -> Result<(), FunctionError> {
        for (i, action) in rule.actions.iter().enumerate() {
            let Some(url) = action.config.get("url").and_then(Value::as_str) else {
                continue;
            };
            if let Err(refusal) = check_url_now(url, &self.ssrf) {
                return Err(FunctionError::invalid_arguments(
                    &format!("actions[{i}].config.url"),
                    refusal.to_string(),
                ));
            }
        }
        Ok(())
    }

    async fn load(&self, id: &str) -> Result<Versioned, FunctionError> {
        self.store
            .get(id)
            .await
            .map_err(store_failure)?
            .ok_or_else(|| FunctionError::rule_not_found(id))
    }
}

/// `attributes.id` of GET and REMOVE.
fn required_id(attributes: &Value) -> Result<&str, FunctionError> {
    match attributes.get("id") {
        None | Some(Value::Null) => Err(FunctionError::property_required("id")),
        Some(Value::String(s)) if s.is_empty() => Err(FunctionError::property_required("id")),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(FunctionError::invalid_arguments(
            "id",
            "id must be a string",
        )),
    }
}

/// The rule as spec 6.1 shows it, with the computed `readonly`.
fn rule_output(rule: &Rule, readonly: bool) -> Value {
    let mut value = serde_json::to_value(rule).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut value {
        map.insert("readonly".to_owned(), Value::Bool(readonly));
    }
    value
}

fn store_failure(e: StoreError) -> FunctionError {
    let reference = reference();
    tracing::error!(error = %e, reference = %reference, "rule store failure");
    metrics::counter!("ccstream_store_errors_total").increment(1);
    FunctionError::internal(&reference)
}

/// A short reference that ties a client's error to the log line with the details.
pub(crate) fn reference() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let now = ccstream_common::time::now_ms();
    format!("{now:x}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}
