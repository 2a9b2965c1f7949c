//! Checkpoints and proofs from the command line: `checkpoint export` (the newest signed
//! checkpoint of a tenant, as a signed note), `proof SPAN` (an inclusion proof document),
//! `proof consistency --from N [--to M]`, and `proof verify FILE`, which checks a proof
//! document offline — it opens no store.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use ledger::proof::ProofDoc;
use uuid::Uuid;

use crate::config::Settings;

#[derive(Subcommand, Debug)]
pub enum CheckpointCommand {
    /// Print the newest signed checkpoint of a tenant (the caller's by default) as a C2SP
    /// signed note; keep it somewhere the database's administrators cannot reach.
    Export {
        #[arg(long = "of-tenant")]
        of_tenant: Option<String>,
        /// Write to this file instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ProofArgs {
    #[command(subcommand)]
    what: Option<ProofCommand>,
    /// The span to prove (an inclusion proof in the latest checkpoint of its tenant).
    id: Option<Uuid>,
    /// A version of the span; the latest by default.
    #[arg(long)]
    seq: Option<i64>,
}

#[derive(Subcommand, Debug)]
pub enum ProofCommand {
    /// Check a proof document (from `logline proof` or the API) offline; exit 1 if it fails.
    Verify {
        file: PathBuf,
        /// Require this node key (`ed25519:<hex>`) rather than trusting the one the file names.
        #[arg(long)]
        key: Option<String>,
    },
    /// A consistency proof between the caller's tenant trees of `--from` and `--to` spans.
    Consistency {
        #[arg(long)]
        from: u64,
        /// The latest checkpoint's size by default.
        #[arg(long)]
        to: Option<u64>,
    },
}

pub async fn checkpoint(s: &Settings, what: CheckpointCommand) -> Result<ExitCode> {
    let CheckpointCommand::Export { of_tenant, out } = what;
    let store = s.store.open().await?;
    let tenant = of_tenant.unwrap_or_else(|| s.principal.tenant_id.clone());
    let c = ledger::checkpoint::latest(store.as_ref(), store.node_key(), &tenant).await?;
    match out {
        Some(path) => {
            std::fs::write(&path, &c.note)
                .with_context(|| format!("cannot write {}", path.display()))?;
            eprintln!(
                "checkpoint of tenant {tenant}: {} spans, root {} -> {}",
                c.checkpoint.size,
                c.checkpoint.root_b64(),
                path.display()
            );
        }
        None => print!("{}", c.note),
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn proof(s: &Settings, args: ProofArgs) -> Result<ExitCode> {
    match (args.what, args.id) {
        (Some(ProofCommand::Verify { file, key }), _) => verify_file(&file, key.as_deref()),
        (Some(ProofCommand::Consistency { from, to }), _) => {
            let store = s.store.open().await?;
            let doc =
                ledger::proof::consistency_doc(store.as_ref(), &s.principal.tenant_id, from, to)
                    .await?;
            println!("{}", serde_json::to_string_pretty(&doc)?);
            Ok(ExitCode::SUCCESS)
        }
        (None, Some(id)) => {
            let store = s.store.open().await?;
            let span = store
                .get(&s.principal, id, args.seq)
                .await?
                .with_context(|| format!("span {id} not found or not visible to you"))?;
            let seq = serde_json::from_str::<serde_json::Value>(&span.envelope)
                .ok()
                .and_then(|e| e.get("seq").and_then(serde_json::Value::as_i64))
                .unwrap_or_default();
            let doc = ledger::proof::span_inclusion(store.as_ref(), id, seq, &span).await?;
            println!("{}", serde_json::to_string_pretty(&doc)?);
            Ok(ExitCode::SUCCESS)
        }
        (None, None) => {
            anyhow::bail!("give a span id, or `proof verify FILE`, or `proof consistency --from N`")
        }
    }
}

fn verify_file(file: &PathBuf, key: Option<&str>) -> Result<ExitCode> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let doc: ProofDoc = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a proof document", file.display()))?;
    match doc.verify(key) {
        Ok(c) => {
            match &doc {
                ProofDoc::Inclusion {
                    leaf_index,
                    curr_hash,
                    ..
                } => println!(
                    "ok: {curr_hash} is leaf {leaf_index} of {} ({} spans, root {})",
                    c.origin,
                    c.size,
                    c.root_b64()
                ),
                ProofDoc::Consistency {
                    old_size, old_root, ..
                } => println!(
                    "ok: the tree of {old_size} spans (root {old_root}) is a prefix of {} ({} \
                     spans, root {})",
                    c.origin,
                    c.size,
                    c.root_b64()
                ),
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            println!("FAILED: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}
