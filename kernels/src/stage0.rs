//! Stage-0: the small trusted step between "the ledger says so" and "this code runs"
//! (DESIGN §5).
//!
//! Kernels are native Rust, but whether one runs, and with which configuration, is decided by
//! spans: a `kernel` span per kernel (name, version, config; tuning it is a new `seq`) and the
//! manifest's `kernels` (name → span id) and `allowed_boot_ids`. Before a kernel starts, Stage-0
//! loads its latest span and checks it with the same code that verifies chains
//! ([`ledger::verify::verify_span`]): the envelope hashes to `curr_hash`, the body matches its
//! digest, the signer is a trusted key and the signature holds. A kernel that is missing,
//! tampered, signed by a stranger, not allow-listed, of an unknown name or version, or badly
//! configured does not start, and the refusal is written down as a `boot_event` span.
//!
//! Stage-0 knows the kernels only through [`crate::kernel::NATIVE`] (name, version, default
//! config, config check); it imports none of their runtimes, which ask it before they run.
//!
//! [`inspect`] only reads, so `logline kernels status`, `logline run` and the server can all ask
//! it as often as they like (each run re-reads the spans, which is how a new `seq` takes effect
//! without a restart). Recording is separate ([`record_refusals`], [`record_boot`]) and
//! idempotent per distinct refusal, so several processes noticing the same problem write it once.

use std::collections::BTreeMap;

use chrono::Utc;
use ledger::error::AppendError;
use ledger::span::format_time;
use ledger::store::{self, system_principal};
use ledger::verify::{SealError, verify_span};
use ledger::{Draft, Store, StoreError};
use serde_json::{Map, Value, json};
use thiserror::Error;
use uuid::Uuid;

use crate::kernel::native_names;
use crate::manifest::{self, Manifest, ManifestError, check_place};

/// The kernels Stage-0 checks (kept here too for callers that know them as `stage0::NATIVE`).
pub use crate::kernel::{NATIVE, Native, native};

/// Why a kernel did not start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The manifest itself does not verify or cannot be read: nothing boots.
    ManifestInvalid,
    Missing,
    Tampered,
    UntrustedSigner,
    NotAKernel,
    Redacted,
    UnknownKernel,
    /// Another span id is the manifest's binding for this kernel name.
    NotBound,
    UnsupportedVersion,
    InvalidConfig,
    NotAllowListed,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ManifestInvalid => "manifest_invalid",
            Self::Missing => "missing",
            Self::Tampered => "tampered",
            Self::UntrustedSigner => "untrusted_signer",
            Self::NotAKernel => "not_a_kernel",
            Self::Redacted => "redacted",
            Self::UnknownKernel => "unknown_kernel",
            Self::NotBound => "not_bound",
            Self::UnsupportedVersion => "unsupported_version",
            Self::InvalidConfig => "invalid_config",
            Self::NotAllowListed => "not_allow_listed",
        }
    }
}

/// What Stage-0 decided for one kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Verified, and this build runs it.
    Ready,
    /// Verified, but this build has no body for it yet: not started.
    NoRuntime,
    Refused(Refusal),
}

impl State {
    pub fn label(self) -> &'static str {
        match self {
            Self::Ready => "ready",
            Self::NoRuntime => "verified, no runtime yet",
            Self::Refused(_) => "refused",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct KernelStatus {
    /// The kernel's name: from its verified span, else the manifest's binding, else `?`.
    pub name: String,
    pub id: Uuid,
    /// The latest seq found (read from the envelope even when it does not verify, to say which).
    pub seq: Option<i64>,
    pub version: Option<String>,
    pub curr_hash: Option<String>,
    /// The verified `content.config` (`null` unless verified).
    pub config: Value,
    pub allow_listed: bool,
    pub state: State,
    /// One sentence: why it is refused, or what "verified" means for it.
    pub reason: String,
}

impl KernelStatus {
    pub fn to_json(&self) -> Value {
        json!({
            "name": self.name,
            "id": self.id,
            "seq": self.seq,
            "version": self.version,
            "curr_hash": self.curr_hash,
            "allow_listed": self.allow_listed,
            "state": self.state.label(),
            "refusal": match self.state { State::Refused(r) => Some(r.as_str()), _ => None },
            "reason": self.reason,
            "config": self.config,
        })
    }

    fn refuse(&mut self, why: Refusal, reason: impl Into<String>) {
        self.state = State::Refused(why);
        self.reason = reason.into();
    }
}

/// Stage-0's verdict on every kernel the manifest or this build knows.
#[derive(Clone, Debug, PartialEq)]
pub struct BootReport {
    /// The verified manifest, or why it could not be used.
    pub manifest: Result<Manifest, String>,
    pub kernels: Vec<KernelStatus>,
}

impl BootReport {
    pub fn kernel(&self, name: &str) -> Option<&KernelStatus> {
        self.kernels.iter().find(|k| k.name == name)
    }

    /// Whether something the manifest wants to run was refused (or the manifest itself).
    pub fn allowed_refused(&self) -> bool {
        self.manifest.is_err()
            || self
                .kernels
                .iter()
                .any(|k| k.allow_listed && matches!(k.state, State::Refused(_)))
    }

    /// What identifies this verdict's inputs: when it changes, the configuration changed.
    pub fn fingerprint(&self) -> Vec<String> {
        let mut out = vec![match &self.manifest {
            Ok(m) => m.curr_hash.clone(),
            Err(e) => e.clone(),
        }];
        out.extend(self.kernels.iter().map(|k| {
            format!(
                "{}:{}:{}",
                k.id,
                k.curr_hash.as_deref().unwrap_or("-"),
                k.state.label()
            )
        }));
        out
    }

    pub fn to_json(&self) -> Value {
        json!({
            "manifest": match &self.manifest {
                Ok(m) => json!({"seq": m.seq, "curr_hash": m.curr_hash, "ok": true}),
                Err(e) => json!({"ok": false, "error": e}),
            },
            "kernels": self.kernels.iter().map(KernelStatus::to_json).collect::<Vec<_>>(),
        })
    }
}

#[derive(Debug, Error)]
pub enum Stage0Error {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot seed the `{name}` kernel span: {reason}")]
    Seed { name: String, reason: String },
    #[error("cannot record a boot_event: {0}")]
    Record(String),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("no kernel named `{0}` (known: {known})", known = native_names())]
    UnknownKernel(String),
    #[error("refusing to build on the `{name}` kernel span: {reason}")]
    Unverified { name: String, reason: String },
    #[error("kernel `{key}`: {problem}")]
    Invalid { key: String, problem: String },
}

/// Appends the span of every native kernel that has none yet (seq 0, default config, signed by
/// the node key in the system tenant). Idempotent across processes: each seed carries an
/// idempotency key. Returns the names seeded now.
pub async fn seed(store: &dyn Store) -> Result<Vec<&'static str>, Stage0Error> {
    let principal = system_principal();
    let mut names = Vec::new();
    let mut drafts = Vec::new();
    for k in NATIVE {
        if store.get(&principal, k.id(), None).await?.is_some() {
            continue;
        }
        let draft = Draft::from_value(
            json!({
                "id": k.id(),
                "seq": 0,
                "entity_type": "kernel",
                "visibility": "tenant",
                "idempotency_key": format!("kernel:genesis:{}", k.name()),
                "name": k.name(),
                "when": format_time(Utc::now()),
                "who": principal.user_id,
                "did": "defined kernel",
                "this": format!("kernel {}", k.name()),
                "confirmed_by": "node key",
                "if_ok": "boot it when the manifest allows it",
                "if_doubt": "do not boot it; record a boot_event",
                "if_not": "do not boot it; record a boot_event",
                "status": "active",
                "content": {"name": k.name(), "version": k.version(), "config": k.default_config()},
            }),
            &principal,
            &[],
            Utc::now(),
        )
        .map_err(|e| Stage0Error::Seed {
            name: k.name().into(),
            reason: e.to_string(),
        })?;
        names.push(k.name());
        drafts.push(draft);
    }
    if drafts.is_empty() {
        return Ok(names);
    }
    let results = store::append(store, &principal, drafts).await?;
    let mut seeded = Vec::new();
    for (name, result) in names.into_iter().zip(results) {
        match result {
            Ok(a) if !a.duplicate => seeded.push(name),
            Ok(_) => {}
            Err(e) => {
                return Err(Stage0Error::Seed {
                    name: name.into(),
                    reason: e.to_string(),
                });
            }
        }
    }
    Ok(seeded)
}

/// Verifies every kernel the manifest names or allow-lists, plus the native ones; writes
/// nothing.
pub async fn inspect(store: &dyn Store) -> Result<BootReport, Stage0Error> {
    inspect_some(store, None).await
}

/// Verifies the one kernel the manifest binds to `name` (what `run_code` asks before each run).
pub async fn inspect_kernel(
    store: &dyn Store,
    name: &str,
) -> Result<(Result<Manifest, String>, KernelStatus), Stage0Error> {
    if native(name).is_none() {
        return Err(Stage0Error::UnknownKernel(name.to_string()));
    }
    let report = inspect_some(store, Some(name)).await?;
    let status = report
        .kernels
        .into_iter()
        .next()
        .ok_or_else(|| Stage0Error::UnknownKernel(name.to_string()))?;
    Ok((report.manifest, status))
}

async fn inspect_some(store: &dyn Store, only: Option<&str>) -> Result<BootReport, Stage0Error> {
    let manifest = match manifest::load(store).await {
        Ok(m) => m,
        Err(ManifestError::Store(e)) => return Err(e.into()),
        Err(e) => {
            let reason = format!("the manifest cannot be trusted, so nothing boots: {e}");
            let kernels = NATIVE
                .iter()
                .filter(|k| only.is_none_or(|n| n == k.name()))
                .map(|k| KernelStatus {
                    name: k.name().to_string(),
                    id: k.id(),
                    seq: None,
                    version: None,
                    curr_hash: None,
                    config: Value::Null,
                    allow_listed: false,
                    state: State::Refused(Refusal::ManifestInvalid),
                    reason: reason.clone(),
                })
                .collect();
            return Ok(BootReport {
                manifest: Err(e.to_string()),
                kernels,
            });
        }
    };
    // Which span id each kernel name boots from: the manifest's binding, else the native id.
    let mut bindings: BTreeMap<String, Uuid> = NATIVE
        .iter()
        .map(|k| (k.name().to_string(), k.id()))
        .collect();
    bindings.extend(manifest.kernels.iter().map(|(n, id)| (n.clone(), *id)));
    let mut candidates: Vec<Uuid> = Vec::new();
    match only {
        Some(name) => candidates.extend(bindings.get(name)),
        None => {
            let natives = NATIVE.iter().filter_map(|k| bindings.get(k.name()));
            for id in natives
                .chain(manifest.kernels.values())
                .chain(manifest.allowed_boot_ids.iter())
            {
                if !candidates.contains(id) {
                    candidates.push(*id);
                }
            }
        }
    }
    let trusted = store::trusted_keys(store).await?;
    let mut kernels = Vec::with_capacity(candidates.len());
    for id in candidates {
        kernels.push(inspect_one(store, id, &manifest, &bindings, &trusted).await?);
    }
    Ok(BootReport {
        manifest: Ok(manifest),
        kernels,
    })
}

async fn inspect_one(
    store: &dyn Store,
    id: Uuid,
    manifest: &Manifest,
    bindings: &BTreeMap<String, Uuid>,
    trusted: &[String],
) -> Result<KernelStatus, Stage0Error> {
    let hint = bindings
        .iter()
        .find(|(_, bound)| **bound == id)
        .map_or("?", |(n, _)| n.as_str());
    let mut st = KernelStatus {
        name: hint.to_string(),
        id,
        seq: None,
        version: None,
        curr_hash: None,
        config: Value::Null,
        allow_listed: manifest.allowed_boot_ids.contains(&id),
        state: State::Ready,
        reason: String::new(),
    };
    let Some(span) = store.get(&system_principal(), id, None).await? else {
        st.refuse(
            Refusal::Missing,
            "missing: no kernel span with this id in the system tenant",
        );
        return Ok(st);
    };
    st.curr_hash = Some(span.curr_hash.clone());
    st.seq = serde_json::from_str::<Value>(&span.envelope)
        .ok()
        .and_then(|e| e.get("seq").and_then(Value::as_i64));
    let envelope = match verify_span(&span, trusted) {
        Ok(e) => e,
        Err(SealError::Untrusted(key)) => {
            st.refuse(
                Refusal::UntrustedSigner,
                format!("untrusted signer: signed by {key}, which the manifest does not trust"),
            );
            return Ok(st);
        }
        Err(e) => {
            st.refuse(Refusal::Tampered, format!("tampered: {e}"));
            return Ok(st);
        }
    };
    if let Err(e) = check_place(&envelope, id) {
        st.refuse(Refusal::Tampered, format!("tampered: {e}"));
        return Ok(st);
    }
    let entity_type = envelope
        .get("entity_type")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if entity_type != "kernel" {
        st.refuse(
            Refusal::NotAKernel,
            format!("not a kernel: the span is a `{entity_type}` span"),
        );
        return Ok(st);
    }
    let view = match span.to_view() {
        Ok(v) => v,
        Err(e) => {
            st.refuse(Refusal::Tampered, format!("tampered: {e}"));
            return Ok(st);
        }
    };
    if view.get("redacted") == Some(&Value::Bool(true)) {
        st.refuse(
            Refusal::Redacted,
            "redacted: its content was withheld, so there is nothing to boot",
        );
        return Ok(st);
    }
    let content = view.get("content").cloned().unwrap_or(Value::Null);
    let Some(name) = content.get("name").and_then(Value::as_str) else {
        st.refuse(
            Refusal::UnknownKernel,
            "unknown kernel: the span names no kernel (content.name)",
        );
        return Ok(st);
    };
    st.name = name.to_string();
    st.version = content
        .get("version")
        .and_then(Value::as_str)
        .map(str::to_string);
    let Some(native) = native(name) else {
        st.refuse(
            Refusal::UnknownKernel,
            format!("unknown kernel name `{name}`: this build has no native kernel by that name"),
        );
        return Ok(st);
    };
    if let Some(bound) = bindings.get(name)
        && *bound != id
    {
        st.refuse(
            Refusal::NotBound,
            format!("not the manifest's {name}: the manifest binds {name} to span {bound}"),
        );
        return Ok(st);
    }
    let major = |v: &str| v.split('.').next().unwrap_or_default().to_string();
    match &st.version {
        Some(v) if major(v) == major(native.version()) => {}
        other => {
            let asked = other.as_deref().unwrap_or("(none)");
            st.refuse(
                Refusal::UnsupportedVersion,
                format!(
                    "unsupported version {asked}: this build implements {name} {}.x",
                    major(native.version())
                ),
            );
            return Ok(st);
        }
    }
    let config = match content.get("config") {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(c) => c.clone(),
    };
    if let Err(e) = native.check_config(&config) {
        st.refuse(Refusal::InvalidConfig, format!("invalid config: {e}"));
        return Ok(st);
    }
    st.config = config;
    if !st.allow_listed {
        st.refuse(
            Refusal::NotAllowListed,
            "not allow-listed: the manifest's allowed_boot_ids does not include this span id",
        );
        return Ok(st);
    }
    if native.runtime() {
        st.state = State::Ready;
        st.reason = native.ready().into();
    } else {
        st.state = State::NoRuntime;
        st.reason = "verified; not started: this build has no runtime for it yet".into();
    }
    Ok(st)
}

fn boot_event(
    who: &str,
    did: &str,
    this: String,
    status: &str,
    related_to: Vec<Uuid>,
    idempotency_key: Option<String>,
    content: Value,
) -> Result<Draft, Stage0Error> {
    let principal = system_principal();
    let mut v = json!({
        "entity_type": "boot_event",
        "visibility": "tenant",
        "related_to": related_to,
        "when": format_time(Utc::now()),
        "who": who,
        "did": did,
        "this": this,
        "confirmed_by": "stage0 verification",
        "if_ok": "run the verified kernels",
        "if_doubt": "keep the kernel stopped",
        "if_not": "keep the kernel stopped and tell the operator",
        "status": status,
        "content": content,
    });
    if let Some(k) = idempotency_key {
        v["idempotency_key"] = json!(k);
    }
    Draft::from_value(v, &principal, &[], Utc::now())
        .map_err(|e| Stage0Error::Record(e.to_string()))
}

/// Appends one `boot_event` per refused kernel, saying why. Each distinct refusal (kernel id and
/// seq, manifest seq, kind) is recorded once, however many processes or status calls see it.
/// Returns how many were new.
pub async fn record_refusals(store: &dyn Store, report: &BootReport) -> Result<usize, Stage0Error> {
    let manifest_seq = report
        .manifest
        .as_ref()
        .map_or_else(|_| "unverified".to_string(), |m| m.seq.to_string());
    let manifest_hash = report.manifest.as_ref().ok().map(|m| m.curr_hash.clone());
    let mut drafts = Vec::new();
    for k in &report.kernels {
        let State::Refused(why) = k.state else {
            continue;
        };
        let key = format!(
            "boot:refused:{}:{}:{}:{}",
            k.id,
            k.seq.map_or_else(|| "-".to_string(), |s| s.to_string()),
            manifest_seq,
            why.as_str()
        );
        drafts.push(boot_event(
            "stage0",
            "refused to boot",
            format!("kernel {}", k.name),
            "refused",
            vec![k.id, store::MANIFEST_ID],
            Some(key),
            json!({
                "outcome": "refused",
                "kernel": k.name,
                "kernel_id": k.id,
                "kernel_seq": k.seq,
                "kernel_hash": k.curr_hash,
                "refusal": why.as_str(),
                "reason": k.reason,
                "allow_listed": k.allow_listed,
                "manifest_seq": report.manifest.as_ref().ok().map(|m| m.seq),
                "manifest_hash": manifest_hash,
            }),
        )?);
    }
    if drafts.is_empty() {
        return Ok(0);
    }
    let results = store::append(store, &system_principal(), drafts).await?;
    let mut new = 0;
    for r in results {
        match r {
            Ok(a) if !a.duplicate => new += 1,
            Ok(_) => {}
            Err(e) => return Err(Stage0Error::Record(e.to_string())),
        }
    }
    Ok(new)
}

/// Appends the `boot_event` of one process's boot: what it started, what it verified without
/// running, and what it refused. `process` names the process (host and pid).
pub async fn record_boot(
    store: &dyn Store,
    report: &BootReport,
    process: &str,
) -> Result<(), Stage0Error> {
    let list = |want: fn(State) -> bool| -> Vec<Value> {
        report
            .kernels
            .iter()
            .filter(|k| want(k.state))
            .map(|k| json!({"name": k.name, "id": k.id, "seq": k.seq, "version": k.version, "reason": k.reason}))
            .collect()
    };
    let started = list(|s| s == State::Ready);
    let draft = boot_event(
        process,
        "booted",
        format!("{} kernel(s)", started.len()),
        "booted",
        report.kernels.iter().map(|k| k.id).collect(),
        None,
        json!({
            "outcome": "booted",
            "started": started,
            "verified_no_runtime": list(|s| s == State::NoRuntime),
            "refused": list(|s| matches!(s, State::Refused(_))),
            "manifest_seq": report.manifest.as_ref().ok().map(|m| m.seq),
        }),
    )?;
    let results = store::append(store, &system_principal(), vec![draft]).await?;
    match results.into_iter().next() {
        Some(Ok(_)) => Ok(()),
        Some(Err(e)) => Err(Stage0Error::Record(e.to_string())),
        None => Err(Stage0Error::Record("the store reported no result".into())),
    }
}

/// Appends the next seq of a kernel's span with `assignments` applied to its `content`
/// (dotted keys: `config.time_ms=300`, `version=1.1.0`), signed by the node key. Refuses to
/// build on a span that does not verify (that would launder a tampered one) and to rename the
/// kernel. Returns the new seq.
pub async fn set_kernel(
    store: &dyn Store,
    name: &str,
    who: &str,
    assignments: &[(String, Value)],
) -> Result<i64, Stage0Error> {
    let native = native(name).ok_or_else(|| Stage0Error::UnknownKernel(name.to_string()))?;
    if let Some((k, _)) = assignments
        .iter()
        .find(|(k, _)| k == "name" || k.starts_with("name."))
    {
        return Err(Stage0Error::Invalid {
            key: k.clone(),
            problem: "a kernel's name cannot change; bind another span in the manifest instead"
                .into(),
        });
    }
    let principal = system_principal();
    for _ in 0..8 {
        let m = manifest::load(store).await?;
        let id = m.kernels.get(name).copied().unwrap_or_else(|| native.id());
        let (seq, _, view) = manifest::load_verified(store, id, "kernel")
            .await
            .map_err(|e| Stage0Error::Unverified {
                name: name.to_string(),
                reason: e.to_string(),
            })?;
        let mut content = view.get("content").cloned().unwrap_or(Value::Null);
        for (key, value) in assignments {
            manifest::set_path(&mut content, key, value.clone())?;
        }
        if content.get("version").and_then(Value::as_str).is_none() {
            return Err(Stage0Error::Invalid {
                key: "version".into(),
                problem: "must be a version string such as 1.0.0".into(),
            });
        }
        let config = content.get("config").cloned().unwrap_or(Value::Null);
        if !config.is_object() {
            return Err(Stage0Error::Invalid {
                key: "config".into(),
                problem: "must be an object".into(),
            });
        }
        native
            .check_config(&config)
            .map_err(|e| Stage0Error::Invalid {
                key: "config".into(),
                problem: e.to_string(),
            })?;
        let keys: Vec<&str> = assignments.iter().map(|(k, _)| k.as_str()).collect();
        let draft = Draft::from_value(
            json!({
                "id": id,
                "seq": seq + 1,
                "entity_type": "kernel",
                "visibility": "tenant",
                "name": name,
                "when": format_time(Utc::now()),
                "who": who,
                "did": "reconfigured kernel",
                "this": format!("kernel {name}"),
                "confirmed_by": "node key",
                "if_ok": "boot it with this configuration",
                "if_doubt": "do not boot it; record a boot_event",
                "if_not": "do not boot it; record a boot_event",
                "status": "active",
                "content": content,
                "metadata": {"changed": keys, "previous_seq": seq},
            }),
            &principal,
            &[],
            Utc::now(),
        )
        .map_err(|e| Stage0Error::Invalid {
            key: "span".into(),
            problem: e.to_string(),
        })?;
        match store::append(store, &principal, vec![draft])
            .await?
            .into_iter()
            .next()
        {
            Some(Ok(a)) => return Ok(a.seq),
            Some(Err(AppendError::SeqConflict { .. })) => continue,
            Some(Err(e)) => return Err(Stage0Error::Record(e.to_string())),
            None => return Err(Stage0Error::Record("the store reported no result".into())),
        }
    }
    Err(ManifestError::Contention(8).into())
}
