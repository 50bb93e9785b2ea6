//! Runs every benchmark scenario at a tiny size so the tool cannot rot unnoticed. This checks
//! that the scenarios run and write their reports, never how fast anything is.

#![allow(clippy::unwrap_used)]

use std::process::Command;

#[test]
fn every_scenario_runs_tiny_and_writes_reports() {
    let out = std::env::temp_dir().join(format!("impush-bench-smoke-{}", std::process::id()));
    let status = Command::new(env!("CARGO_BIN_EXE_impush-bench"))
        .args(["smoke", "--out"])
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    let mut expected = vec![
        "idle-20",
        "paced-20x10",
        "p2p-memory-1n",
        "p2p-memory-1n-1000rps",
        "batch-200x50-at-2000",
        "fanout-memory-1n-20",
        "inbox-memory-200",
        "inbox-disk-200",
    ];
    let clusters = [
        ("IMPUSH_TEST_REDIS_URL", "redis"),
        ("IMPUSH_TEST_RABBITMQ_URL", "rabbitmq"),
        ("IMPUSH_TEST_KAFKA_URL", "kafka"),
    ];
    let mut names = Vec::new();
    for (var, broker) in clusters {
        if std::env::var_os(var).is_some() {
            names.push(format!("idle-20-{broker}x2"));
            names.push(format!("p2p-{broker}-2n"));
            names.push(format!("fanout-{broker}-2n-20"));
            if broker == "redis" {
                names.push("inbox-redis-200".to_owned());
                names.push("rolling-redis-30".to_owned());
            }
        } else {
            assert!(
                std::env::var_os("IMPUSH_REQUIRE_BROKERS").is_none(),
                "{var} must be set"
            );
        }
    }
    expected.extend(names.iter().map(String::as_str));
    for name in expected {
        let text = std::fs::read_to_string(out.join(format!("{name}.json")))
            .unwrap_or_else(|e| panic!("{name}.json: {e}"));
        let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(doc["scenario"], name);
        assert!(
            doc["machine"]["cores"].as_u64().unwrap() > 0,
            "{name}: no machine info"
        );
        assert!(
            !doc["runs"].as_array().unwrap().is_empty(),
            "{name}: no runs"
        );
        assert!(
            !doc["targets"].as_array().unwrap().is_empty(),
            "{name}: no targets"
        );
        if name.starts_with("idle") {
            assert_eq!(doc["runs"][0]["sockets_connected"], 20, "{name}: {doc}");
            assert_eq!(
                doc["runs"][0]["sockets_held_after_idle"], 20,
                "{name}: {doc}"
            );
        } else if name.starts_with("rolling") {
            // Nothing lost across the restarts: no direct message, and no channel frame that
            // the client was not told it could not recover.
            for key in [
                "direct_lost (all runs)",
                "channel_frames_lost_unannounced (all runs)",
            ] {
                assert_eq!(
                    doc["summary"][key].as_u64(),
                    Some(0),
                    "{name}: {key}: {doc}"
                );
            }
        } else {
            // Nothing lost: every message sent was delivered.
            let lost = doc["summary"]["lost"]
                .as_u64()
                .or(doc["summary"]["lost_frames"].as_u64());
            assert_eq!(lost, Some(0), "{name}: {}", doc["summary"]);
            assert!(out.join(format!("{name}.svg")).exists(), "{name}: no chart");
        }
    }
    std::fs::remove_dir_all(&out).ok();
}
