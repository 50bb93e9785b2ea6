//! `GET /api/v1/events`: online/offline events as Server-Sent Events, the HTTP form of
//! `ImHelper::events()`.
//!
//! Each event is `event: online|offline` with one JSON object as `data:`. Comment lines keep idle
//! connections alive through proxies. A reader too slow for the event rate gets
//! `event: lagged` with `{"dropped": n}` and the stream goes on. The stream ends when the node
//! shuts down, so it never holds up a graceful shutdown.
//!
//! `?group=` names are bounded ([`EventGroups`]): a node holds a place for at most
//! `limits.max_event_groups` of them, a group keeps its place while it has a reader here and for
//! `limits.event_group_idle` after its last reader left, and a new group when every place is
//! taken gets `429 too_many_groups`. Together with the broker's own retention for groups without
//! a member (the memory broker drops such a group after `broker.group_idle_ttl`), abandoned
//! group names cannot grow a node's memory without bound.

use std::{
    collections::HashMap,
    convert::Infallible,
    sync::{atomic::Ordering, Arc, Mutex},
    time::{Duration, Instant},
};

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

/// The `?group=` names this node serves events to, bounded by `limits.max_event_groups`.
#[derive(Debug)]
pub(crate) struct EventGroups {
    max: usize,
    idle: Duration,
    metrics: Arc<Metrics>,
    groups: Mutex<HashMap<String, Place>>,
}

#[derive(Debug)]
struct Place {
    readers: usize,
    /// When the last reader left (`None` while it has readers).
    idle_since: Option<Instant>,
}

impl EventGroups {
    pub(crate) fn new(max: usize, idle: Duration, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            max,
            idle,
            metrics,
            groups: Mutex::new(HashMap::new()),
        })
    }

    /// A reader joins `group`: its place is held until the returned lease is dropped (and then
    /// for `idle` more). `None` when the group is new and every place is taken.
    fn join(self: &Arc<Self>, group: &str) -> Option<GroupLease> {
        let mut groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(place) = groups.get_mut(group) {
            place.readers += 1;
            place.idle_since = None;
        } else {
            if groups.len() >= self.max {
                let idle = self.idle;
                groups.retain(|_, p| p.idle_since.is_none_or(|t| t.elapsed() < idle));
            }
            if groups.len() >= self.max {
                return None;
            }
            groups.insert(
                group.to_owned(),
                Place {
                    readers: 1,
                    idle_since: None,
                },
            );
        }
        self.metrics
            .event_groups
            .store(groups.len() as i64, Ordering::Relaxed);
        Some(GroupLease {
            groups: self.clone(),
            group: group.to_owned(),
        })
    }

    fn leave(&self, group: &str) {
        let mut groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(place) = groups.get_mut(group) {
            place.readers = place.readers.saturating_sub(1);
            if place.readers == 0 {
                place.idle_since = Some(Instant::now());
            }
        }
    }
}

/// One reader's hold on its group's place.
#[derive(Debug)]
struct GroupLease {
    groups: Arc<EventGroups>,
    group: String,
}

impl Drop for GroupLease {
    fn drop(&mut self) {
        self.groups.leave(&self.group);
    }
}

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
