//! `GET /api/v1/events`: online/offline events as Server-Sent Events, the HTTP form of
//! `ImHelper::events()`.
//!
//! Each event is `event: online|offline` with one JSON object as `data:`. Comment lines keep idle
//! connections alive through proxies. A reader too slow for the event rate gets
//! `event: lagged` with `{"dropped": n}` and the stream goes on. The stream ends when the node
//! shuts down, so it never holds up a graceful shutdown.
//!
//! `?group=` names are bounded ([`EventGroups`](crate::app::EventGroups)): a node holds a place
//! for at most `limits.max_event_groups` of them, a group keeps its place while it has a reader
//! here and for `limits.event_group_idle` after its last reader left, and a new group when every
//! place is taken gets `429 too_many_groups`. Together with the broker's own retention for groups without
//! a member (the memory broker drops such a group after `broker.group_idle_ttl`), abandoned
//! group names cannot grow a node's memory without bound.

use std::{convert::Infallible, sync::Arc};

use axum::http::StatusCode;
use axum::{
    extract::{rejection::QueryRejection, Query, State},
    response::sse::{Event as SseEvent, KeepAlive, Sse},
};
use futures_util::{Stream, StreamExt};
use impush_core::Error;
use serde::Deserialize;

use super::ApiError;
use crate::{app::App, metrics::Metrics};

/// Most bytes of a `?group=` name.
const MAX_GROUP_NAME: usize = 256;

#[derive(Debug, Deserialize)]
pub(crate) struct EventsQuery {
    /// Share events with the other readers of this group (each event to one of them).
    group: Option<String>,
}

pub(crate) async fn events(
    State(app): State<Arc<App>>,
    query: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let Query(q) = query.map_err(|rej| ApiError::bad_request("invalid_query", rej.body_text()))?;
    let (stream, lease) = match q.group.as_deref() {
        Some("") => return Err(ApiError::unprocessable("group must not be empty")),
        Some(group) if group.len() > MAX_GROUP_NAME => {
            return Err(ApiError::unprocessable(format!(
                "group is longer than {MAX_GROUP_NAME} bytes"
            )))
        }
        Some(group) => {
            let Some(lease) = app.event_groups.join(group) else {
                Metrics::bump(&app.node.metrics.event_groups_refused);
                return Err(ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too_many_groups",
                    "this node serves limits.max_event_groups event groups already; \
                     retry once one has been idle for limits.event_group_idle",
                ));
            };
            (app.helper.events_in_group(group).await?, Some(lease))
        }
        None => (app.helper.events().await?, None),
    };
    let events = stream
        .map(|item| {
            Ok(match item {
                Ok(ev) => SseEvent::default()
                    .event(ev.kind())
                    .json_data(&ev)
                    .unwrap_or_else(|_| SseEvent::default().comment("unencodable event")),
                Err(Error::Lagged { dropped }) => SseEvent::default()
                    .event("lagged")
                    .data(format!("{{\"dropped\":{dropped}}}")),
                Err(e) => SseEvent::default()
                    .event("error")
                    .data(serde_json::json!({ "message": e.to_string() }).to_string()),
            })
        })
        // The reader holds its group's place for as long as its stream lives.
        .inspect(move |_| {
            let _ = &lease;
        })
        .take_until(app.streams.clone().cancelled_owned());
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(app.sse_keep_alive)))
}
