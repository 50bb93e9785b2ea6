//! Checks a Grafana dashboard against what a node exports: every PromQL expression in it (panel
//! targets and the `label_values` of query variables) may only name metric families the node's
//! `/metrics` renders, and only labels those families carry.
//!
//! The expressions are read with a small PromQL lexer, not a full parser: it knows strings,
//! ranges (`[5m]`, `[$__rate_interval]`), label matchers, grouping clauses (`by (le)`),
//! function calls, aggregation operators, numbers and Grafana variables, which is what a
//! dashboard uses. Anything else that reads as a name is taken for a metric, so an unknown
//! construct fails the check rather than slipping through.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

/// Aggregation operators: followed by `by`/`without` or their parameters, never metrics.
const AGGREGATIONS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];

/// Keywords followed by a parenthesised list of label names.
const GROUPING: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// Other keywords and literals.
const KEYWORDS: &[&str] = &[
    "and", "or", "unless", "bool", "offset", "atan2", "inf", "nan", "start", "end",
];

/// One vector selector: a metric name and the label names its matchers use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    pub metric: String,
    pub matchers: Vec<String>,
}

/// What an expression names.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Names {
    pub selectors: Vec<Selector>,
    /// Label names of grouping clauses (`by`, `without`, `on`, ...).
    pub grouping: Vec<String>,
}

fn is_name_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// Reads the metric names, matcher labels and grouping labels of one PromQL expression.
pub fn names_in(expr: &str) -> Result<Names, String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = Names::default();
    let mut i = 0;
    let skip_space = |mut i: usize| {
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        i
    };
    let read_name = |mut i: usize| {
        let start = i;
        while i < chars.len() && is_name_char(chars[i]) {
            i += 1;
        }
        (chars[start..i].iter().collect::<String>(), i)
    };
    let skip_string = |i: usize| -> Result<usize, String> {
        let quote = chars[i];
        let mut j = i + 1;
        while j < chars.len() {
            match chars[j] {
                '\\' if quote != '`' => j += 2,
                c if c == quote => return Ok(j + 1),
                _ => j += 1,
            }
        }
        Err(format!("unterminated string in `{expr}`"))
    };
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '"' || c == '\'' || c == '`' {
            i = skip_string(i)?;
        } else if c == '$' {
            // A Grafana variable: `$node`, `${node}`, `$__rate_interval`.
            i += 1;
            if chars.get(i) == Some(&'{') {
                while i < chars.len() && chars[i] != '}' {
                    i += 1;
                }
                i += 1;
            } else {
                i = read_name(i).1;
            }
        } else if c == '[' {
            let end = chars[i..].iter().position(|&c| c == ']');
            i += end.ok_or_else(|| format!("unterminated range in `{expr}`"))? + 1;
        } else if c == '{' {
            // Matchers without a metric name before them (`{__name__=~"..."}`) are refused:
            // the check could not tell which metric they select.
            return Err(format!("a selector without a metric name in `{expr}`"));
        } else if c.is_ascii_digit() || c == '.' {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if is_name_start(c) {
            let (name, end) = read_name(i);
            let next = skip_space(end);
            i = end;
            if GROUPING.contains(&name.as_str()) {
                if chars.get(next) == Some(&'(') {
                    let close = chars[next..]
                        .iter()
                        .position(|&c| c == ')')
                        .ok_or_else(|| format!("unterminated label list in `{expr}`"))?;
                    let list: String = chars[next + 1..next + close].iter().collect();
                    names.grouping.extend(
                        list.split(',')
                            .map(str::trim)
                            .filter(|l| !l.is_empty())
                            .map(str::to_owned),
                    );
                    i = next + close + 1;
                }
            } else if KEYWORDS.contains(&name.as_str()) || AGGREGATIONS.contains(&name.as_str()) {
                // Operators and literals.
            } else if chars.get(next) == Some(&'(') {
                // A function call.
            } else {
                let mut selector = Selector {
                    metric: name,
                    matchers: Vec::new(),
                };
                if chars.get(end) == Some(&'{') {
                    i = read_matchers(&chars, end, expr, &mut selector.matchers)?;
                }
                names.selectors.push(selector);
            }
        } else {
            i += 1;
        }
    }
    Ok(names)
}

/// Reads the label names of the matcher block opening at `open`; returns the index past it.
fn read_matchers(
    chars: &[char],
    open: usize,
    expr: &str,
    labels: &mut Vec<String>,
) -> Result<usize, String> {
    let mut i = open + 1;
    loop {
        while i < chars.len() && (chars[i].is_whitespace() || chars[i] == ',') {
            i += 1;
        }
        match chars.get(i) {
            None => return Err(format!("unterminated matchers in `{expr}`")),
            Some('}') => return Ok(i + 1),
            Some(&c) if is_name_start(c) => {}
            Some(c) => return Err(format!("unexpected `{c}` in the matchers of `{expr}`")),
        }
        let start = i;
        while i < chars.len() && is_name_char(chars[i]) {
            i += 1;
        }
        labels.push(chars[start..i].iter().collect());
        // The operator, then the quoted value.
        while i < chars.len() && chars[i] != '"' && chars[i] != '\'' && chars[i] != '`' {
            if chars[i] == '}' {
                return Err(format!("a matcher without a value in `{expr}`"));
            }
            i += 1;
        }
        let quote = *chars
            .get(i)
            .ok_or_else(|| format!("unterminated matchers in `{expr}`"))?;
        i += 1;
        while i < chars.len() && chars[i] != quote {
            if chars[i] == '\\' {
                i += 1;
            }
            i += 1;
        }
        i += 1;
    }
}

/// A metric family a node exports: its type and the label names its samples carry.
#[derive(Debug, Default)]
pub struct Family {
    pub kind: String,
    pub labels: BTreeSet<String>,
}

/// The families of a Prometheus text exposition, by name.
pub fn families(exposition: &str) -> BTreeMap<String, Family> {
    let mut out: BTreeMap<String, Family> = BTreeMap::new();
    for line in exposition.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            out.entry(name.to_owned()).or_default().kind = kind.to_owned();
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let sample = &line[..name_end];
        let family = out
            .keys()
            .rev()
            .find(|f| {
                sample == f.as_str()
                    || ["_bucket", "_sum", "_count"]
                        .iter()
                        .any(|s| sample.strip_suffix(s) == Some(f.as_str()))
            })
            .cloned()
            .unwrap_or_else(|| sample.to_owned());
        let labels = &mut out.entry(family).or_default().labels;
        if line[name_end..].starts_with('{') {
            let mut found = Vec::new();
            let chars: Vec<char> = line.chars().collect();
            let open = line[..name_end].chars().count();
            if read_matchers(&chars, open, line, &mut found).is_ok() {
                labels.extend(found);
            }
        }
    }
    out
}

/// Every PromQL expression of a dashboard: panel targets (rows' panels too) and query
/// variables, with where it was found.
pub fn expressions(dashboard: &Value) -> Vec<(String, String)> {
    fn walk(v: &Value, at: &str, out: &mut Vec<(String, String)>) {
        match v {
            Value::Object(map) => {
                let here = map
                    .get("title")
                    .and_then(Value::as_str)
                    .map_or_else(|| at.to_owned(), |t| format!("panel `{t}`"));
                if let Some(Value::String(expr)) = map.get("expr") {
                    out.push((here.clone(), expr.clone()));
                }
                for (k, v) in map {
                    if k != "templating" {
                        walk(v, &here, out);
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|v| walk(v, at, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(dashboard, "dashboard", &mut out);
    let variables = dashboard["templating"]["list"].as_array();
    for var in variables.into_iter().flatten() {
        if var["type"] != "query" {
            continue;
        }
        let query = match &var["query"] {
            Value::String(q) => q.clone(),
            q => q["query"].as_str().unwrap_or_default().to_owned(),
        };
        out.push((format!("variable `{}`", var["name"]), query.clone()));
        // What the editor shows; kept in step with the query.
        if let Some(shown) = var["definition"].as_str().filter(|d| *d != query) {
            out.push((
                format!("variable `{}` definition", var["name"]),
                shown.to_owned(),
            ));
        }
    }
    out
}

/// Checks one expression (a `label_values(selector, label)` variable query included) against
/// `exported`; returns what is wrong with it.
pub fn check_expression(expr: &str, exported: &BTreeMap<String, Family>) -> Vec<String> {
    let mut problems = Vec::new();
    let (expr, extra_label) = match expr
        .trim()
        .strip_prefix("label_values(")
        .and_then(|r| r.strip_suffix(')'))
    {
        Some(args) => match args.rsplit_once(',') {
            Some((selector, label)) => (selector.trim(), Some(label.trim().to_owned())),
            None => return vec![format!("`{expr}`: label_values needs a metric and a label")],
        },
        None => (expr, None),
    };
    let names = match names_in(expr) {
        Ok(n) => n,
        Err(e) => return vec![e],
    };
    if names.selectors.is_empty() {
        problems.push(format!("`{expr}` names no metric"));
    }
    let mut labels = BTreeSet::new();
    for s in &names.selectors {
        let family = match exported.get(&s.metric) {
            Some(f) if f.kind == "histogram" => {
                problems.push(format!(
                    "`{}` is a histogram: query its _bucket, _sum or _count",
                    s.metric
                ));
                continue;
            }
            Some(f) => Some(f),
            None => ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
                let base = s.metric.strip_suffix(suffix)?;
                exported.get(base).filter(|f| f.kind == "histogram")
            }),
        };
        let Some(family) = family else {
            problems.push(format!("`{}` is not exported by the node", s.metric));
            continue;
        };
        labels.extend(family.labels.iter().cloned());
        // Panels follow the node variable; the variable's own query lists every node.
        if extra_label.is_none() && !s.matchers.iter().any(|m| m == "node") {
            problems.push(format!(
                "`{}` is not filtered by the node variable",
                s.metric
            ));
        }
        for m in &s.matchers {
            if !family.labels.contains(m) {
                problems.push(format!("`{}` has no label `{m}`", s.metric));
            }
        }
    }
    for l in names.grouping.iter().chain(&extra_label) {
        if !labels.contains(l) {
            problems.push(format!("no metric of `{expr}` has the label `{l}`"));
        }
    }
    problems
}

/// Every problem of `dashboard` against `exported`, each with where it was found.
pub fn check(dashboard: &Value, exported: &BTreeMap<String, Family>) -> Vec<String> {
    let exprs = expressions(dashboard);
    let mut problems: Vec<String> = exprs
        .iter()
        .flat_map(|(at, expr)| {
            check_expression(expr, exported)
                .into_iter()
                .map(move |p| format!("{at}: {p}"))
        })
        .collect();
    if exprs.is_empty() {
        problems.push("the dashboard has no query".into());
    }
    problems
}
