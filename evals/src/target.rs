//! Where questions go: the agent in this process ([`InProcess`], over a store seeded with the
//! demo data and any configured provider) or a running server over HTTP ([`Remote`], `--url`).
//! Both report a turn the same way ([`Observed`]) and record the eval spans in the ledger they
//! talk to, so a run is recorded wherever its turns are.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use chrono::Utc;
use ledger::store::group::GroupCommit;
use ledger::{Draft, Principal, Store};
use serde_json::{Value, json};
use server::chat::agent::{Agent, ChatError, ChatEvent, MemoryMode, TurnRequest};
use server::chat::record::SpanWriter;
use server::chat::{PromptError, ProviderConfig, provider_from_config};
use tokio::sync::{Mutex, mpsc};
use uuid::Uuid;

use crate::assertion::{Observed, SpanInfo, ToolSeen};

/// Who asks a question.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Asker {
    pub user: String,
    pub tenant: String,
    pub roles: Vec<String>,
}

impl Asker {
    fn principal(&self) -> Principal {
        Principal::new(self.user.clone(), self.tenant.clone())
    }
}

/// A turn as the target saw it.
#[derive(Debug)]
pub struct Asked {
    pub observed: Observed,
    pub conversation_id: Option<Uuid>,
    /// Provider and model as the turn's `prompt_run` recorded them.
    pub provider: Option<String>,
    pub model: Option<String>,
}

/// Why a question could not be asked at all (the run stops with exit 1): the provider is
/// down, the server unreachable or refusing the token, the store failing.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("the model provider failed: {0}")]
    Provider(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("the ledger refused the eval spans: {0}")]
    Record(String),
    /// The target cannot ask as this user (e.g. `--url` with one token for another user).
    #[error("cannot ask as {user} in {tenant}: {why}")]
    CannotAsk {
        user: String,
        tenant: String,
        why: String,
    },
}

#[async_trait]
pub trait Target: Send + Sync {
    /// `in-process` or the server's URL.
    fn describe(&self) -> String;

    /// Asks one question (continuing `conversation` when given).
    async fn ask(
        &self,
        who: &Asker,
        conversation: Option<Uuid>,
        message: &str,
        variant: &str,
    ) -> Result<Asked, TargetError>;

    /// What `who` may see of these spans (type, name, tenant).
    async fn spans(&self, who: &Asker, ids: &[Uuid]) -> HashMap<Uuid, SpanInfo>;

    /// Every span id of a tenant, when the target can list them (in process it can).
    async fn tenant_ids(&self, tenant: &str) -> Option<HashSet<Uuid>>;

    /// Appends eval spans as `recorder` (in process) or as the token's principal (over HTTP);
    /// returns their ids in order.
    async fn record(
        &self,
        recorder: &Principal,
        spans: Vec<Value>,
    ) -> Result<Vec<Uuid>, TargetError>;
}

/// The agent in this process.
pub struct InProcess {
    store: Arc<dyn Store>,
    writer: GroupCommit,
    agent: Agent,
    tenants: Mutex<HashMap<String, HashSet<Uuid>>>,
}

impl InProcess {
    /// An agent over `store` on the provider `config` names, after seeding each tenant in
    /// `seed` with the demo data (idempotent).
    pub async fn start(
        store: Arc<dyn Store>,
        config: &ProviderConfig,
        context_tokens: Option<usize>,
        seed: &[String],
    ) -> anyhow::Result<Self> {
        for tenant in seed {
            kernels::demo::seed_demo(store.as_ref(), tenant, Utc::now()).await?;
        }
        let provider =
            provider_from_config(config).map_err(|e| anyhow::anyhow!("provider: {e}"))?;
        let writer = GroupCommit::start(store.clone());
        let agent = Agent::new(
            store.clone(),
            Arc::new(writer.clone()),
            provider,
            context_tokens,
        )
        .await?;
        Ok(Self {
            store,
            writer,
            agent,
            tenants: Mutex::new(HashMap::new()),
        })
    }

    /// Questions go to `agent`, spans to `store` (prompt_eval's trial: a scratch ledger and an
    /// agent compiling the trial's prompt set).
    pub fn from_agent(store: Arc<dyn Store>, writer: GroupCommit, agent: Agent) -> Self {
        Self {
            store,
            writer,
            agent,
            tenants: Mutex::new(HashMap::new()),
        }
    }

    /// Seeds more tenants (a later suite may name others).
    pub async fn seed(&self, tenants: &[String]) -> anyhow::Result<()> {
        for tenant in tenants {
            kernels::demo::seed_demo(self.store.as_ref(), tenant, Utc::now()).await?;
        }
        Ok(())
    }
}

/// Reads what a turn's `prompt_run` recorded into `asked`.
fn read_run(asked: &mut Asked, run: &Value) {
    let c = &run["content"];
    let n = |k: &str| c.get(k).and_then(Value::as_u64);
    asked.observed.tokens_in = n("tokens_in");
    asked.observed.tokens_out = n("tokens_out");
    asked.observed.compiled_hash = c
        .get("compiled_hash")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string);
    asked.provider = c
        .get("provider")
        .and_then(Value::as_str)
        .map(str::to_string);
    asked.model = c.get("model").and_then(Value::as_str).map(str::to_string);
}

fn info(view: &Value) -> SpanInfo {
    let s = |k: &str| view.get(k).and_then(Value::as_str).map(str::to_string);
    SpanInfo {
        entity_type: s("entity_type").unwrap_or_default(),
        name: s("name"),
        tenant_id: s("tenant_id").unwrap_or_default(),
    }
}

/// The observed turn from the answer, the events and the timing.
fn observed(
    answer: Value,
    outcome: &str,
    calls: Vec<ToolSeen>,
    proposals: Vec<Uuid>,
    run_id: Option<Uuid>,
    started: Instant,
) -> Observed {
    let output = answer
        .get("text")
        .or_else(|| answer.get("error"))
        .and_then(Value::as_str)
        .map_or_else(|| answer.to_string(), str::to_string);
    let citations = answer
        .get("citations")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|c| c.as_str().map_or_else(|| c.to_string(), str::to_string))
                .collect()
        })
        .unwrap_or_default();
    Observed {
        output,
        answer,
        outcome: outcome.to_string(),
        tool_calls: calls,
        citations,
        proposals,
        latency_ms: started.elapsed().as_secs_f64() * 1000.0,
        run_id,
        ..Observed::default()
    }
}

#[async_trait]
impl Target for InProcess {
    fn describe(&self) -> String {
        format!("in-process ({})", self.store.backend())
    }

    async fn ask(
        &self,
        who: &Asker,
        conversation: Option<Uuid>,
        message: &str,
        variant: &str,
    ) -> Result<Asked, TargetError> {
        let principal = who.principal();
        let (tx, mut rx) = mpsc::channel(256);
        let req = TurnRequest {
            message: message.to_string(),
            conversation_id: conversation,
            variant: Some(variant.to_string()),
            memory: MemoryMode::Off,
        };
        let started = Instant::now();
        let turn = self.agent.turn(&principal, &who.roles, req, Some(tx));
        let events = async {
            let mut calls: Vec<(String, ToolSeen)> = Vec::new();
            while let Some(e) = rx.recv().await {
                match e {
                    ChatEvent::ToolCall {
                        id,
                        name,
                        arguments,
                    } => calls.push((
                        id,
                        ToolSeen {
                            name,
                            arguments,
                            ok: false,
                            result: Value::Null,
                        },
                    )),
                    ChatEvent::ToolResult { id, ok, result, .. } => {
                        if let Some((_, t)) = calls.iter_mut().rev().find(|(i, _)| *i == id) {
                            t.ok = ok;
                            t.result = result;
                        }
                    }
                    _ => {}
                }
            }
            calls.into_iter().map(|(_, t)| t).collect::<Vec<_>>()
        };
        let (result, calls) = tokio::join!(turn, events);
        let refused = match result {
            Ok(r) => Ok(r),
            Err(ChatError::BadRequest(why)) => Err(why),
            // A prompt that does not render or fit is the prompt's failure, judged like any
            // refused turn (the cases fail); a store that fails is the run's.
            Err(ChatError::Prompt(p))
                if !matches!(p, PromptError::Store(_) | PromptError::Publish { .. }) =>
            {
                Err(format!("the prompt could not be built: {p}"))
            }
            Err(ChatError::Provider { error, .. }) => {
                return Err(TargetError::Provider(error.to_string()));
            }
            Err(e) => return Err(TargetError::Unavailable(e.to_string())),
        };
        let r = match refused {
            Ok(r) => r,
            Err(why) => {
                let o = observed(
                    json!({"error": why}),
                    "rejected",
                    calls,
                    vec![],
                    None,
                    started,
                );
                return Ok(Asked {
                    observed: o,
                    conversation_id: conversation,
                    provider: None,
                    model: None,
                });
            }
        };
        let mut asked = Asked {
            observed: observed(
                r.answer,
                r.outcome.as_str(),
                calls,
                r.proposals,
                Some(r.run_id),
                started,
            ),
            conversation_id: Some(r.conversation_id),
            provider: None,
            model: None,
        };
        if let Ok(Some(s)) = self.store.get(&principal, r.run_id, None).await
            && let Ok(v) = s.to_view()
        {
            read_run(&mut asked, &v);
        }
        Ok(asked)
    }

    async fn spans(&self, who: &Asker, ids: &[Uuid]) -> HashMap<Uuid, SpanInfo> {
        let p = who.principal();
        let mut out = HashMap::new();
        for id in ids {
            if let Ok(Some(s)) = self.store.get(&p, *id, None).await
                && let Ok(v) = s.to_view()
            {
                out.insert(*id, info(&v));
            }
        }
        out
    }

    async fn tenant_ids(&self, tenant: &str) -> Option<HashSet<Uuid>> {
        let mut cache = self.tenants.lock().await;
        if let Some(s) = cache.get(tenant) {
            return Some(s.clone());
        }
        let mut ids = HashSet::new();
        let mut from = 0;
        loop {
            let page = self.store.audit_page(tenant, from, 1000).await.ok()?;
            let Some(last) = page.last() else { break };
            from = last.chain_pos + 1;
            ids.extend(
                page.iter()
                    .filter(|r| r.visibility != "public")
                    .filter_map(|r| r.id.parse::<Uuid>().ok()),
            );
        }
        cache.insert(tenant.to_string(), ids.clone());
        Some(ids)
    }

    async fn record(
        &self,
        recorder: &Principal,
        spans: Vec<Value>,
    ) -> Result<Vec<Uuid>, TargetError> {
        let now = Utc::now();
        let drafts = spans
            .into_iter()
            .map(|s| Draft::from_value(s, recorder, &[], now))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TargetError::Record(e.to_string()))?;
        let results = SpanWriter::append(&self.writer, recorder, drafts)
            .await
            .map_err(|e| TargetError::Record(e.to_string()))?;
        results
            .into_iter()
            .map(|r| {
                r.map(|a| a.id)
                    .map_err(|e| TargetError::Record(e.to_string()))
            })
            .collect()
    }
}

/// A running server (`--url`). With `LOGLINE_JWT_SECRET` in the environment each case is
/// asked with a token minted for its own user and tenant; otherwise every case is asked with
/// `--token` (or none, for a server without auth), and a case that names another user than
/// the token's cannot be asked.
pub struct Remote {
    client: reqwest::Client,
    base: String,
    token: Option<String>,
    /// The token's user and tenant, read from its claims.
    token_principal: Option<Principal>,
    secret: Option<server::auth::Secret>,
}

impl Remote {
    pub fn new(
        url: &str,
        token: Option<String>,
        secret: Option<server::auth::Secret>,
    ) -> anyhow::Result<Self> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .tcp_nodelay(true)
            .timeout(std::time::Duration::from_secs(300))
            .build()?;
        let token_principal = token.as_deref().and_then(claims);
        Ok(Self {
            client,
            base: url.trim_end_matches('/').to_string(),
            token,
            token_principal,
            secret,
        })
    }

    /// The bearer token to ask as `who`.
    fn token_for(&self, who: &Asker) -> Result<Option<String>, TargetError> {
        if let Some(secret) = &self.secret {
            let now = Utc::now().timestamp();
            return Ok(Some(server::auth::issue(
                secret,
                &server::auth::Claims {
                    sub: who.user.clone(),
                    tenant: who.tenant.clone(),
                    roles: who.roles.clone(),
                    exp: now + 3600,
                    iat: now,
                    nbf: None,
                },
            )));
        }
        match &self.token_principal {
            Some(p) if p.user_id != who.user || p.tenant_id != who.tenant => {
                Err(TargetError::CannotAsk {
                    user: who.user.clone(),
                    tenant: who.tenant.clone(),
                    why: format!(
                        "the token is {}'s in {} (set LOGLINE_JWT_SECRET to mint one per case)",
                        p.user_id, p.tenant_id
                    ),
                })
            }
            _ => Ok(self.token.clone()),
        }
    }

    fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
    ) -> reqwest::RequestBuilder {
        let r = self.client.request(method, format!("{}{path}", self.base));
        match token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    async fn get_span(&self, token: Option<&str>, id: Uuid) -> Option<Value> {
        let r = self
            .request(reqwest::Method::GET, &format!("/api/spans/{id}"), token)
            .send()
            .await
            .ok()?;
        if !r.status().is_success() {
            return None;
        }
        r.json().await.ok()
    }
}

/// The `sub` and `tenant` claims of a JWT (not verified: the server does that).
fn claims(token: &str) -> Option<Principal> {
    use base64::Engine;
    let body = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(body.trim_end_matches('='))
        .ok()?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    Some(Principal::new(
        v.get("sub")?.as_str()?,
        v.get("tenant")?.as_str()?,
    ))
}

/// Server-Sent Events of a chat turn: `(event, data)` pairs.
fn sse_events(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for block in text.split("\n\n") {
        let mut event = String::from("message");
        let mut data: Vec<&str> = Vec::new();
        for line in block.lines() {
            if let Some(e) = line.strip_prefix("event:") {
                event = e.trim().to_string();
            } else if let Some(d) = line.strip_prefix("data:") {
                data.push(d.strip_prefix(' ').unwrap_or(d));
            }
        }
        if !data.is_empty() {
            out.push((event, data.join("\n")));
        }
    }
    out
}

#[async_trait]
impl Target for Remote {
    fn describe(&self) -> String {
        self.base.clone()
    }

    async fn ask(
        &self,
        who: &Asker,
        conversation: Option<Uuid>,
        message: &str,
        variant: &str,
    ) -> Result<Asked, TargetError> {
        let token = self.token_for(who)?;
        let started = Instant::now();
        let resp = self
            .request(reqwest::Method::POST, "/api/chat", token.as_deref())
            .header("accept", "text/event-stream")
            .json(&json!({"message": message, "conversation_id": conversation, "variant": variant}))
            .send()
            .await
            .map_err(|e| TargetError::Unavailable(format!("{}: {e}", self.base)))?;
        let status = resp.status();
        let text = resp
            .text()
            .await
            .map_err(|e| TargetError::Unavailable(format!("{}: {e}", self.base)))?;
        // A request the server refused (400, 413) is an answer a case can assert on, not a failure
        // to run; it arrives as a status, or as an `error` event once the stream has begun.
        let rejected = |detail: String| Asked {
            observed: observed(
                json!({"error": detail}),
                "rejected",
                vec![],
                vec![],
                None,
                started,
            ),
            conversation_id: conversation,
            provider: None,
            model: None,
        };
        if !status.is_success() {
            let problem: Value = serde_json::from_str(&text).unwrap_or(json!({"detail": text}));
            let detail = problem["detail"].as_str().unwrap_or("").to_string();
            return match status.as_u16() {
                400 | 413 => Ok(rejected(detail)),
                502..=504 => Err(TargetError::Provider(detail)),
                s => Err(TargetError::Unavailable(format!(
                    "POST {}/api/chat answered {s}: {detail}",
                    self.base
                ))),
            };
        }
        let mut calls: Vec<(String, ToolSeen)> = Vec::new();
        let mut answer = None;
        for (event, data) in sse_events(&text) {
            let v: Value = serde_json::from_str(&data).unwrap_or(Value::Null);
            match event.as_str() {
                "tool_call" => calls.push((
                    v["id"].as_str().unwrap_or("").to_string(),
                    ToolSeen {
                        name: v["name"].as_str().unwrap_or("").to_string(),
                        arguments: v["arguments"].clone(),
                        ok: false,
                        result: Value::Null,
                    },
                )),
                "tool_result" => {
                    let id = v["id"].as_str().unwrap_or("");
                    if let Some((_, t)) = calls.iter_mut().rev().find(|(i, _)| i == id) {
                        t.ok = v["ok"].as_bool().unwrap_or(false);
                        t.result = v["result"].clone();
                    }
                }
                "answer" => answer = Some(v),
                "error" => {
                    let detail = v["detail"].as_str().unwrap_or("").to_string();
                    return match v["status"].as_u64() {
                        Some(400 | 413) => Ok(rejected(detail)),
                        _ => Err(TargetError::Provider(detail)),
                    };
                }
                _ => {}
            }
        }
        let a = answer.ok_or_else(|| {
            TargetError::Unavailable(format!(
                "{}/api/chat: the stream ended without an answer",
                self.base
            ))
        })?;
        let uuid = |v: &Value| v.as_str().and_then(|s| s.parse::<Uuid>().ok());
        let run_id = uuid(&a["run_id"]);
        let proposals = a["proposals"]
            .as_array()
            .map(|p| p.iter().filter_map(uuid).collect())
            .unwrap_or_default();
        let mut asked = Asked {
            observed: observed(
                a["answer"].clone(),
                a["outcome"].as_str().unwrap_or(""),
                calls.into_iter().map(|(_, t)| t).collect(),
                proposals,
                run_id,
                started,
            ),
            conversation_id: uuid(&a["conversation_id"]),
            provider: None,
            model: None,
        };
        if let Some(id) = run_id
            && let Some(v) = self.get_span(token.as_deref(), id).await
        {
            read_run(&mut asked, &v);
        }
        Ok(asked)
    }

    async fn spans(&self, who: &Asker, ids: &[Uuid]) -> HashMap<Uuid, SpanInfo> {
        let Ok(token) = self.token_for(who) else {
            return HashMap::new();
        };
        let mut out = HashMap::new();
        for id in ids {
            if let Some(v) = self.get_span(token.as_deref(), *id).await {
                out.insert(*id, info(&v));
            }
        }
        out
    }

    async fn tenant_ids(&self, _tenant: &str) -> Option<HashSet<Uuid>> {
        None
    }

    async fn record(
        &self,
        recorder: &Principal,
        spans: Vec<Value>,
    ) -> Result<Vec<Uuid>, TargetError> {
        let who = Asker {
            user: recorder.user_id.clone(),
            tenant: recorder.tenant_id.clone(),
            roles: vec![],
        };
        let token = if self.secret.is_some() {
            self.token_for(&who)?
        } else {
            self.token.clone()
        };
        let body: String = spans.iter().map(|s| format!("{s}\n")).collect();
        let resp = self
            .request(reqwest::Method::POST, "/api/spans", token.as_deref())
            .header("content-type", "application/x-ndjson")
            .body(body)
            .send()
            .await
            .map_err(|e| TargetError::Record(format!("{}: {e}", self.base)))?;
        let status = resp.status();
        let text = resp
            .text()
            .await
            .map_err(|e| TargetError::Record(e.to_string()))?;
        if !status.is_success() {
            return Err(TargetError::Record(format!(
                "POST /api/spans answered {status}: {text}"
            )));
        }
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let v: Value =
                    serde_json::from_str(l).map_err(|e| TargetError::Record(e.to_string()))?;
                if v["ok"].as_bool() == Some(true) {
                    v["id"]
                        .as_str()
                        .and_then(|s| s.parse().ok())
                        .ok_or_else(|| TargetError::Record(format!("no id in {l}")))
                } else {
                    Err(TargetError::Record(v["error"].to_string()))
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_blocks_become_events() {
        let e = sse_events(
            "event: tool_call\ndata: {\"a\":1}\n\nevent: answer\ndata: {\"b\":\ndata: 2}\n\n: keep-alive\n\n",
        );
        assert_eq!(e.len(), 2);
        assert_eq!(e[0], ("tool_call".into(), "{\"a\":1}".into()));
        assert_eq!(e[1].1, "{\"b\":\n2}");
    }
}
