//! Retry rules, as pure functions (STYLE habit 6): which outcomes of a bulk request, and which
//! items of a `"errors": true` response, are worth another attempt, and how long to wait.

use super::bulk::{BulkResponse, ItemResult};
use crate::error_text::truncate;

/// What to do after a whole request's HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestClass {
    /// 2xx: read the items.
    Success,
    /// 429 or 5xx: send the whole request again after a backoff.
    Retry,
    /// Any other status: another attempt will not help; every item has failed.
    Fail,
}

/// 2xx success; 429 and 5xx (overloaded, restarting, no master) retry; other statuses are final.
pub fn classify_status(status: u16) -> RequestClass {
    match status {
        200..=299 => RequestClass::Success,
        429 | 500..=599 => RequestClass::Retry,
        _ => RequestClass::Fail,
    }
}

/// The `outcome` label of `ccstream_search_bulk_requests_total` for a response status.
pub fn status_label(status: u16, errors: bool) -> &'static str {
    match status {
        200..=299 if errors => "partial",
        200..=299 => "success",
        429 => "throttled",
        500..=599 => "server_error",
        _ => "client_error",
    }
}

/// Why an item was given up: the bounded `reason` label of
/// `ccstream_search_item_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureReason {
    /// The document does not fit the index's mappings (a field of another type, unparsable).
    Mapping,
    /// OpenSearch kept refusing it with 429 or 5xx until the retries ran out.
    Rejected,
    /// Any other refusal (another 4xx, a whole request refused).
    Other,
}

impl FailureReason {
    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            FailureReason::Mapping => "mapping",
            FailureReason::Rejected => "rejected",
            FailureReason::Other => "other",
        }
    }
}

/// What became of one item of a bulk request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemOutcome {
    /// Indexed.
    Indexed,
    /// Refused for now (429 `es_rejected_execution_exception`, or 5xx): send it again.
    Retry {
        /// `status type: reason`, for the log and, if the retries run out, the failure callback.
        detail: String,
    },
    /// Refused for good: not retried, handed to the failure callback.
    Failed {
        /// The metric label.
        reason: FailureReason,
        /// `status type: reason`.
        detail: String,
    },
}

/// Classifies one item. 2xx is indexed, 429 and 5xx retry, every other status is final; a
/// missing status (0) with no error is taken as indexed, with an error as final.
pub fn classify_item(item: &ItemResult) -> ItemOutcome {
    let detail = || {
        let (kind, reason) = item
            .error
            .as_ref()
            .map(|e| (e.kind(), e.reason()))
            .unwrap_or(("", ""));
        let mut text = format!("HTTP {} {kind}: {reason}", item.status);
        truncate(&mut text, 500);
        text
    };
    match item.status {
        200..=299 => ItemOutcome::Indexed,
        0 if item.error.is_none() => ItemOutcome::Indexed,
        429 | 500..=599 => ItemOutcome::Retry { detail: detail() },
        _ => {
            let kind = item.error.as_ref().map(|e| e.kind()).unwrap_or("");
            let reason = item.error.as_ref().map(|e| e.reason()).unwrap_or("");
            let mapping = kind.contains("mapper")
                || kind.contains("mapping")
                || kind.contains("document_parsing")
                || (kind == "illegal_argument_exception" && reason.contains("mapper"));
            ItemOutcome::Failed {
                reason: if mapping {
                    FailureReason::Mapping
                } else {
                    FailureReason::Other
                },
                detail: detail(),
            }
        }
    }
}

/// The outcome of every item of a 2xx response, in request order; `None` when the response does
/// not list exactly one result per item sent although it reports errors (the items cannot be
/// told apart: the caller retries the whole request).
pub fn classify_items(response: &BulkResponse, sent: usize) -> Option<Vec<ItemOutcome>> {
    if !response.errors {
        return Some(vec![ItemOutcome::Indexed; sent]);
    }
    if response.items.len() != sent {
        return None;
    }
    Some(
        response
            .items
            .iter()
            .map(|item| classify_item(item.result()))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::search::bulk::parse_response;

    #[test]
    fn whole_request_statuses() {
        for code in [200, 201] {
            assert_eq!(classify_status(code), RequestClass::Success);
        }
        for code in [429, 500, 502, 503, 504] {
            assert_eq!(classify_status(code), RequestClass::Retry, "{code}");
        }
        for code in [301, 400, 401, 403, 404, 413] {
            assert_eq!(classify_status(code), RequestClass::Fail, "{code}");
        }
        assert_eq!(status_label(200, false), "success");
        assert_eq!(status_label(200, true), "partial");
        assert_eq!(status_label(429, false), "throttled");
        assert_eq!(status_label(503, false), "server_error");
        assert_eq!(status_label(413, false), "client_error");
    }

    #[test]
    fn items_are_classified_one_by_one() {
        let r = parse_response(
            br#"{"errors":true,"items":[
            {"index":{"status":201}},
            {"index":{"status":429,"error":{"type":"es_rejected_execution_exception","reason":"rejected execution"}}},
            {"index":{"status":400,"error":{"type":"mapper_parsing_exception","reason":"failed to parse field [temp] of type [long]"}}},
            {"index":{"status":400,"error":{"type":"illegal_argument_exception","reason":"mapper [temp] cannot be changed from type [long] to [text]"}}},
            {"index":{"status":400,"error":{"type":"strict_dynamic_mapping_exception","reason":"not allowed"}}},
            {"index":{"status":404,"error":{"type":"index_not_found_exception","reason":"no such index"}}},
            {"index":{"status":503,"error":{"type":"unavailable_shards_exception","reason":"primary shard is not active"}}}
        ]}"#,
        )
        .expect("parses");
        let outcomes = classify_items(&r, 7).expect("one per item");
        assert_eq!(outcomes[0], ItemOutcome::Indexed);
        assert!(
            matches!(&outcomes[1], ItemOutcome::Retry { detail } if detail.contains("429 es_rejected_execution_exception"))
        );
        let reasons: Vec<Option<FailureReason>> = outcomes
            .iter()
            .map(|o| match o {
                ItemOutcome::Failed { reason, .. } => Some(*reason),
                _ => None,
            })
            .collect();
        assert_eq!(
            reasons,
            [
                None,
                None,
                Some(FailureReason::Mapping),
                Some(FailureReason::Mapping),
                Some(FailureReason::Mapping),
                Some(FailureReason::Other),
                None
            ]
        );
        assert!(matches!(outcomes[6], ItemOutcome::Retry { .. }));
        // A count mismatch cannot be attributed.
        assert!(classify_items(&r, 6).is_none());
        // No errors: everything indexed, items not even needed.
        let ok = parse_response(br#"{"took":1,"errors":false}"#).expect("parses");
        assert_eq!(classify_items(&ok, 3), Some(vec![ItemOutcome::Indexed; 3]));
    }
}
