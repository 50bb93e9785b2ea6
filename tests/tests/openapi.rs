//! The OpenAPI document served at `/api/v1/openapi.json` against the server that serves it: the
//! same operations as `impush_server::api_routes()`, every operation routed and answering with
//! documented statuses and shapes, 401 where the document says a key is needed, request bodies
//! refused the way the document says, and every `$ref` resolving.

#![allow(clippy::unwrap_used)]

use crate::support;

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use futures_util::StreamExt;
use impush_core::{Broker, MemoryBroker, MemoryPresenceStore, PresenceStore};
use impush_server::{Config, ImServer};
use serde_json::{json, Value};
use support::{start, ADMIN_SECRET, WAIT};

const KEY: &str = "test-api-key";
const METHODS: &[&str] = &[
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// One operation of the document.
struct Op {
    method: String,
    path: String,
    op: Value,
    /// Path-level `parameters` of its path item.
    path_params: Vec<Value>,
}

impl Op {
    fn name(&self) -> String {
        format!("{} {}", self.method, self.path)
    }

    fn id(&self) -> &str {
        self.op["operationId"].as_str().unwrap_or("?")
    }

    /// The success status the document lists (200, or 202 for an operation that only
    /// starts something).
    fn success(&self) -> u16 {
        self.statuses()
            .iter()
            .filter_map(|s| s.parse::<u16>().ok())
            .find(|s| (200..300).contains(s))
            .unwrap_or(200)
    }

    /// Statuses the document lists, as strings ("200", "401", ...).
    fn statuses(&self) -> BTreeSet<String> {
        self.op["responses"]
            .as_object()
            .map(|r| r.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// The request body schema, when the operation takes a body.
    fn body_schema<'a>(&'a self, doc: &'a Value) -> Option<&'a Value> {
        let body = resolve(doc, self.op.get("requestBody")?);
        body.pointer("/content/application~1json/schema")
    }

    /// Whether the operation needs the API key (its own `security`, else the global one).
    fn secured(&self, doc: &Value) -> bool {
        let sec = self.op.get("security").unwrap_or(&doc["security"]);
        sec.as_array().is_some_and(|a| !a.is_empty())
    }

    /// The path with `{id}` and `{name}` filled in.
    fn url(&self, base: &str) -> String {
        format!(
            "{base}{}",
            self.path.replace("{id}", "alice").replace("{name}", "room")
        )
    }

    /// Whether the operation needs an admin console session (cookie) rather than the key.
    fn admin_session(&self) -> bool {
        self.op["security"]
            .as_array()
            .is_some_and(|a| a.iter().any(|s| s.get("adminSession").is_some()))
    }

    fn is_sse(&self) -> bool {
        self.op
            .pointer("/responses/200/content/text~1event-stream")
            .is_some()
    }
}

fn operations(doc: &Value) -> Vec<Op> {
    let mut ops = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths is an object") {
        let path_params = item["parameters"].as_array().cloned().unwrap_or_default();
        for (key, op) in item.as_object().expect("path item is an object") {
            if METHODS.contains(&key.as_str()) {
                ops.push(Op {
                    method: key.to_uppercase(),
                    path: path.clone(),
                    op: op.clone(),
                    path_params: path_params.clone(),
                });
            }
        }
    }
    ops
}

/// Follows `$ref`s (local JSON pointers) until a non-reference.
fn resolve<'a>(doc: &'a Value, mut v: &'a Value) -> &'a Value {
    for _ in 0..32 {
        match v.get("$ref").and_then(Value::as_str) {
            Some(r) => {
                v = doc
                    .pointer(r.strip_prefix('#').expect("local $ref"))
                    .unwrap_or_else(|| panic!("unresolved $ref {r}"));
            }
            None => return v,
        }
    }
    panic!("$ref cycle");
}

/// A minimal valid instance of `schema`: required properties only, `minItems` items, examples
/// for strings that have them, `null` for "any JSON".
fn sample(doc: &Value, schema: &Value) -> Value {
    let s = resolve(doc, schema);
    if let Some(first) = s["allOf"].as_array().and_then(|a| a.first()) {
        return sample(doc, first);
    }
    if let Some(ex) = s.get("example") {
        return ex.clone();
    }
    match s["type"].as_str() {
        Some("object") => {
            let mut o = serde_json::Map::new();
            for name in s["required"].as_array().into_iter().flatten() {
                let name = name.as_str().unwrap();
                o.insert(name.to_owned(), sample(doc, &s["properties"][name]));
            }
            Value::Object(o)
        }
        Some("array") => {
            let n = s["minItems"].as_u64().unwrap_or(0);
            Value::Array((0..n).map(|_| sample(doc, &s["items"])).collect())
        }
        Some("string") => json!("x"),
        Some("boolean") => json!(false),
        Some("integer" | "number") => json!(0),
        _ => Value::Null,
    }
}

/// Checks `v` against `schema` (the subset of OpenAPI 3.0 schemas the document uses; `pattern`
/// is not checked). Strict: an object may only have the properties its schema lists.
fn check(doc: &Value, schema: &Value, v: &Value, at: &str, errs: &mut Vec<String>) {
    let s = resolve(doc, schema);
    if v.is_null() && s["nullable"] == json!(true) {
        return;
    }
    for sub in s["allOf"].as_array().into_iter().flatten() {
        check(doc, sub, v, at, errs);
    }
    if let Some(one) = s["oneOf"].as_array() {
        let matching = one
            .iter()
            .filter(|sub| {
                let mut e = Vec::new();
                check(doc, sub, v, at, &mut e);
                e.is_empty()
            })
            .count();
        if matching != 1 {
            errs.push(format!("{at}: {v} matches {matching} oneOf schemas, not 1"));
        }
    }
    if let Some(allowed) = s["enum"].as_array() {
        if !allowed.contains(v) {
            errs.push(format!("{at}: {v} is not one of {allowed:?}"));
        }
    }
    if let Some(t) = s["type"].as_str() {
        let ok = match t {
            "object" => v.is_object(),
            "array" => v.is_array(),
            "string" => v.is_string(),
            "integer" => v.is_i64() || v.is_u64(),
            "number" => v.is_number(),
            "boolean" => v.is_boolean(),
            _ => false,
        };
        if !ok {
            errs.push(format!("{at}: expected {t}, got {v}"));
            return;
        }
    }
    if let Some(o) = v.as_object() {
        for name in s["required"].as_array().into_iter().flatten() {
            let name = name.as_str().unwrap();
            if !o.contains_key(name) {
                errs.push(format!("{at}: required property `{name}` is missing"));
            }
        }
        if let Some(props) = s["properties"].as_object() {
            for (k, val) in o {
                match props.get(k) {
                    Some(p) => check(doc, p, val, &format!("{at}.{k}"), errs),
                    None => errs.push(format!("{at}: undocumented property `{k}`")),
                }
            }
        }
    }
    if let Some(a) = v.as_array() {
        if let Some(min) = s["minItems"].as_u64() {
            if (a.len() as u64) < min {
                errs.push(format!(
                    "{at}: {} items, at least {min} documented",
                    a.len()
                ));
            }
        }
        if let Some(items) = s.get("items") {
            for (i, item) in a.iter().enumerate() {
                check(doc, items, item, &format!("{at}[{i}]"), errs);
            }
        }
    }
    if let Some(text) = v.as_str() {
        let n = text.chars().count() as u64;
        if s["minLength"].as_u64().is_some_and(|min| n < min) {
            errs.push(format!("{at}: {text:?} is shorter than minLength"));
        }
        if s["maxLength"].as_u64().is_some_and(|max| n > max) {
            errs.push(format!("{at}: {text:?} is longer than maxLength"));
        }
    }
    if let (Some(x), Some(min)) = (v.as_f64(), s["minimum"].as_f64()) {
        if x < min {
            errs.push(format!("{at}: {x} is below the minimum {min}"));
        }
    }
}

fn assert_valid(doc: &Value, schema: &Value, v: &Value, what: &str) {
    let mut errs = Vec::new();
    check(doc, schema, v, "$", &mut errs);
    assert!(
        errs.is_empty(),
        "{what}: {v} does not match its documented schema:\n  {}",
        errs.join("\n  ")
    );
}

fn base(server: &ImServer) -> String {
    format!("http://{}", server.local_addr())
}

async fn fetch_doc(base: &str) -> Value {
    let resp = reqwest::get(format!("{base}/api/v1/openapi.json"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let ct = content_type(&resp);
    assert!(ct.starts_with("application/json"), "content type {ct}");
    resp.json().await.expect("the served document is JSON")
}

fn content_type(resp: &reqwest::Response) -> String {
    resp.headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

/// Sends `op` with `body` (or none), with the API key when `key` is given.
async fn send(
    http: &reqwest::Client,
    method: &str,
    url: &str,
    body: Option<Vec<u8>>,
    key: Option<&str>,
) -> reqwest::Response {
    send_with(http, method, url, body, key, &[]).await
}

/// As [`send`], with extra headers.
async fn send_with(
    http: &reqwest::Client,
    method: &str,
    url: &str,
    body: Option<Vec<u8>>,
    key: Option<&str>,
    headers: &[(&str, String)],
) -> reqwest::Response {
    let mut req = http.request(reqwest::Method::from_bytes(method.as_bytes()).unwrap(), url);
    for (name, value) in headers {
        req = req.header(*name, value);
    }
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    if let Some(b) = body {
        req = req.body(b);
    }
    tokio::time::timeout(WAIT, req.send())
        .await
        .expect("an answer within the timeout")
        .unwrap()
}

/// A minimal valid body for `op`: the schema's sample, with the right admin secret for the
/// admin console's login.
fn sample_body(doc: &Value, op: &Op) -> Option<Value> {
    let schema = op.body_schema(doc)?;
    if op.id() == "adminLogin" {
        return Some(json!({ "secret": ADMIN_SECRET }));
    }
    Some(sample(doc, schema))
}

/// Logs in to the admin console: the session cookie and CSRF headers of an action.
async fn admin_headers(http: &reqwest::Client, base: &str) -> Vec<(&'static str, String)> {
    let resp = http
        .post(format!("{base}/admin/api/login"))
        .json(&json!({ "secret": ADMIN_SECRET }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "admin login");
    let cookie = resp.headers()["set-cookie"].to_str().unwrap();
    let cookie = cookie.split(';').next().unwrap().to_owned();
    let v: Value = resp.json().await.unwrap();
    let csrf = v["csrf_token"].as_str().unwrap().to_owned();
    vec![("cookie", cookie), ("x-csrf-token", csrf)]
}

/// Calls `op` with a minimal valid body (when it takes one) and the API key, or a fresh admin
/// console session for the console's routes.
async fn call(doc: &Value, http: &reqwest::Client, base: &str, op: &Op) -> reqwest::Response {
    let body = sample_body(doc, op).map(|b| serde_json::to_vec(&b).unwrap());
    let headers = if op.admin_session() {
        admin_headers(http, base).await
    } else {
        Vec::new()
    };
    send_with(http, &op.method, &op.url(base), body, Some(KEY), &headers).await
}

/// Asserts that `resp` is a documented answer of `op`: a listed status, a listed content type,
/// and a JSON body matching the documented schema. Returns the status and the JSON body (if
/// any). Does not read `text/event-stream` bodies.
async fn assert_documented(doc: &Value, op: &Op, resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    let ct = content_type(&resp);
    let name = op.name();
    if !ct.starts_with("text/event-stream") {
        let bytes = resp.bytes().await.unwrap();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        assert!(
            status != 404 && status != 405,
            "{name}: not routed ({status} {text})"
        );
        let documented = op.op["responses"]
            .get(status.to_string())
            .map(|r| resolve(doc, r))
            .unwrap_or_else(|| {
                panic!(
                    "{name}: status {status} is not documented (documented: {:?}); body {text}",
                    op.statuses()
                )
            });
        let media = documented["content"]
            .as_object()
            .and_then(|c| c.iter().find(|(m, _)| ct.starts_with(m.as_str())))
            .unwrap_or_else(|| {
                panic!("{name}: {status} with content type {ct:?} is not documented")
            });
        if media.0 == "application/json" {
            let v: Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{name}: {status} body is not JSON ({e}): {text}"));
            assert_valid(doc, &media.1["schema"], &v, &format!("{name} {status}"));
            return (status, v);
        }
        return (status, Value::String(text));
    }
    let documented = &op.op["responses"][status.to_string()];
    assert!(
        documented.pointer("/content/text~1event-stream").is_some(),
        "{name}: {status} text/event-stream is not documented"
    );
    (status, Value::Null)
}

#[tokio::test]
async fn served_document_lists_exactly_the_routed_operations() {
    let server = start(|_| {}).await;
    let doc = fetch_doc(&base(&server)).await;
    let version = doc["openapi"].as_str().expect("`openapi` is a string");
    assert!(version.starts_with("3.0."), "openapi {version}, want 3.0.x");
    assert_eq!(doc["info"]["title"], "impush");
    assert!(doc["info"]["version"].is_string());

    let documented: BTreeSet<(String, String)> = operations(&doc)
        .into_iter()
        .map(|o| (o.method, o.path))
        .collect();
    let routed: BTreeSet<(String, String)> = impush_server::api_routes()
        .into_iter()
        .map(|(m, p)| (m.to_uppercase(), p.to_owned()))
        .collect();
    let undocumented: Vec<_> = routed.difference(&documented).collect();
    let unrouted: Vec<_> = documented.difference(&routed).collect();
    assert!(
        undocumented.is_empty() && unrouted.is_empty(),
        "the document and api_routes() differ\n  routed but not documented: {undocumented:?}\n  \
         documented but not routed: {unrouted:?}"
    );
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn every_operation_is_routed_and_answers_as_documented() {
    let server = start(|_| {}).await;
    let base = base(&server);
    let doc = fetch_doc(&base).await;
    let http = reqwest::Client::new();
    for op in operations(&doc) {
        let resp = call(&doc, &http, &base, &op).await;
        let sse = op.is_sse();
        let (status, _) = assert_documented(&doc, &op, resp).await;
        // A healthy node with memory backends answers every minimal valid request with success.
        assert_eq!(status, op.success(), "{}: minimal valid request", op.name());
        assert_eq!(
            sse,
            matches!(op.id(), "events" | "adminEvents"),
            "{}",
            op.name()
        );
    }
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn secured_operations_document_and_enforce_401() {
    let server = start(|_| {}).await;
    let base = base(&server);
    let doc = fetch_doc(&base).await;
    let http = reqwest::Client::new();
    let mut public = BTreeSet::new();
    for op in operations(&doc) {
        let name = op.name();
        let body = sample_body(&doc, &op).map(|b| serde_json::to_vec(&b).unwrap());
        if op.secured(&doc) {
            assert!(
                op.statuses().contains("401"),
                "{name}: secured but no 401 documented"
            );
            for key in [None, Some("wrong-key"), Some("")] {
                let resp = send(&http, &op.method, &op.url(&base), body.clone(), key).await;
                let (status, v) = assert_documented(&doc, &op, resp).await;
                assert_eq!(status, 401, "{name} with key {key:?}");
                assert_eq!(v["error"], "unauthorized", "{name}: {v}");
                assert!(v["message"].is_string(), "{name}: {v}");
            }
        } else {
            public.insert((op.method.clone(), op.path.clone()));
            // The console's login is public and answers a wrong secret with 401.
            assert!(
                !op.statuses().contains("401") || op.id() == "adminLogin",
                "{name}: public but documents 401"
            );
            let resp = send(&http, &op.method, &op.url(&base), body, None).await;
            let (status, _) = assert_documented(&doc, &op, resp).await;
            assert_eq!(status, 200, "{name} without a key");
        }
    }
    let mut want: BTreeSet<_> = ["/api/v1/openapi.json", "/healthz", "/readyz", "/metrics"]
        .into_iter()
        .map(|p| ("GET".to_owned(), p.to_owned()))
        .collect();
    want.insert(("POST".to_owned(), "/admin/api/login".to_owned()));
    assert_eq!(public, want, "operations documented as public");
    assert!(doc
        .pointer("/components/securitySchemes/bearer")
        .is_some_and(|s| s["type"] == "http" && s["scheme"] == "bearer"));
    server.shutdown().await.unwrap();
}

#[test]
fn every_ref_resolves_under_components() {
    fn walk(doc: &Value, v: &Value, at: &str, bad: &mut Vec<String>, n: &mut usize) {
        match v {
            Value::Object(o) => {
                for (k, child) in o {
                    if k == "$ref" {
                        *n += 1;
                        let target = child.as_str().unwrap_or("");
                        let ok = target.starts_with("#/components/")
                            && doc.pointer(&target[1..]).is_some();
                        if !ok {
                            bad.push(format!("{at}: {child}"));
                        }
                    } else if k == "mapping" && at.ends_with("discriminator") {
                        for (name, target) in child.as_object().into_iter().flatten() {
                            let t = target.as_str().unwrap_or("");
                            if !t.starts_with("#/components/") || doc.pointer(&t[1..]).is_none() {
                                bad.push(format!("{at}.mapping.{name}: {target}"));
                            }
                        }
                    } else {
                        walk(doc, child, &format!("{at}/{k}"), bad, n);
                    }
                }
            }
            Value::Array(a) => {
                for (i, child) in a.iter().enumerate() {
                    walk(doc, child, &format!("{at}/{i}"), bad, n);
                }
            }
            _ => {}
        }
    }
    // The document the server embeds (include_str!) is this file; the served copy is compared
    // with api_routes() above.
    let doc: Value =
        serde_json::from_str(include_str!("../../server/src/api/openapi.json")).unwrap();
    let (mut bad, mut n) = (Vec::new(), 0);
    walk(&doc, &doc, "#", &mut bad, &mut n);
    assert!(n > 0, "no $ref at all");
    assert!(bad.is_empty(), "unresolved $refs:\n  {}", bad.join("\n  "));
}

#[tokio::test]
async fn path_parameters_and_operation_ids_are_consistent() {
    let server = start(|_| {}).await;
    let doc = fetch_doc(&base(&server)).await;
    let mut ids = BTreeMap::new();
    for op in operations(&doc) {
        let name = op.name();
        if let Some(prev) = ids.insert(op.id().to_owned(), name.clone()) {
            panic!("operationId {} used by {prev} and {name}", op.id());
        }
        assert!(op.op["summary"].is_string(), "{name}: no summary");
        let templated: BTreeSet<String> = op
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
            .map(str::to_owned)
            .collect();
        let mut declared = BTreeSet::new();
        for p in op
            .path_params
            .iter()
            .chain(op.op["parameters"].as_array().into_iter().flatten())
        {
            let p = resolve(&doc, p);
            if p["in"] == "path" {
                assert_eq!(p["required"], true, "{name}: path parameter {p}");
                assert!(p.get("schema").is_some(), "{name}: path parameter {p}");
                declared.insert(p["name"].as_str().unwrap().to_owned());
            }
        }
        assert_eq!(templated, declared, "{name}: path parameters");
    }
    server.shutdown().await.unwrap();
}

#[test]
fn examples_match_their_schemas() {
    fn walk(doc: &Value, v: &Value, at: &str, n: &mut usize) {
        if let Some(o) = v.as_object() {
            // Media type objects and schemas with an example.
            if let (Some(schema), Some(ex)) = (o.get("schema"), o.get("example")) {
                *n += 1;
                assert_valid(doc, schema, ex, at);
            }
            let is_schema = at.contains("/schemas/") || at.ends_with("/schema");
            if let (true, Some(ex)) = (is_schema, o.get("example")) {
                *n += 1;
                assert_valid(doc, v, ex, at);
            }
            for (k, child) in o {
                walk(doc, child, &format!("{at}/{k}"), n);
            }
        } else if let Some(a) = v.as_array() {
            for (i, child) in a.iter().enumerate() {
                walk(doc, child, &format!("{at}/{i}"), n);
            }
        }
    }
    let doc: Value =
        serde_json::from_str(include_str!("../../server/src/api/openapi.json")).unwrap();
    let mut n = 0;
    walk(&doc, &doc, "#", &mut n);
    assert!(n > 10, "only {n} examples checked");
}

#[tokio::test]
async fn request_bodies_are_enforced_as_documented() {
    const LIMIT: usize = 256;
    let server = start(|c| c.limits.max_body_bytes = LIMIT).await;
    let base = base(&server);
    let doc = fetch_doc(&base).await;
    let http = reqwest::Client::new();
    for op in operations(&doc) {
        let name = op.name();
        let url = op.url(&base);
        let Some(schema) = op.body_schema(&doc) else {
            assert!(
                !op.statuses().contains("413"),
                "{name}: reads no body but documents 413"
            );
            continue;
        };
        assert_eq!(
            resolve(&doc, &op.op["requestBody"])["required"],
            true,
            "{name}"
        );
        let schema = resolve(&doc, schema);
        assert_eq!(
            schema["additionalProperties"], false,
            "{name}: the server denies unknown fields"
        );
        let minimal = sample_body(&doc, &op).unwrap();
        let go = |body: Vec<u8>| send(&http, &op.method, &url, Some(body), Some(KEY));

        // An unknown field.
        let mut extra = minimal.clone();
        extra["unexpected"] = json!(1);
        let r = go(serde_json::to_vec(&extra).unwrap()).await;
        expect_error(
            &doc,
            &op,
            r,
            (400, "invalid_json", format!("{name} unknown field")),
        )
        .await;

        // Each required field missing.
        for field in schema["required"].as_array().unwrap() {
            let mut partial = minimal.clone();
            partial
                .as_object_mut()
                .unwrap()
                .remove(field.as_str().unwrap());
            let r = go(serde_json::to_vec(&partial).unwrap()).await;
            expect_error(
                &doc,
                &op,
                r,
                (400, "invalid_json", format!("{name} without {field}")),
            )
            .await;
        }

        // Not JSON.
        let r = go(b"{not json".to_vec()).await;
        expect_error(
            &doc,
            &op,
            r,
            (400, "invalid_json", format!("{name} malformed JSON")),
        )
        .await;

        // An invalid id where a ClientId goes is a body error (400), not an id error.
        if let Some(field) = ["client_id", "from"]
            .into_iter()
            .find(|f| minimal.get(*f).is_some())
        {
            let mut bad = minimal.clone();
            bad[field] = json!("");
            let r = go(serde_json::to_vec(&bad).unwrap()).await;
            expect_error(
                &doc,
                &op,
                r,
                (400, "invalid_json", format!("{name} empty {field}")),
            )
            .await;
        }

        // Arrays documented with minItems refuse an empty list with 422.
        for (field, prop) in schema["properties"].as_object().unwrap() {
            if resolve(&doc, prop)["minItems"].as_u64().unwrap_or(0) > 0 {
                assert!(
                    op.statuses().contains("422"),
                    "{name}: minItems without 422"
                );
                let mut empty = minimal.clone();
                empty[field] = json!([]);
                let r = go(serde_json::to_vec(&empty).unwrap()).await;
                expect_error(
                    &doc,
                    &op,
                    r,
                    (422, "invalid_request", format!("{name} empty {field}")),
                )
                .await;
            }
        }

        // Over limits.max_body_bytes (valid JSON padded with whitespace).
        let mut big = serde_json::to_vec(&minimal).unwrap();
        big.resize(LIMIT + 1, b' ');
        let r = go(big).await;
        expect_error(
            &doc,
            &op,
            r,
            (413, "body_too_large", format!("{name} oversized")),
        )
        .await;

        // Exactly at the limit is fine.
        let mut fits = serde_json::to_vec(&minimal).unwrap();
        fits.resize(LIMIT, b' ');
        let (status, _) = assert_documented(&doc, &op, go(fits).await).await;
        assert_eq!(status, 200, "{name} at the body limit");
    }
    server.shutdown().await.unwrap();
}

/// Asserts a documented error answer with `status` and `code`.
async fn expect_error(
    doc: &Value,
    op: &Op,
    resp: reqwest::Response,
    (status, code, what): (u16, &str, String),
) {
    let (got, v) = assert_documented(doc, op, resp).await;
    assert_eq!((got, &v["error"]), (status, &json!(code)), "{what}: {v}");
}

#[tokio::test]
async fn a_broker_outage_gives_documented_statuses() {
    let broker: Arc<dyn Broker> = Arc::new(MemoryBroker::default());
    let presence: Arc<dyn PresenceStore> = Arc::new(MemoryPresenceStore::new());
    let server = ImServer::start_with(support::config(), broker.clone(), presence)
        .await
        .unwrap();
    let base = base(&server);
    let doc = fetch_doc(&base).await;
    let http = reqwest::Client::new();
    broker.shutdown().await.unwrap();
    // Operations that publish to (or subscribe on) the broker; the others only read the
    // presence store, which is still up (`clearChannel` of a channel with no member has
    // nothing to publish).
    let publishing = [
        "sendMessage",
        "sendMessages",
        "kickClient",
        "joinChannel",
        "leaveChannel",
        "leaveChannels",
        "sendChannelMessage",
        "broadcast",
        "events",
        "readyz",
        "adminKick",
        "adminEvents",
    ];
    for op in operations(&doc) {
        let name = op.name();
        let resp = call(&doc, &http, &base, &op).await;
        let (status, v) = assert_documented(&doc, &op, resp).await;
        if publishing.contains(&op.id()) {
            let code = if op.id() == "readyz" {
                "broker_unavailable"
            } else {
                "unavailable"
            };
            assert_eq!((status, &v["error"]), (503, &json!(code)), "{name}: {v}");
        } else {
            assert_eq!(status, op.success(), "{name}: {v}");
        }
    }
    let _ = server.shutdown().await;
}

/// Finds the operation `method path` of the document.
fn op_of(doc: &Value, method: &str, path: &str) -> Op {
    operations(doc)
        .into_iter()
        .find(|o| o.method == method && o.path == path)
        .unwrap_or_else(|| panic!("{method} {path} is not documented"))
}

/// Calls `method url` with the key and checks the answer against the documented `op`.
async fn documented_call(
    doc: &Value,
    http: &reqwest::Client,
    op: &Op,
    url: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let body = body.map(|b| serde_json::to_vec(&b).unwrap());
    let resp = send(http, &op.method, url, body, Some(KEY)).await;
    assert_documented(doc, op, resp).await
}

#[tokio::test]
async fn documented_edge_cases_hold() {
    let server = start(|_| {}).await;
    let base = base(&server);
    let doc = fetch_doc(&base).await;
    let http = reqwest::Client::new();
    let api = format!("{base}/api/v1");
    let client_info = op_of(&doc, "GET", "/api/v1/clients/{id}");
    let online = op_of(&doc, "GET", "/api/v1/clients/online");
    let kick = op_of(&doc, "POST", "/api/v1/clients/{id}/kick");
    let channel = op_of(&doc, "GET", "/api/v1/channels/{name}");
    let join = op_of(&doc, "POST", "/api/v1/channels/{name}/members");
    let leave = op_of(&doc, "DELETE", "/api/v1/channels/{name}/members/{id}");
    let events = op_of(&doc, "GET", "/api/v1/events");
    let clear = op_of(&doc, "DELETE", "/api/v1/channels/{name}/members");
    let leave_many = op_of(&doc, "POST", "/api/v1/clients/{id}/channels/leave");

    // Unknown client: 200, offline, nothing.
    let (s, v) = documented_call(
        &doc,
        &http,
        &client_info,
        &format!("{api}/clients/nobody"),
        None,
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(
        v,
        json!({"client_id": "nobody", "online": false, "connections": 0, "channels": []})
    );
    // Unknown channel: 200, no members.
    let (s, v) =
        documented_call(&doc, &http, &channel, &format!("{api}/channels/void"), None).await;
    assert_eq!(s, 200);
    assert_eq!(v, json!({"name": "void", "members": [], "online": 0}));
    // Kicking an unknown client: 200, kicked 0.
    let (s, v) = documented_call(
        &doc,
        &http,
        &kick,
        &format!("{api}/clients/nobody/kick"),
        None,
    )
    .await;
    assert_eq!((s, v), (200, json!({"kicked": 0})));
    // Leaving a channel one is not in: 200.
    let (s, _) = documented_call(
        &doc,
        &http,
        &leave,
        &format!("{api}/channels/void/members/nobody"),
        None,
    )
    .await;
    assert_eq!(s, 200);
    // Clearing an unknown channel: 200, removed 0; leaving channels one is not in: 200.
    let (s, v) = documented_call(
        &doc,
        &http,
        &clear,
        &format!("{api}/channels/void/members"),
        None,
    )
    .await;
    assert_eq!((s, v), (200, json!({"channel": "void", "removed": 0})));
    let (s, v) = documented_call(
        &doc,
        &http,
        &leave_many,
        &format!("{api}/clients/nobody/channels/leave"),
        Some(json!({"channels": ["void", "void"]})),
    )
    .await;
    assert_eq!(
        (s, v),
        (
            200,
            json!({"client_id": "nobody", "left": ["void", "void"]})
        )
    );

    // A client literally named "online": the fixed route wins; percent-encoding reaches it.
    let (s, _) = documented_call(
        &doc,
        &http,
        &join,
        &format!("{api}/channels/room/members"),
        Some(json!({"client_ids": ["online"]})),
    )
    .await;
    assert_eq!(s, 200);
    let (s, v) =
        documented_call(&doc, &http, &online, &format!("{api}/clients/online"), None).await;
    assert_eq!((s, v), (200, json!({"clients": []})));
    let (s, v) = documented_call(
        &doc,
        &http,
        &client_info,
        &format!("{api}/clients/onlin%65"),
        None,
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(v["client_id"], "online");
    assert_eq!(v["channels"], json!(["room"]));
    // Percent-encoded ids are decoded: a `/` in an id.
    let (s, v) = documented_call(
        &doc,
        &http,
        &client_info,
        &format!("{api}/clients/a%2Fb"),
        None,
    )
    .await;
    assert_eq!((s, &v["client_id"]), (200, &json!("a/b")));

    // Bad ids in paths: 400 invalid_id / invalid_path.
    let long = "x".repeat(129);
    for (url, code) in [
        (format!("{api}/clients/{long}"), "invalid_id"),
        (format!("{api}/clients/a%01b"), "invalid_id"),
        (format!("{api}/clients/%FF"), "invalid_path"),
    ] {
        let (s, v) = documented_call(&doc, &http, &client_info, &url, None).await;
        assert_eq!((s, &v["error"]), (400, &json!(code)), "{url}: {v}");
    }
    let (s, v) = documented_call(
        &doc,
        &http,
        &leave,
        &format!("{api}/channels/room/members/a%01b"),
        None,
    )
    .await;
    assert_eq!((s, &v["error"]), (400, &json!("invalid_id")), "{v}");

    // ?group=: empty is 422; a group is a stream; given twice, a JSON 400.
    let (s, v) = documented_call(&doc, &http, &events, &format!("{api}/events?group="), None).await;
    assert_eq!((s, &v["error"]), (422, &json!("invalid_request")), "{v}");
    let (s, _) = documented_call(
        &doc,
        &http,
        &events,
        &format!("{api}/events?group=workers"),
        None,
    )
    .await;
    assert_eq!(s, 200);
    let (s, v) = documented_call(
        &doc,
        &http,
        &events,
        &format!("{api}/events?group=a&group=b"),
        None,
    )
    .await;
    assert_eq!((s, &v["error"]), (400, &json!("invalid_query")), "{v}");

    // As the document's description says, unknown routes and methods get JSON errors too.
    for (method, url, status, code) in [
        ("GET", format!("{api}/nope"), 404, "not_found"),
        ("PUT", format!("{api}/connect"), 405, "method_not_allowed"),
        (
            "POST",
            format!("{api}/clients/online"),
            405,
            "method_not_allowed",
        ),
    ] {
        let resp = send(&http, method, &url, None, Some(KEY)).await;
        assert_eq!(resp.status(), status, "{method} {url}");
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["error"], code, "{method} {url}: {v}");
    }

    server.shutdown().await.unwrap();
}

/// The next Server-Sent Event (`event`, `data`) on `stream`, skipping comments.
async fn next_sse<S, B>(stream: &mut S, buf: &mut String) -> (String, String)
where
    S: futures_util::Stream<Item = reqwest::Result<B>> + Unpin,
    B: AsRef<[u8]>,
{
    tokio::time::timeout(WAIT, async {
        loop {
            if let Some(end) = buf.find("\n\n") {
                let block: String = buf.drain(..end + 2).collect();
                let (mut event, mut data) = (String::from("message"), String::new());
                for line in block.lines() {
                    if let Some(e) = line.strip_prefix("event:") {
                        event = e.trim().to_owned();
                    } else if let Some(d) = line.strip_prefix("data:") {
                        data.push_str(d.strip_prefix(' ').unwrap_or(d));
                    }
                }
                if !data.is_empty() {
                    return (event, data);
                }
                continue;
            }
            let chunk = stream.next().await.expect("stream open").unwrap();
            buf.push_str(std::str::from_utf8(chunk.as_ref()).unwrap());
        }
    })
    .await
    .expect("an event within the timeout")
}

#[tokio::test]
async fn sse_events_and_connect_urls_match_the_documented_schemas() {
    let server = start(|_| {}).await;
    let base = base(&server);
    let doc = fetch_doc(&base).await;
    let http = reqwest::Client::new();
    let events = op_of(&doc, "GET", "/api/v1/events");
    let sse_schemas = &events.op["responses"]["200"]["x-sse-events"];

    let resp = send(
        &http,
        "GET",
        &format!("{base}/api/v1/events"),
        None,
        Some(KEY),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert!(content_type(&resp).starts_with("text/event-stream"));
    let mut stream = resp.bytes_stream();
    let mut buf = String::new();

    let connect = op_of(&doc, "POST", "/api/v1/connect");
    let (s, info) = documented_call(
        &doc,
        &http,
        &connect,
        &format!("{base}/api/v1/connect"),
        Some(json!({"client_id": "alice", "metadata": {"device": "ios"}})),
    )
    .await;
    assert_eq!(s, 200);
    let url = info["url"].as_str().unwrap();
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();

    let (event, data) = next_sse(&mut stream, &mut buf).await;
    let v: Value = serde_json::from_str(&data).unwrap();
    assert_eq!(event, "online");
    assert_valid(&doc, &sse_schemas["online"], &v, "online event");
    assert_valid(
        &doc,
        &json!({"$ref": "#/components/schemas/Event"}),
        &v,
        "online event",
    );
    assert_eq!(v["metadata"], json!({"device": "ios"}));
    assert_eq!(v["first"], true);

    ws.close(None).await.unwrap();
    let (event, data) = next_sse(&mut stream, &mut buf).await;
    let v: Value = serde_json::from_str(&data).unwrap();
    assert_eq!(event, "offline");
    assert_valid(&doc, &sse_schemas["offline"], &v, "offline event");
    assert_valid(
        &doc,
        &json!({"$ref": "#/components/schemas/Event"}),
        &v,
        "offline event",
    );
    assert_eq!(v["last"], true);

    // The connect URL is single use (documented): a second connect is refused with 401.
    let (status, body) = support::refused_status(url).await;
    assert_eq!((status, &body["error"]), (401, &json!("token_reused")));

    drop(stream);
    server.shutdown().await.unwrap();
}

#[test]
fn documented_server_is_the_default_listen_address() {
    // The document's server URL is where a default node listens.
    let doc: Value =
        serde_json::from_str(include_str!("../../server/src/api/openapi.json")).unwrap();
    let c = Config::default();
    assert_eq!(
        doc["servers"][0]["url"],
        format!("http://{}", c.node.listen)
    );
}
