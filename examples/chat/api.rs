//! The business API the page calls. Every user action comes here over HTTP; the handler checks
//! it and calls the ImHelper. The WebSocket only pushes.

use std::{
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use axum::{
    extract::{rejection::PathRejection, FromRequest, FromRequestParts, Path, Request, State},
    http::{header, request::Parts, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use impush_core::{ChannelName, ClientId};
use serde::{de::DeserializeOwned, Deserialize};
use serde_json::{json, Value};

use crate::state::{Chat, RoomMessage};

type App = Arc<Chat>;

/// Longest chat message, in characters.
const MAX_TEXT: usize = 2000;

pub(crate) fn routes() -> Router<App> {
    Router::new()
        .route("/api/login", post(login))
        .route("/api/logout", post(logout))
        .route("/im/connect", get(connect).post(connect))
        .route("/api/users", get(users))
        .route("/api/send", post(send))
        .route("/api/kick", post(kick))
        .route("/api/rooms", get(rooms))
        .route("/api/rooms/join", post(join))
        .route("/api/rooms/leave", post(leave))
        .route("/api/rooms/send", post(room_send))
        .route("/api/rooms/{room}/messages", get(room_messages))
}

// ---- errors ---------------------------------------------------------------------------------

/// `{"error":"<code>","message":"..."}` with a fitting status, like impush's own HTTP API.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    fn bad(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(json!({"error": self.code, "message": self.message}));
        (self.status, body).into_response()
    }
}

impl From<impush_core::Error> for ApiError {
    fn from(e: impush_core::Error) -> Self {
        use impush_core::Error as E;
        match e {
            E::InvalidId { .. } | E::InvalidArgument(_) => Self::bad(e.to_string()),
            E::TooLarge { .. } => {
                Self::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", e.to_string())
            }
            E::Unavailable { .. } | E::Closed(_) => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                e.to_string(),
            ),
            _ => {
                tracing::warn!(error = %e, "helper call failed");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "the push service failed",
                )
            }
        }
    }
}

type ApiResult = Result<Json<Value>, ApiError>;

// ---- extractors -----------------------------------------------------------------------------

/// A JSON body whose rejections are JSON errors too (axum's own are plain text).
pub(crate) struct Body<T>(T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(Body(v)),
            Err(e) => {
                let status = e.status();
                let code = match status {
                    StatusCode::PAYLOAD_TOO_LARGE => "too_large",
                    StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
                    StatusCode::UNPROCESSABLE_ENTITY => "invalid_body",
                    _ => "bad_request",
                };
                Err(ApiError::new(status, code, e.body_text()))
            }
        }
    }
}

/// The logged-in user, from `Authorization: Bearer <token>`.
pub(crate) struct User {
    id: ClientId,
    token: String,
}

impl FromRequestParts<App> for User {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, chat: &App) -> Result<Self, ApiError> {
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .unwrap_or_default();
        match chat.session(token) {
            Some(id) if !token.is_empty() => Ok(User {
                id,
                token: token.to_owned(),
            }),
            _ => Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "log in first (or again: the session ended)",
            )),
        }
    }
}

// ---- validation -----------------------------------------------------------------------------

/// User and room names: 1-32 ASCII letters, digits, `_` or `-`.
fn name(kind: &str, s: &str) -> Result<String, ApiError> {
    let s = s.trim();
    let ok = (1..=32).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(s.to_owned())
    } else {
        Err(ApiError::bad(format!(
            "{kind} must be 1-32 letters, digits, '_' or '-'"
        )))
    }
}

fn user_name(s: &str) -> Result<ClientId, ApiError> {
    Ok(ClientId::new(name("user name", s)?)?)
}

fn room_name(s: &str) -> Result<ChannelName, ApiError> {
    Ok(ChannelName::new(name("room name", s)?)?)
}

fn text(s: &str) -> Result<String, ApiError> {
    let t = s.trim();
    if t.is_empty() {
        return Err(ApiError::bad("the message is empty"));
    }
    if t.chars().count() > MAX_TEXT {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("a message has at most {MAX_TEXT} characters"),
        ));
    }
    Ok(t.to_owned())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

// ---- handlers -------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Login {
    name: String,
}

/// No password: this is a demo. A real backend authenticates here.
async fn login(State(chat): State<App>, Body(b): Body<Login>) -> ApiResult {
    let user = user_name(&b.name)?;
    let token = chat.login(user.clone());
    tracing::info!(%user, "logged in");
    Ok(Json(json!({"token": token, "user": user})))
}

async fn logout(State(chat): State<App>, user: User) -> ApiResult {
    chat.logout(&user.token);
    Ok(Json(json!({"ok": true})))
}

/// The client's `getUrl`: a fresh single-use URL on the user's owning node (FreeIM
/// PrevConnectServer). The user's rooms are joined first, so its node indexes them on connect.
async fn connect(State(chat): State<App>, user: User) -> ApiResult {
    chat.restore_channels(&user.id).await;
    let info = chat
        .helper
        .prepare_connect(&user.id, json!({"app": "chat-demo"}))?;
    Ok(Json(json!({"url": info.url})))
}

async fn users(State(chat): State<App>, user: User) -> ApiResult {
    let p = chat.presence();
    Ok(Json(json!({"me": user.id, "seq": p.seq, "users": p.users})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SendBody {
    to: String,
    text: String,
}

async fn send(State(chat): State<App>, user: User, Body(b): Body<SendBody>) -> ApiResult {
    let to = user_name(&b.to)?;
    let text = text(&b.text)?;
    if to == user.id {
        return Err(ApiError::bad("send to someone else"));
    }
    let data = json!({"kind": "chat", "text": text});
    let report = chat
        .helper
        .send_message(&user.id, std::slice::from_ref(&to), &data, true)
        .await?;
    Ok(Json(
        json!({"id": report.id.as_str(), "to": to, "text": text, "ts": now_ms()}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Kick {
    user: String,
}

/// Demo admin: any logged-in user may kick another. A real backend checks a role here.
async fn kick(State(chat): State<App>, user: User, Body(b): Body<Kick>) -> ApiResult {
    let target = user_name(&b.user)?;
    if target == user.id {
        return Err(ApiError::bad("you cannot kick yourself"));
    }
    let sessions = chat.revoke(&target);
    let kicked = chat.helper.force_offline(&target).await?;
    tracing::info!(by = %user.id, user = %target, kicked, sessions, "kicked");
    Ok(Json(
        json!({"user": target, "kicked": kicked, "sessions": sessions}),
    ))
}

/// The business's rooms with impush's view of them (`helper.channels()`: who is online).
async fn rooms(State(chat): State<App>, user: User) -> ApiResult {
    let online: std::collections::HashMap<ChannelName, usize> = chat
        .helper
        .channels()
        .await?
        .into_value() // one node: always complete
        .into_iter()
        .map(|c| (c.name, c.online))
        .collect();
    let rooms: Vec<Value> = chat
        .rooms(&user.id)
        .into_iter()
        .map(|(name, members, joined)| {
            let online = online.get(&name).copied().unwrap_or(0);
            json!({"name": name, "members": members, "online": online, "joined": joined})
        })
        .collect();
    Ok(Json(json!({"rooms": rooms})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RoomRef {
    room: String,
}

/// Creates the room if needed and joins it (FreeIM JoinChan).
async fn join(State(chat): State<App>, user: User, Body(b): Body<RoomRef>) -> ApiResult {
    let room = room_name(&b.room)?;
    let history = chat.join(&room, &user.id);
    chat.helper
        .join_channel(&room, std::slice::from_ref(&user.id))
        .await?;
    chat.announce_rooms().await;
    Ok(Json(json!({"room": room, "history": history})))
}

async fn leave(State(chat): State<App>, user: User, Body(b): Body<RoomRef>) -> ApiResult {
    let room = room_name(&b.room)?;
    if !chat.leave(&room, &user.id) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "you are not in that room",
        ));
    }
    chat.helper
        .leave_channel(&room, std::slice::from_ref(&user.id))
        .await?;
    chat.announce_rooms().await;
    Ok(Json(json!({"room": room, "left": true})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RoomSend {
    room: String,
    text: String,
}

/// Members only: the business decides who may talk where (FreeIM SendChanMessage).
async fn room_send(State(chat): State<App>, user: User, Body(b): Body<RoomSend>) -> ApiResult {
    let room = room_name(&b.room)?;
    let text = text(&b.text)?;
    if !chat.is_member(&room, &user.id) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "join the room first",
        ));
    }
    let data = json!({"kind": "room", "text": text});
    let id = chat
        .helper
        .send_channel_message(&user.id, &room, &data)
        .await?;
    chat.remember(RoomMessage {
        id: id.as_str().to_owned(),
        room: room.clone(),
        from: user.id,
        text,
        ts: now_ms(),
    });
    Ok(Json(json!({"id": id.as_str(), "room": room})))
}

async fn room_messages(
    State(chat): State<App>,
    user: User,
    room: Result<Path<String>, PathRejection>,
) -> ApiResult {
    let Path(room) = room.map_err(|e| ApiError::bad(e.body_text()))?;
    let room = room_name(&room)?;
    match chat.history(&room, &user.id) {
        Some(history) => Ok(Json(json!({"room": room, "history": history}))),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "you are not in that room",
        )),
    }
}
