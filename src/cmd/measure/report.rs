//! What a measurement found, and how it is shown: the [`Report`], its table and JSON, its
//! exit code, and the `--expect` weights with the chi-square test against them.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context};
use serde_json::json;

use crate::cmd::stats::{chi_square, ChiSquare};

/// What one measurement found.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub url: String,
    /// Requests attempted: every response plus every transport failure.
    pub requests: u64,
    /// Responses with a 2xx status.
    pub ok: u64,
    /// Responses (any status) by class: the header's value, `(none)` without it.
    pub counts: BTreeMap<String, u64>,
    /// Failures by kind: `status 503` (also counted in `counts`), and the transport
    /// failures `connect`, `tls`, `alpn`, `timeout`, `io`, `http`.
    pub errors: BTreeMap<String, u64>,
    pub elapsed: Duration,
    /// Latency of the responses: p50, p90, p99, p99.9 in milliseconds.
    pub latency_ms: [f64; 4],
    /// Expected relative weights by class, from `--expect`, in the order given.
    pub expected: Option<Vec<(String, f64)>>,
    /// The goodness-of-fit test, when something was expected and something answered.
    pub chi_square: Option<ChiSquare>,
    pub alpha: f64,
    /// `chi_square.p_value < alpha`; never true without `--expect`.
    pub rejected: bool,
    /// Wall-clock start of the run, so `failures` can be lined up with outside events.
    pub started: Option<SystemTime>,
    /// The first failures (every kind of `errors`), by send time: (ms after `started`,
    /// kind), oldest first.
    pub failures: Vec<(u32, String)>,
    /// Failures beyond those kept in `failures`.
    pub failures_dropped: u64,
}

impl Report {
    /// Responses received, whatever their status.
    pub fn responses(&self) -> u64 {
        self.counts.values().sum()
    }

    /// Responses per second over the whole run.
    pub fn rps(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.responses() as f64 / secs
        } else {
            0.0
        }
    }

    /// The process exit code for this report: 2 when no request succeeded (nothing was
    /// measured, so no verdict), else 1 when `--expect` was rejected, else 0.
    pub fn exit_code(&self) -> u8 {
        if self.ok == 0 {
            2
        } else if self.rejected {
            1
        } else {
            0
        }
    }

    /// Classes in display order, expected ones first (in `--expect` order), then any
    /// others seen: (name, expected share in 0..=1, responses).
    fn classes(&self) -> Vec<(String, Option<f64>, u64)> {
        let mut out = Vec::new();
        if let Some(expected) = &self.expected {
            let total: f64 = expected.iter().map(|(_, w)| w).sum();
            for (name, w) in expected {
                let share = if total > 0.0 { w / total } else { 0.0 };
                out.push((
                    name.clone(),
                    Some(share),
                    self.counts.get(name).copied().unwrap_or(0),
                ));
            }
        }
        for (name, n) in &self.counts {
            if !out.iter().any(|(c, _, _)| c == name) {
                // seen but not expected: configured share 0 (when anything was expected)
                out.push((name.clone(), self.expected.as_ref().map(|_| 0.0), *n));
            }
        }
        out
    }

    /// The human-readable report.
    pub fn table(&self) -> String {
        let total = self.responses();
        let mut out = format!(
            "{} responses ({} 2xx) to {} requests in {:.2} s ({:.0} req/s) from {}\n\n",
            total,
            self.ok,
            self.requests,
            self.elapsed.as_secs_f64(),
            self.rps(),
            self.url
        );
        out.push_str(&format!(
            "{:<24} {:>11} {:>10} {:>11} {:>10}\n",
            "backend", "configured", "requests", "observed", "error"
        ));
        for (name, share, n) in self.classes() {
            let observed = percent(n, total);
            // signed, so the direction of a skew is visible; JSON carries the absolute value
            let (configured, error) = match share {
                Some(s) => (
                    format!("{:.2}%", 100.0 * s),
                    format!("{:+.2} pp", observed - 100.0 * s),
                ),
                None => ("-".into(), "-".into()),
            };
            out.push_str(&format!(
                "{name:<24} {configured:>11} {n:>10} {observed:>10.2}% {error:>10}\n"
            ));
        }
        match &self.chi_square {
            Some(c) => out.push_str(&format!(
                "\nchi-square {:.3}, {} degree(s) of freedom, p-value {:.4}: {} at alpha {}\n",
                c.statistic,
                c.degrees_of_freedom,
                c.p_value,
                if self.rejected {
                    "REJECTED, the split differs from the expected weights"
                } else {
                    "consistent with the expected weights"
                },
                self.alpha
            )),
            None if self.expected.is_some() => {
                out.push_str("\nno responses, so no verdict on the expected weights\n")
            }
            None => out.push_str("\nnothing expected (--expect), so no verdict\n"),
        }
        let [p50, p90, p99, p999] = self.latency_ms;
        out.push_str(&format!(
            "latency ms: p50 {p50:.2}  p90 {p90:.2}  p99 {p99:.2}  p99.9 {p999:.2}\n"
        ));
        if self.errors.is_empty() {
            out.push_str("errors: none\n");
        } else {
            let list: Vec<String> = self
                .errors
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect();
            out.push_str(&format!("errors: {}\n", list.join(", ")));
        }
        out
    }

    /// The machine-readable report (`--json`).
    pub fn to_json(&self) -> serde_json::Value {
        let total = self.responses();
        let classes: Vec<_> = self
            .classes()
            .into_iter()
            .map(|(name, share, n)| {
                let observed = percent(n, total) / 100.0;
                json!({
                    "name": name,
                    "expected_share": share,
                    "observed": n,
                    "observed_share": observed,
                    "abs_error_pp": share.map(|s| (100.0 * (observed - s)).abs()),
                })
            })
            .collect();
        let [p50, p90, p99, p999] = self.latency_ms;
        json!({
            "url": self.url,
            "requests": self.requests,
            "responses": total,
            "ok": self.ok,
            "errors": self.errors,
            "duration_s": self.elapsed.as_secs_f64(),
            "rps": self.rps(),
            "classes": classes,
            "chi_square": self.chi_square.map(|c| json!({
                "statistic": finite_or_null(c.statistic),
                "dof": c.degrees_of_freedom,
                "p_value": c.p_value,
            })),
            "alpha": self.alpha,
            "rejected": self.rejected,
            "latency_ms": {"p50": p50, "p90": p90, "p99": p99, "p999": p999},
            "started_unix_ms": self.started.and_then(|t| {
                let ms = t.duration_since(SystemTime::UNIX_EPOCH).ok()?.as_millis();
                u64::try_from(ms).ok()
            }),
            "failures": self
                .failures
                .iter()
                .map(|(t, kind)| json!({"t_ms": t, "kind": kind}))
                .collect::<Vec<_>>(),
            "failures_dropped": self.failures_dropped,
        })
    }
}

/// `100 * n / total`, 0 for an empty total.
fn percent(n: u64, total: u64) -> f64 {
    if total == 0 {
        0.0
    } else {
        100.0 * n as f64 / total as f64
    }
}

/// JSON has no infinity (the statistic is infinite when a weight-0 class saw traffic);
/// serde_json would silently write `null` anyway, this makes it explicit.
fn finite_or_null(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}

/// `v1=90,v2=10` -> [("v1", 90.0), ("v2", 10.0)]. Names must be distinct and non-empty,
/// weights non-negative, at least one positive.
pub fn parse_expect(text: &str) -> anyhow::Result<Vec<(String, f64)>> {
    let mut out: Vec<(String, f64)> = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, weight) = part
            .split_once('=')
            .with_context(|| format!("--expect: {part:?} is not NAME=WEIGHT"))?;
        let name = name.trim();
        if name.is_empty() {
            bail!("--expect: {part:?} has no name");
        }
        let weight: f64 = weight
            .trim()
            .parse()
            .with_context(|| format!("--expect: weight of {name:?} is not a number"))?;
        if !(weight >= 0.0 && weight.is_finite()) {
            bail!("--expect: weight of {name:?} must be a non-negative number");
        }
        if out.iter().any(|(n, _)| n == name) {
            bail!("--expect: {name:?} is given twice");
        }
        out.push((name.to_string(), weight));
    }
    if out.iter().all(|(_, w)| *w == 0.0) {
        bail!("--expect needs at least one positive weight, e.g. v1=90,v2=10");
    }
    Ok(out)
}

/// Chi-square of the observed classes against the expected weights. Classes nobody
/// expected get weight 0, so any traffic to them gives p = 0.
pub(super) fn test_split(expected: &[(String, f64)], counts: &BTreeMap<String, u64>) -> ChiSquare {
    let mut observed: Vec<u64> = expected
        .iter()
        .map(|(n, _)| counts.get(n).copied().unwrap_or(0))
        .collect();
    let mut weights: Vec<f64> = expected.iter().map(|(_, w)| *w).collect();
    for (name, n) in counts {
        if !expected.iter().any(|(e, _)| e == name) {
            observed.push(*n);
            weights.push(0.0);
        }
    }
    chi_square(&observed, &weights)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::measure::NO_CLASS;

    #[test]
    fn expectations_parse() {
        assert_eq!(
            parse_expect("v1=90, v2=10").unwrap(),
            [("v1".to_string(), 90.0), ("v2".to_string(), 10.0)]
        );
        assert!(parse_expect("v1").is_err());
        assert!(parse_expect("v1=x").is_err());
        assert!(parse_expect("v1=0").is_err());
        assert!(parse_expect("v1=-1,v2=3").is_err());
        assert!(parse_expect("v1=NaN").is_err());
        assert!(parse_expect("=3").is_err());
        assert!(parse_expect("v1=1,v1=2").is_err());
        assert!(parse_expect("").is_err());
    }

    #[test]
    fn exit_codes() {
        let mut r = Report::default();
        assert_eq!(r.exit_code(), 2);
        // responses, but none successful: still nothing measured
        r.counts.insert(NO_CLASS.into(), 10);
        assert_eq!(r.exit_code(), 2);
        r.ok = 10;
        assert_eq!(r.exit_code(), 0);
        r.rejected = true;
        assert_eq!(r.exit_code(), 1);
    }

    #[test]
    fn unexpected_classes_get_weight_zero() {
        let exp = parse_expect("a=1,b=1").unwrap();
        let counts: BTreeMap<String, u64> = [("a".into(), 50), ("b".into(), 50)].into();
        assert_eq!(test_split(&exp, &counts).p_value, 1.0);
        let mut counts = counts;
        counts.insert("c".into(), 1);
        assert_eq!(test_split(&exp, &counts).p_value, 0.0);
    }

    #[test]
    fn table_and_json_show_every_class() {
        let r = Report {
            url: "http://x/".into(),
            requests: 101,
            ok: 99,
            counts: [("v1".into(), 90), ("v2".into(), 9), (NO_CLASS.into(), 1)].into(),
            errors: [("status 503".into(), 1), ("connect".into(), 1)].into(),
            elapsed: Duration::from_secs(1),
            expected: Some(parse_expect("v1=90,v2=10").unwrap()),
            chi_square: Some(ChiSquare {
                statistic: f64::INFINITY,
                degrees_of_freedom: 1,
                p_value: 0.0,
            }),
            alpha: 0.001,
            rejected: true,
            ..Report::default()
        };
        let table = r.table();
        assert!(
            table.contains("REJECTED") && table.contains("(none)"),
            "{table}"
        );
        assert!(table.contains("connect: 1, status 503: 1"), "{table}");
        let j = r.to_json();
        assert_eq!(j["requests"], 101);
        assert_eq!(j["ok"], 99);
        assert_eq!(j["classes"][0]["name"], "v1");
        assert_eq!(j["classes"][0]["expected_share"], 0.9);
        assert_eq!(j["classes"][2]["name"], NO_CLASS);
        assert_eq!(j["classes"][2]["expected_share"], 0.0);
        assert!(j["chi_square"]["statistic"].is_null());
        assert_eq!(j["errors"]["status 503"], 1);
        assert_eq!(j["rejected"], true);
    }
}
