//! `logline law …`: working with law text. `check` needs no store, so it runs anywhere a law
//! is being written, including an editor's save hook or CI.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Subcommand;
use ledger::law::{self, Law, ParseError};

#[derive(Subcommand, Debug)]
pub enum LawCommand {
    /// Parse law files: print a one-line summary of each, or `FILE:LINE:COL: message` with the
    /// offending line; exit 1 if any file does not parse.
    Check {
        /// Law files (`-` reads standard input).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Dry-run a law with overridden variables (`--set quorum=3`) and print which contracts'
    /// triage would change; writes nothing.
    Simulate(crate::cli_governance::SimulateArgs),
}

pub fn run(command: LawCommand) -> Result<ExitCode> {
    match command {
        LawCommand::Check { files } => check(&files),
        // Needs the store, so `cli::run` dispatches it to `cli_governance::simulate`.
        LawCommand::Simulate(_) => anyhow::bail!("`law simulate` needs the store"),
    }
}

fn check(files: &[PathBuf]) -> Result<ExitCode> {
    let mut failed = false;
    let mut out = std::io::stdout().lock();
    let mut err = std::io::stderr().lock();
    for file in files {
        let (name, source) = read(file)?;
        match law::parse(&source) {
            Ok(law) => writeln!(out, "{name}: ok: {}", summary(&law))?,
            Err(e) => {
                failed = true;
                write!(err, "{}", render_error(&name, &source, &e))?;
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn read(file: &Path) -> Result<(String, String)> {
    if file == Path::new("-") {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("cannot read standard input")?;
        return Ok(("<stdin>".into(), s));
    }
    let s =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    Ok((file.display().to_string(), s))
}

/// `law midnight_deadline:1.0.0, scope deliverable, clock midnight Europe/Paris, blocks ok doubt not`
pub fn summary(law: &Law) -> String {
    let blocks: Vec<&str> = law.blocks().map(|(t, _)| t.as_str()).collect();
    format!(
        "law {}:{}, scope {}, clock {}, blocks {}",
        law.id,
        law.version,
        law.scope.as_deref().unwrap_or("(none)"),
        law.clock
            .as_ref()
            .map_or_else(|| "(none)".to_string(), ToString::to_string),
        blocks.join(" ")
    )
}

/// `FILE:LINE:COL: message`, then the source line and a caret under the column. The caret line
/// copies the line's tabs so it lines up however the terminal renders them.
pub fn render_error(name: &str, source: &str, e: &ParseError) -> String {
    let at = e.position();
    let mut out = format!("{name}:{e}\n");
    let line_index = usize::try_from(at.line.saturating_sub(1)).unwrap_or(usize::MAX);
    if let Some(line) = source.split('\n').nth(line_index) {
        let line = line.strip_suffix('\r').unwrap_or(line);
        let column = usize::try_from(at.column.saturating_sub(1)).unwrap_or(usize::MAX);
        let pad: String = line
            .chars()
            .take(column)
            .map(|c| if c == '\t' { '\t' } else { ' ' })
            .collect();
        out.push_str(&format!("  {line}\n  {pad}^\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_caret_sits_under_the_column_of_the_error() {
        let src = "law a:1.0.0:\nif ok: a\nthen: accept, hodl\n";
        let e = law::parse(src).unwrap_err();
        assert_eq!(
            render_error("x.law", src, &e),
            "x.law:3:15: expected an action such as accept or hold(hours=N), found \"hodl\"\n  then: accept, hodl\n                ^\n"
        );
    }
}
