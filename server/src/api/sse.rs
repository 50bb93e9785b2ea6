//! `GET /api/v1/events`: online/offline events as Server-Sent Events, the HTTP form of
//! `ImHelper::events()`.
//!
//! Each event is `event: online|offline` with one JSON object as `data:`. Comment lines keep idle
//! connections alive through proxies. A reader too slow for the event rate gets
//! `event: lagged` with `{"dropped": n}` and the stream goes on. The stream ends when the node
//! shuts down, so it never holds up a graceful shutdown.

use std::{convert::Infallible, sync::Arc};

use axum::{
    extract::{rejection::QueryRejection, Query, State},
    response::sse::{Event as SseEvent, KeepAlive, Sse},
};
use futures_util::{Stream, StreamExt};
use impush_core::Error;
use serde::Deserialize;

use super::ApiError;
use crate::app::App;

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
    let stream = match q.group.as_deref() {
        Some("") => return Err(ApiError::unprocessable("group must not be empty")),
        Some(group) => app.helper.events_in_group(group).await?,
        None => app.helper.events().await?,
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
        .take_until(app.streams.clone().cancelled_owned());
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(app.sse_keep_alive)))
}
