//! `logline variants …`: the prompt bandit's state and the operator's explicit decisions about
//! it. `status` folds the whole ledger into the posteriors (and, like a running server, records
//! a guardrail drop that is due); `promote NAME` pins every new conversation to a variant with
//! a signed `prompt_variant_promotion` span, `clear` unpins, `readmit NAME` brings a dropped
//! variant back with fresh guardrail counts. The logic is `kernels::prompt_bandit`.

use std::io::Write;
use std::process::ExitCode;

use anyhow::{Result, bail};
use chrono::Utc;
use clap::Subcommand;
use kernels::prompt_bandit::{self, Bandit, BanditConfig, Status};
use kernels::stage0;
use ledger::store::{self, system_principal};

use super::kernels::StatusFormat;
use crate::chat::PromptLibrary;
use crate::chat::bandit::eligible_variants;
use crate::config::Settings;

#[derive(Subcommand, Debug)]
pub enum VariantsCommand {
    /// One row per variant: eligible, samples, mean reward, posterior, the probability a new
    /// conversation gets it now, and the guardrail's state.
    Status {
        #[arg(long, value_enum, default_value_t = StatusFormat::Table)]
        format: StatusFormat,
    },
    /// Every new conversation gets this variant from now on (a signed promotion span).
    Promote { name: String },
    /// Undo the promotion: the bandit chooses again.
    Clear,
    /// Offer a variant the guardrail dropped again, its failure count started afresh.
    Readmit { name: String },
}

pub async fn run(s: &Settings, what: VariantsCommand) -> Result<ExitCode> {
    let store = s.store.open().await?;
    store::ensure_manifest(store.as_ref()).await?;
    stage0::seed(store.as_ref()).await?;
    let library = PromptLibrary::embedded()?;
    let eligible = eligible_variants(&library);
    let by = s.principal.user_id.as_str();
    let node = system_principal();
    let mut out = std::io::stdout().lock();
    let (draft, what) = match what {
        VariantsCommand::Status { format } => {
            let (_, k) = stage0::inspect_kernel(store.as_ref(), "prompt_bandit").await?;
            let (cfg, refused) = match BanditConfig::from_value(&k.config) {
                Ok(cfg) if k.state == stage0::State::Ready => (cfg, None),
                _ => (BanditConfig::default(), Some(k.reason.clone())),
            };
            let bandit = Bandit::new(store.clone());
            let refreshed = bandit.refresh(&cfg).await?;
            for v in &refreshed.dropped {
                eprintln!("guardrail: dropped variant {v} (recorded)");
            }
            let status = bandit.status(&eligible, &cfg);
            match format {
                StatusFormat::Json => writeln!(
                    out,
                    "{}",
                    serde_json::json!({"variants": status.variants, "promoted": status.promoted, "refused": refused})
                )?,
                StatusFormat::Table => {
                    writeln!(out, "{}", table(&status, &cfg, refused.as_deref()))?
                }
            }
            return Ok(ExitCode::SUCCESS);
        }
        VariantsCommand::Promote { name } => {
            if library.variant(&name).is_err() {
                bail!("no variant `{name}` (known: {})", eligible.join(", "));
            }
            (
                prompt_bandit::promotion_draft(Some(&name), by, Utc::now())?,
                format!("promotion of {name}"),
            )
        }
        VariantsCommand::Clear => (
            prompt_bandit::promotion_draft(None, by, Utc::now())?,
            "promotion cleared:".to_string(),
        ),
        VariantsCommand::Readmit { name } => {
            let bandit = Bandit::new(store.clone());
            bandit.refresh(&BanditConfig::default()).await?;
            if !bandit.learner().arm(&name).dropped {
                bail!("variant `{name}` is not dropped");
            }
            (
                prompt_bandit::readmission_draft(&name, by, Utc::now())?,
                format!("readmission of {name}"),
            )
        }
    };
    for r in store::append(store.as_ref(), &node, vec![draft]).await? {
        let a = r?;
        eprintln!("{what} recorded as span {} (signed by the node)", a.id);
        writeln!(out, "{}", a.id)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The `variants status` table.
fn table(status: &Status, cfg: &BanditConfig, refused: Option<&str>) -> String {
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED);
    t.set_header([
        "variant",
        "eligible",
        "samples",
        "mean reward",
        "posterior",
        "probability",
        "guardrail",
    ]);
    for v in &status.variants {
        let guard = if v.dropped {
            "DROPPED".to_string()
        } else {
            format!("ok ({}/{} failed)", v.recent_failures, v.recent_samples)
        };
        t.add_row([
            v.name.clone(),
            if v.eligible { "yes" } else { "no" }.to_string(),
            v.samples.to_string(),
            v.mean_reward.map_or("-".into(), |m| format!("{m:.3}")),
            format!("Beta({:.1}, {:.1})", v.alpha, v.beta),
            format!("{:.1}%", v.probability * 100.0),
            guard,
        ]);
    }
    let mut lines = vec![t.to_string()];
    lines.push(match &status.promoted {
        Some(p) => format!(
            "promoted: {p} (every new conversation gets it; `logline variants clear` undoes it)"
        ),
        None => "promoted: none (the bandit chooses)".to_string(),
    });
    lines.push(format!(
        "rules: warm-up {} samples per variant, floor {:.1}%, guardrail drops above {:.0}% failures after {} samples",
        cfg.warmup_samples,
        cfg.floor * 100.0,
        cfg.guardrail_failure_rate * 100.0,
        cfg.guardrail_min_samples
    ));
    if let Some(why) = refused {
        lines.push(format!(
            "kernel prompt_bandit is refused by Stage-0 ({why}): conversations get `default`"
        ));
    }
    lines.join("\n")
}
