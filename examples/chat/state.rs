//! The business side of the demo: who is logged in, who is online, which rooms exist and who
//! belongs to them. impush knows none of this; it only holds sockets and pushes.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, VecDeque},
    sync::{Arc, Mutex, MutexGuard},
};

use futures_util::StreamExt;
use impush_core::{ChannelName, ClientId, Error, Event};
use impush_helper::{EventStream, ImHelper};
use serde::Serialize;
use serde_json::json;

/// How many messages a room keeps for members who join later or come back after a drop.
const ROOM_HISTORY: usize = 50;

/// The demo's business backend state, shared by the HTTP handlers and the event loop.
#[derive(Debug)]
pub(crate) struct Chat {
    pub(crate) helper: ImHelper,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// bearer token -> user
    sessions: HashMap<String, ClientId>,
    /// users with at least one connection, from the helper's online/offline events
    online: BTreeSet<ClientId>,
    /// bumped on every change of `online`, so a page can drop a stale list
    presence_seq: u64,
    /// the business's record of rooms and members; impush's channel membership follows it
    rooms: BTreeMap<ChannelName, Room>,
}

#[derive(Debug, Default)]
struct Room {
    members: BTreeSet<ClientId>,
    history: VecDeque<RoomMessage>,
}

/// A room message as the business remembers it (same id as the pushed frame).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct RoomMessage {
    pub(crate) id: String,
    pub(crate) room: ChannelName,
    pub(crate) from: ClientId,
    pub(crate) text: String,
    pub(crate) ts: u64,
}

/// Who is online, with the sequence number of that view.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Presence {
    pub(crate) seq: u64,
    pub(crate) users: Vec<ClientId>,
}

impl Chat {
    pub(crate) fn new(helper: ImHelper) -> Self {
        Self {
            helper,
            state: Mutex::new(State::default()),
        }
    }

    // A poisoned lock only means a handler panicked mid-update of plain sets: keep serving.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn login(&self, user: ClientId) -> String {
        let bytes: [u8; 16] = rand::random();
        let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        self.lock().sessions.insert(token.clone(), user);
        token
    }

    pub(crate) fn session(&self, token: &str) -> Option<ClientId> {
        self.lock().sessions.get(token).cloned()
    }

    pub(crate) fn logout(&self, token: &str) {
        self.lock().sessions.remove(token);
    }

    /// Ends every session of `user` (the admin kicked them); returns how many there were.
    pub(crate) fn revoke(&self, user: &ClientId) -> usize {
        let mut s = self.lock();
        let before = s.sessions.len();
        s.sessions.retain(|_, u| u != user);
        before - s.sessions.len()
    }

    pub(crate) fn presence(&self) -> Presence {
        let s = self.lock();
        Presence {
            seq: s.presence_seq,
            users: s.online.iter().cloned().collect(),
        }
    }

    /// The rooms `user` belongs to (the business's record).
    pub(crate) fn rooms_of(&self, user: &ClientId) -> Vec<ChannelName> {
        let s = self.lock();
        s.rooms
            .iter()
            .filter(|(_, r)| r.members.contains(user))
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Every room: (name, members, whether `user` is one of them).
    pub(crate) fn rooms(&self, user: &ClientId) -> Vec<(ChannelName, usize, bool)> {
        let s = self.lock();
        s.rooms
            .iter()
            .map(|(name, r)| (name.clone(), r.members.len(), r.members.contains(user)))
            .collect()
    }

    /// Records `user` in `room` (creating it); returns the room's history.
    pub(crate) fn join(&self, room: &ChannelName, user: &ClientId) -> Vec<RoomMessage> {
        let mut s = self.lock();
        let r = s.rooms.entry(room.clone()).or_default();
        r.members.insert(user.clone());
        r.history.iter().cloned().collect()
    }

    /// Removes `user` from `room`; a room nobody belongs to is forgotten. False if not a member.
    pub(crate) fn leave(&self, room: &ChannelName, user: &ClientId) -> bool {
        let mut s = self.lock();
        let Some(r) = s.rooms.get_mut(room) else {
            return false;
        };
        let was = r.members.remove(user);
        if r.members.is_empty() {
            s.rooms.remove(room);
        }
        was
    }

    pub(crate) fn is_member(&self, room: &ChannelName, user: &ClientId) -> bool {
        self.lock()
            .rooms
            .get(room)
            .is_some_and(|r| r.members.contains(user))
    }

    /// `None` when the room does not exist or `user` is not a member.
    pub(crate) fn history(&self, room: &ChannelName, user: &ClientId) -> Option<Vec<RoomMessage>> {
        let s = self.lock();
        let r = s.rooms.get(room).filter(|r| r.members.contains(user))?;
        Some(r.history.iter().cloned().collect())
    }

    pub(crate) fn remember(&self, msg: RoomMessage) {
        let mut s = self.lock();
        if let Some(r) = s.rooms.get_mut(&msg.room) {
            if r.history.len() == ROOM_HISTORY {
                r.history.pop_front();
            }
            r.history.push_back(msg);
        }
    }

    /// Applies a change of the online set; returns the new view if it changed.
    fn set_online(&self, user: &ClientId, online: bool) -> Option<Presence> {
        let mut s = self.lock();
        let changed = if online {
            s.online.insert(user.clone())
        } else {
            s.online.remove(user)
        };
        if !changed {
            return None;
        }
        s.presence_seq += 1;
        Some(Presence {
            seq: s.presence_seq,
            users: s.online.iter().cloned().collect(),
        })
    }

    fn replace_online(&self, users: Vec<ClientId>) -> Presence {
        let mut s = self.lock();
        s.online = users.into_iter().collect();
        s.presence_seq += 1;
        Presence {
            seq: s.presence_seq,
            users: s.online.iter().cloned().collect(),
        }
    }

    /// Tells every connected page who is online now (one broadcast per change).
    async fn announce(&self, user: Option<(&ClientId, bool)>, p: Presence) {
        let mut data = json!({"kind": "presence", "seq": p.seq, "users": p.users});
        if let Some((user, online)) = user {
            data["user"] = json!(user);
            data["online"] = json!(online);
        }
        if let Err(e) = self.helper.broadcast(&data).await {
            tracing::warn!(error = %e, "could not broadcast presence");
        }
    }

    /// Tells every page that the room list changed (pages fetch it again: `joined` is per user).
    pub(crate) async fn announce_rooms(&self) {
        if let Err(e) = self.helper.broadcast(&json!({"kind": "rooms"})).await {
            tracing::warn!(error = %e, "could not broadcast the room list");
        }
    }

    /// Puts `user` back into the impush channels of its rooms. Channel membership in impush ends
    /// with a client's last connection, so the business restores it from its own record.
    pub(crate) async fn restore_channels(&self, user: &ClientId) {
        for room in self.rooms_of(user) {
            if let Err(e) = self
                .helper
                .join_channel(&room, std::slice::from_ref(user))
                .await
            {
                tracing::warn!(%user, %room, error = %e, "could not restore room membership");
            }
        }
    }
}

/// Follows impush's online/offline events for the life of the process. `first`/`last` make it
/// per user, not per socket: a user with two tabs is online until the last one closes.
pub(crate) async fn run_events(chat: Arc<Chat>, mut events: EventStream) {
    while let Some(item) = events.next().await {
        match item {
            Ok(Event::Online {
                client,
                first: true,
                ..
            }) => {
                chat.restore_channels(&client).await;
                if let Some(p) = chat.set_online(&client, true) {
                    tracing::info!(user = %client, "online");
                    chat.announce(Some((&client, true)), p).await;
                }
            }
            Ok(Event::Offline {
                client, last: true, ..
            }) => {
                if let Some(p) = chat.set_online(&client, false) {
                    tracing::info!(user = %client, "offline");
                    chat.announce(Some((&client, false)), p).await;
                }
            }
            Ok(_) => {}
            Err(Error::Lagged { dropped }) => {
                // Missed events: read the truth from presence instead of guessing.
                tracing::warn!(dropped, "missed online/offline events; resyncing");
                match chat.helper.online_clients().await {
                    Ok(users) => {
                        let p = chat.replace_online(users.into_value());
                        chat.announce(None, p).await;
                    }
                    Err(e) => tracing::warn!(error = %e, "could not resync online users"),
                }
            }
            Err(e) => tracing::warn!(error = %e, "event stream error"),
        }
    }
    tracing::info!("event stream ended");
}
