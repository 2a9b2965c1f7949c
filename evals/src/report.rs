//! What a run prints and writes: a results table (one row per case, one column per variant,
//! side by side), a summary line per variant, and the `--output` files: JSON Lines (one line
//! per attempt) or JUnit XML (one test suite per suite × variant, one test case per case).

use std::fmt::Write as _;
use std::path::Path;

use comfy_table::{Cell, Color, ContentArrangement, Table, presets::UTF8_FULL_CONDENSED};
use serde_json::json;

use crate::runner::SuiteRun;

/// The results table of one suite.
pub fn table(run: &SuiteRun, color: bool) -> String {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic);
    if !color {
        t.force_no_tty();
    }
    let mut header = vec![Cell::new("case")];
    for v in &run.variants {
        header.push(Cell::new(format!("variant {}", v.variant)));
    }
    header.push(Cell::new("why (first failure)"));
    t.set_header(header);
    let n = run.variants.first().map_or(0, |v| v.cases.len());
    for i in 0..n {
        let name = &run.variants[0].cases[i].case;
        let mut row = vec![Cell::new(name)];
        let mut why = String::new();
        for v in &run.variants {
            let c = &v.cases[i];
            let (mark, colour) = if c.skipped {
                ("skipped".to_string(), Color::Yellow)
            } else if c.pass {
                (format!("✔ {}/{}", c.passed, c.attempts), Color::Green)
            } else {
                (format!("✘ {}/{}", c.passed, c.attempts), Color::Red)
            };
            let text = if c.skipped {
                mark
            } else {
                format!("{mark} {:.0} ms", c.mean_latency_ms)
            };
            let mut cell = Cell::new(text);
            if color {
                cell = cell.fg(colour);
            }
            row.push(cell);
            if why.is_empty() && (!c.pass || c.skipped) {
                why = c.failures.first().cloned().unwrap_or_default();
                if run.variants.len() > 1 {
                    why = format!("[{}] {why}", v.variant);
                }
            }
        }
        let short: String = why.chars().take(120).collect();
        row.push(Cell::new(short));
        t.add_row(row);
    }
    let mut out = format!("{} ({})\n{t}\n", run.suite, run.path);
    for v in &run.variants {
        let _ = writeln!(
            out,
            "variant {}: {}/{} cases passed ({:.0}%, threshold {:.0}%) — {}{}",
            v.variant,
            v.passed,
            v.counted,
            if v.counted > 0 {
                100.0 * v.passed as f64 / v.counted as f64
            } else {
                0.0
            },
            100.0 * run.threshold,
            if v.pass { "PASS" } else { "FAIL" },
            match (&v.provider, &v.model) {
                (Some(p), Some(m)) => format!(" [{p} {m}; eval_run {}]", v.eval_run),
                _ => format!(" [eval_run {}]", v.eval_run),
            }
        );
    }
    let attempts = run.attempts.iter().filter(|a| a.skipped.is_none()).count();
    let _ = writeln!(
        out,
        "{attempts} attempts in {:.2} s ({:.1} cases/s)",
        run.seconds,
        attempts as f64 / run.seconds.max(1e-9)
    );
    out
}

/// One JSON line per attempt.
pub fn jsonl(runs: &[SuiteRun]) -> String {
    let mut out = String::new();
    for r in runs {
        for a in &r.attempts {
            let line = json!({
                "suite": a.suite, "case": a.case, "line": a.line, "variant": a.variant,
                "attempt": a.attempt, "pass": a.pass, "skipped": a.skipped, "score": a.score,
                "outcome": a.observed.outcome, "output": a.observed.output,
                "citations": a.observed.citations,
                "tools": a.observed.tool_calls.iter().map(|t| json!({"name": t.name, "arguments": t.arguments, "ok": t.ok})).collect::<Vec<_>>(),
                "latency_ms": a.observed.latency_ms, "tokens_in": a.observed.tokens_in,
                "tokens_out": a.observed.tokens_out, "prompt_run": a.observed.run_id,
                "compiled_hash": a.observed.compiled_hash,
                "assertions": a.assertions, "eval_case": a.eval_case, "eval_run": a.eval_run,
            });
            out.push_str(&line.to_string());
            out.push('\n');
        }
    }
    out
}

fn xml(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&apos;"),
            c if (c as u32) < 0x20 && !matches!(c, '\n' | '\t' | '\r') => o.push('?'),
            c => o.push(c),
        }
    }
    o
}

/// JUnit XML: `<testsuites>` of one `<testsuite>` per suite × variant.
pub fn junit(runs: &[SuiteRun]) -> String {
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites>\n");
    for r in runs {
        for v in &r.variants {
            let failures = v.cases.iter().filter(|c| !c.pass && !c.skipped).count();
            let skipped = v.cases.iter().filter(|c| c.skipped).count();
            let time: f64 = v
                .cases
                .iter()
                .map(|c| c.mean_latency_ms * c.attempts as f64)
                .sum::<f64>()
                / 1000.0;
            let _ = writeln!(
                out,
                "  <testsuite name=\"{}.{}\" tests=\"{}\" failures=\"{failures}\" skipped=\"{skipped}\" errors=\"0\" time=\"{time:.3}\" file=\"{}\">",
                xml(&r.suite),
                xml(&v.variant),
                v.cases.len(),
                xml(&r.path)
            );
            for c in &v.cases {
                let _ = write!(
                    out,
                    "    <testcase name=\"{}\" classname=\"{}.{}\" file=\"{}\" line=\"{}\" time=\"{:.3}\"",
                    xml(&c.case),
                    xml(&r.suite),
                    xml(&v.variant),
                    xml(&r.path),
                    c.line,
                    c.mean_latency_ms / 1000.0
                );
                if c.skipped {
                    let _ = writeln!(
                        out,
                        "><skipped message=\"{}\"/></testcase>",
                        xml(&c.failures.join("; "))
                    );
                } else if c.pass {
                    out.push_str("/>\n");
                } else {
                    let _ = writeln!(
                        out,
                        "><failure message=\"{}/{} attempts passed\">{}</failure></testcase>",
                        c.passed,
                        c.attempts,
                        xml(&c.failures.join("\n"))
                    );
                }
            }
            out.push_str("  </testsuite>\n");
        }
    }
    out.push_str("</testsuites>\n");
    out
}

/// Writes `--output` files: `.xml` is JUnit, anything else JSON Lines.
pub fn write(path: &Path, runs: &[SuiteRun]) -> std::io::Result<()> {
    let text = if path.extension().is_some_and(|e| e == "xml") {
        junit(runs)
    } else {
        jsonl(runs)
    };
    std::fs::write(path, text)
}
