//! Group commit: concurrent appenders hand their drafts to one task that writes whatever has
//! queued up in a single transaction, so many small appends share one durable commit.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::{AppendResults, Store};
use crate::error::StoreError;
use crate::span::{Draft, Principal};

/// Drafts gathered into one transaction at most.
const MAX_GROUP: usize = 4000;

type Reply = oneshot::Sender<Result<AppendResults, String>>;

struct Job {
    principal: Principal,
    drafts: Vec<Draft>,
    reply: Reply,
}

/// A cloneable handle; the committing task stops when the last handle is dropped.
#[derive(Clone)]
pub struct GroupCommit {
    tx: mpsc::Sender<Job>,
}

impl GroupCommit {
    pub fn start(store: Arc<dyn Store>) -> Self {
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(run(store, rx));
        Self { tx }
    }

    /// Appends one principal's drafts; resolves once they are committed.
    pub async fn append(
        &self,
        principal: &Principal,
        drafts: Vec<Draft>,
    ) -> Result<AppendResults, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job {
                principal: principal.clone(),
                drafts,
                reply,
            })
            .await
            .map_err(|_| StoreError::Config("the group committer has stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Config("the group committer has stopped".into()))?
            .map_err(StoreError::Config)
    }
}

async fn run(store: Arc<dyn Store>, mut rx: mpsc::Receiver<Job>) {
    while let Some(first) = rx.recv().await {
        let mut size = first.drafts.len();
        let mut jobs = vec![first];
        while size < MAX_GROUP {
            match rx.try_recv() {
                Ok(job) => {
                    size += job.drafts.len();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        if jobs.len() == 1 {
            let job = jobs.remove(0);
            let result = store
                .append_many(vec![(job.principal, job.drafts)])
                .await
                .map(|mut r| r.pop().unwrap_or_default())
                .map_err(|e| e.to_string());
            let _ = job.reply.send(result);
            continue;
        }
        // Kept so that, when the shared transaction fails, each job can be retried alone and
        // one bad batch does not fail its neighbours.
        let retry: Vec<(Principal, Vec<Draft>)> = jobs
            .iter()
            .map(|j| (j.principal.clone(), j.drafts.clone()))
            .collect();
        // Merge jobs of the same principal into one batch: fewer statements per commit.
        let mut batches: Vec<(Principal, Vec<Draft>)> = Vec::new();
        let mut slots: Vec<(usize, usize, usize, Reply)> = Vec::new();
        for job in jobs {
            let idx = match batches.iter().position(|(p, _)| *p == job.principal) {
                Some(i) => i,
                None => {
                    batches.push((job.principal.clone(), Vec::new()));
                    batches.len() - 1
                }
            };
            let start = batches[idx].1.len();
            let len = job.drafts.len();
            batches[idx].1.extend(job.drafts);
            slots.push((idx, start, len, job.reply));
        }
        match store.append_many(batches).await {
            Ok(results) => {
                for (idx, start, len, reply) in slots {
                    let part = results
                        .get(idx)
                        .and_then(|r| r.get(start..start + len))
                        .map(<[_]>::to_vec)
                        .unwrap_or_default();
                    let _ = reply.send(Ok(part));
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, jobs = slots.len(), "group commit failed; retrying each job alone");
                for ((principal, drafts), (_, _, _, reply)) in retry.into_iter().zip(slots) {
                    let result = store
                        .append_many(vec![(principal, drafts)])
                        .await
                        .map(|mut r| r.pop().unwrap_or_default())
                        .map_err(|e| e.to_string());
                    let _ = reply.send(result);
                }
            }
        }
    }
}
