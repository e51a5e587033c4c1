//! Checking alerts against the violations `flowaudit generate` planted (`planted.json`): every
//! planted violation must be found by its rule, and nothing else may be raised at high or
//! critical severity. Used by the demo and the tests.
use serde_json::Value;

use crate::alerts::{value_text, Alert};

/// The rule that must find a planted violation of `kind`.
pub fn rule_for_kind(kind: &str) -> &str {
    match kind {
        "export_with_expired_approval" => "export_without_approval",
        "exporter_silent" => "telemetry_silent",
        "sequence_gap" => "flow_sequence_gap",
        k => k,
    }
}

/// What the alerts found of the planted violations.
#[derive(Debug, Default)]
pub struct Coverage {
    /// (planted id, kind, fingerprint of the alert that found it)
    pub found: Vec<(String, String, String)>,
    /// (planted id, kind) found by no alert.
    pub missed: Vec<(String, String)>,
    /// High or critical alerts that match no planted violation.
    pub unexpected_high: Vec<Alert>,
}

impl Coverage {
    pub fn complete(&self) -> bool {
        self.missed.is_empty() && self.unexpected_high.is_empty()
    }
}

/// Does `alert` describe the planted violation `p`? Its rule must be the kind's rule, at least
/// one of the planted entity values must be in the alert's entity, and every planted value the
/// alert carries (in its entity or evidence rows) must agree.
fn matches(alert: &Alert, p: &Value) -> bool {
    if alert.rule_id != rule_for_kind(p["kind"].as_str().unwrap_or_default()) {
        return false;
    }
    let Some(entity) = p["entity"].as_object() else {
        return false;
    };
    let mut hit = false;
    for (k, v) in entity {
        let want = value_text(v);
        if let Some(got) = alert.entity.get(k) {
            if value_text(got) != want {
                return false;
            }
            hit = true;
        } else if alert.evidence.iter().any(|row| row.contains_key(k))
            && !alert
                .evidence
                .iter()
                .any(|row| row.get(k).map(value_text) == Some(want.clone()))
        {
            return false;
        }
    }
    hit
}

/// Compare `alerts` with the `violations` of a planted.json document.
pub fn check(planted: &Value, alerts: &[Alert]) -> Coverage {
    let mut c = Coverage::default();
    let violations = planted["violations"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for p in &violations {
        let id = p["id"].as_str().unwrap_or_default().to_string();
        let kind = p["kind"].as_str().unwrap_or_default().to_string();
        match alerts.iter().find(|a| matches(a, p)) {
            Some(a) => c.found.push((id, kind, a.fingerprint.clone())),
            None => c.missed.push((id, kind)),
        }
    }
    for a in alerts {
        if matches!(a.severity.as_str(), "high" | "critical")
            && !violations.iter().any(|p| matches(a, p))
        {
            c.unexpected_high.push(a.clone());
        }
    }
    c
}
