//! [`EventGroups`]: the SSE `?group=` names a node serves (`GET /api/v1/events`), bounded by
//! `limits.max_event_groups`. A group keeps its place while it has a reader on this node and
//! for `limits.event_group_idle` after its last reader left. It lives beside [`App`](super::App),
//! which holds it, so that the API's SSE handler and the node's start-up both reach it without
//! the app depending on the API.

use std::{
    collections::HashMap,
    sync::{atomic::Ordering, Arc, Mutex},
    time::{Duration, Instant},
};

use crate::metrics::Metrics;

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
    pub(crate) fn join(self: &Arc<Self>, group: &str) -> Option<GroupLease> {
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
pub(crate) struct GroupLease {
    groups: Arc<EventGroups>,
    group: String,
}

impl Drop for GroupLease {
    fn drop(&mut self) {
        self.groups.leave(&self.group);
    }
}
