//! `POST /api/v1/messages/batch` (`docs/design.md` section 7): many point-to-point messages in
//! one request, each with its own sender, receivers, data, receipt flag and optional id, sent
//! through `ImHelper::send_messages` (one broker payload per node for the whole batch).
//!
//! What the caller got wrong refuses the whole batch before anything is published, naming the
//! item in the error's `at` (`messages[3].to`): malformed JSON (400), an empty list (422), a
//! list over its bound (413). A message is refused for the caller's mistake, never delivered
//! in part. What goes wrong afterwards (the broker) is answered per message, with its id, so
//! exactly those messages can be retried with their `id`; when no message could be published
//! at all the answer is 503, as for a single send.
//!
//! Ids: an item's `id`, else one derived from the request's `Idempotency-Key` and the item's
//! index (`IdempotencyKey::batch_message_id`), else a new one. A retried batch with the same key
//! (and its messages in the same order) is delivered once.

use std::{
    collections::BTreeMap,
    sync::{atomic::Ordering, Arc},
};

use axum::{
    extract::{FromRequest, Request, State},
    http::HeaderMap,
    Json,
};
use impush_core::{config::LimitsConfig, ClientId, Error, MessageId};
use impush_helper::OutgoingMessage;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{error::ApiError, extract::body_bytes, idempotency};
use crate::app::App;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchBody {
    messages: Vec<BatchItem>,
}

/// One message of a batch: the fields of `POST /api/v1/messages`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchItem {
    from: ClientId,
    to: Vec<ClientId>,
    data: Box<RawValue>,
    #[serde(default)]
    receipt: bool,
    #[serde(default, deserialize_with = "idempotency::some_id")]
    id: Option<MessageId>,
}

/// The body of a batch; a malformed one is refused naming the item (and field) that is wrong.
#[derive(Debug)]
pub(super) struct BatchJson(BatchBody);

impl<S: Send + Sync> FromRequest<S> for BatchJson {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = body_bytes(req, state).await?;
        serde_json::from_slice(&bytes).map(BatchJson).map_err(|e| {
            // Only a refused body pays for finding the culprit.
            match locate(&bytes) {
                Some((at, why)) => {
                    ApiError::bad_request("invalid_json", format!("{at}: {why}")).at(at)
                }
                None => ApiError::bad_request("invalid_json", e.to_string()),
            }
        })
    }
}

/// Where in a batch body that does not parse the first wrong item is (`messages[3]`, with its
/// field when one is: `messages[3].to[1]`), and why; `None` when the items are not the problem.
fn locate(bytes: &[u8]) -> Option<(String, String)> {
    #[derive(Deserialize)]
    struct Loose<'a> {
        #[serde(borrow)]
        messages: Vec<&'a RawValue>,
    }
    let loose: Loose<'_> = serde_json::from_slice(bytes).ok()?;
    loose.messages.iter().enumerate().find_map(|(i, raw)| {
        let e = serde_json::from_str::<BatchItem>(raw.get()).err()?;
        let at = match field_of(raw.get()) {
            Some(field) => format!("messages[{i}].{field}"),
            None => format!("messages[{i}]"),
        };
        Some((at, e.to_string()))
    })
}

/// The field of a batch item that is wrong: unknown, of the wrong type, an invalid id (with
/// its index in `to`), or missing.
fn field_of(item: &str) -> Option<String> {
    let fields: BTreeMap<String, &RawValue> = serde_json::from_str(item).ok()?;
    fn bad<'a, T: Deserialize<'a>>(v: &'a RawValue) -> bool {
        serde_json::from_str::<T>(v.get()).is_err()
    }
    for (name, v) in &fields {
        let wrong = match name.as_str() {
            "from" => bad::<ClientId>(v),
            "to" => match serde_json::from_str::<Vec<&RawValue>>(v.get()) {
                Ok(list) => {
                    if let Some(j) = list.iter().position(|c| bad::<ClientId>(c)) {
                        return Some(format!("to[{j}]"));
                    }
                    false
                }
                Err(_) => true,
            },
            "data" => false,
            "receipt" => bad::<bool>(v),
            "id" => bad::<MessageId>(v),
            _ => true,
        };
        if wrong {
            return Some(name.clone());
        }
    }
    ["from", "to", "data"]
        .into_iter()
        .find(|f| !fields.contains_key(*f))
        .map(str::to_owned)
}

/// The batch's bounds, checked before anything is published.
fn check(limits: &LimitsConfig, body: &BatchBody) -> Result<(), ApiError> {
    let n = body.messages.len();
    if n == 0 {
        return Err(ApiError::unprocessable("messages must not be empty").at("messages"));
    }
    let max = limits.max_batch_messages;
    if n > max {
        return Err(ApiError::too_many(
            "too_many_messages",
            format!("{n} messages is over limits.max_batch_messages ({max})"),
        )
        .at("messages"));
    }
    let max = limits.max_receivers_per_message;
    let mut total = 0usize;
    for (i, m) in body.messages.iter().enumerate() {
        let at = format!("messages[{i}].to");
        let k = m.to.len();
        if k == 0 {
            return Err(ApiError::unprocessable(format!("{at} must not be empty")).at(at));
        }
        if k > max {
            return Err(ApiError::too_many(
                "too_many_receivers",
                format!("{at}: {k} receivers is over limits.max_receivers_per_message ({max})"),
            )
            .at(at));
        }
        total += k;
        if total > max {
            return Err(ApiError::too_many(
                "too_many_receivers",
                format!(
                    "{at}: the batch lists {total} receivers up to here, over \
                     limits.max_receivers_per_message ({max}), which bounds a whole batch too"
                ),
            )
            .at(at));
        }
    }
    Ok(())
}

#[derive(Debug, Serialize)]
pub(super) struct BatchAnswer {
    results: Vec<ItemAnswer>,
}

/// What became of one message: published (to `nodes` node inboxes), or not.
#[derive(Debug, Serialize)]
#[serde(untagged)]
enum ItemAnswer {
    Sent { id: MessageId, nodes: usize },
    Failed { id: MessageId, error: ItemError },
}

#[derive(Debug, Serialize)]
struct ItemError {
    error: &'static str,
    message: &'static str,
}

impl ItemError {
    fn of(e: &Error) -> Self {
        if e.is_transient() || matches!(e, Error::Closed(_)) {
            Self {
                error: "unavailable",
                message: "the broker is unavailable; retry this message with its id",
            }
        } else {
            Self {
                error: "internal",
                message: "internal error",
            }
        }
    }
}

pub(super) async fn send_batch(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    BatchJson(body): BatchJson,
) -> Result<Json<BatchAnswer>, ApiError> {
    check(&app.node.limits, &body)?;
    let mut outgoing = Vec::with_capacity(body.messages.len());
    for (i, m) in body.messages.into_iter().enumerate() {
        let id = idempotency::message_id(&headers, m.id, |k| k.batch_message_id(i))?;
        outgoing.push(OutgoingMessage {
            id: Some(id),
            from: m.from,
            to: m.to,
            data: m.data,
            receipt: m.receipt,
        });
    }
    let ids: Vec<MessageId> = outgoing.iter().filter_map(|m| m.id.clone()).collect();
    let results = app.helper.send_messages(outgoing).await?;
    let failed = results.iter().filter(|r| r.is_err()).count();
    if failed > 0 {
        app.node
            .metrics
            .broker_publish_errors
            .fetch_add(failed as u64, Ordering::Relaxed);
        if let Some(Err(e)) = results.iter().find(|r| r.is_err()) {
            tracing::warn!(
                failed,
                of = results.len(),
                error = e as &dyn std::error::Error,
                "batch send: messages not published"
            );
        }
    }
    let mut results = results;
    if failed == results.len() {
        // Nothing went out whole: the same answer as a single send that failed.
        if let Some(Err(e)) = results.pop() {
            return Err(ApiError::from(e));
        }
    }
    let results = results
        .into_iter()
        .zip(ids)
        .map(|(r, id)| match r {
            Ok(report) => ItemAnswer::Sent {
                id: report.id,
                nodes: report.nodes,
            },
            Err(e) => ItemAnswer::Failed {
                id,
                error: ItemError::of(&e),
            },
        })
        .collect();
    Ok(Json(BatchAnswer { results }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn at(body: &str) -> Option<String> {
        locate(body.as_bytes()).map(|(at, _)| at)
    }

    #[test]
    fn a_malformed_item_is_named_down_to_its_field() {
        let ok = r#"{"from":"a","to":["b"],"data":1}"#;
        let cases = [
            (r#"{"from":"a","to":["b"]}"#, "messages[1].data"),
            (
                r#"{"from":"a","to":["b"],"data":1,"cc":[]}"#,
                "messages[1].cc",
            ),
            (r#"{"from":"","to":["b"],"data":1}"#, "messages[1].from"),
            (
                r#"{"from":"a","to":["b","","c"],"data":1}"#,
                "messages[1].to[1]",
            ),
            (r#"{"from":"a","to":"b","data":1}"#, "messages[1].to"),
            (
                r#"{"from":"a","to":["b"],"data":1,"receipt":"yes"}"#,
                "messages[1].receipt",
            ),
            (
                r#"{"from":"a","to":["b"],"data":1,"id":null}"#,
                "messages[1].id",
            ),
            (r#"[1]"#, "messages[1]"),
        ];
        for (item, want) in cases {
            let body = format!(r#"{{"messages":[{ok},{item},{ok}]}}"#);
            assert!(serde_json::from_str::<BatchBody>(&body).is_err(), "{item}");
            assert_eq!(at(&body).as_deref(), Some(want), "{item}");
        }
        let (_, why) =
            locate(format!(r#"{{"messages":[{ok},{{"from":"a"}}]}}"#).as_bytes()).unwrap();
        assert!(why.contains("missing field"), "{why}");
        // Not an item's fault: no item named.
        assert_eq!(at(r#"{"messages":[], "x":1}"#), None);
        assert_eq!(at(r#"{"messages":{}}"#), None);
        assert_eq!(at("not json"), None);
    }

    fn body(receivers: &[usize]) -> BatchBody {
        let messages = receivers
            .iter()
            .map(|&k| BatchItem {
                from: "s".parse().unwrap(),
                to: (0..k).map(|i| format!("r{i}").parse().unwrap()).collect(),
                data: RawValue::from_string("1".into()).unwrap(),
                receipt: false,
                id: None,
            })
            .collect();
        BatchBody { messages }
    }

    async fn refused(limits: &LimitsConfig, receivers: &[usize]) -> (u16, String) {
        use axum::response::IntoResponse;
        let e = check(limits, &body(receivers)).unwrap_err();
        let resp = e.into_response();
        let status = resp.status().as_u16();
        let bytes = axum::body::to_bytes(resp.into_body(), 4096).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        (status, v["at"].as_str().unwrap_or("").to_owned())
    }

    #[tokio::test]
    async fn bounds_refuse_the_batch_naming_the_item() {
        let limits = LimitsConfig {
            max_batch_messages: 3,
            max_receivers_per_message: 5,
            ..LimitsConfig::default()
        };
        assert!(check(&limits, &body(&[1, 2, 2])).is_ok());
        assert_eq!(refused(&limits, &[]).await, (422, "messages".into()));
        assert_eq!(
            refused(&limits, &[1, 1, 1, 1]).await,
            (413, "messages".into())
        );
        assert_eq!(
            refused(&limits, &[1, 0, 1]).await,
            (422, "messages[1].to".into())
        );
        assert_eq!(
            refused(&limits, &[1, 6]).await,
            (413, "messages[1].to".into())
        );
        // 2 + 2 + 2 = 6 receivers in all, over the 5 a batch may list.
        assert_eq!(
            refused(&limits, &[2, 2, 2]).await,
            (413, "messages[2].to".into())
        );
    }
}
