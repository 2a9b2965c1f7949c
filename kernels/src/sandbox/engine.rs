//! One run inside QuickJS: a fresh runtime with its limits, a context with only the built-ins
//! and `ctx`, the call to `main`, the promise (if any) driven to completion, and the outcome
//! classified into a [`RunError`] by what the engine reported.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use rquickjs::context::EvalOptions;
use rquickjs::function::{Opt, Rest};
use rquickjs::{
    CaughtError, Coerced, Context, Ctx, Exception, Function, Object, Promise, Runtime, Value,
    promise::PromiseState,
};
use serde_json::Value as Json;

use super::{Host, Limits, RunError, RunOutput};

/// The file name stack traces give the function's source.
const SOURCE_NAME: &str = "function.js";

/// Collected `ctx.log` lines, bounded by the limits.
#[derive(Default)]
struct Logs {
    lines: Vec<String>,
    bytes: usize,
    truncated: bool,
}

/// How a run ended, in owned values so it can leave the engine's lifetime.
enum Outcome {
    /// `main`'s return value as JSON text.
    Done(String),
    /// JavaScript threw (or a promise rejected) and nobody caught it.
    Thrown(Thrown),
    /// The heap limit was hit and nobody caught the resulting error.
    OutOfMemory,
    /// The engine itself failed (conversion, invalid state).
    Engine(String),
    Compile(String),
    NoMain,
    NeverSettled,
    NotSerializable(String),
}

struct Thrown {
    name: Option<String>,
    message: String,
    stack: Option<String>,
}

impl Thrown {
    fn is(&self, name: &str, message: &str) -> bool {
        self.name.as_deref() == Some(name) && self.message == message
    }

    /// The message, led by the error's kind unless it is a plain `Error` (`TypeError: …`).
    fn describe(self) -> String {
        match self.name {
            Some(name) if name != "Error" && !name.is_empty() && self.message.is_empty() => name,
            Some(name) if name != "Error" && !name.is_empty() => {
                format!("{name}: {}", self.message)
            }
            _ if self.message.is_empty() => "Error".into(),
            _ => self.message,
        }
    }
}

pub(super) fn run(
    source: &str,
    input: &Json,
    host: Arc<dyn Host>,
    limits: &Limits,
) -> Result<RunOutput, RunError> {
    let started = Instant::now();
    let deadline = started + limits.time;
    let runtime = Runtime::new().map_err(|e| RunError::Engine(e.to_string()))?;
    runtime.set_memory_limit(limits.memory_bytes);
    runtime.set_max_stack_size(limits.stack_bytes);
    let timed_out = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&timed_out);
    // Polled by the interpreter every few thousand operations. Once the deadline has passed it
    // keeps answering "stop", so code can never resume, not even from a promise job.
    runtime.set_interrupt_handler(Some(Box::new(move || {
        let stop = Instant::now() >= deadline;
        if stop {
            flag.store(true, Ordering::Relaxed);
        }
        stop
    })));
    let context = Context::full(&runtime).map_err(|e| classify_engine_error(&e, limits))?;

    let logs = Rc::new(RefCell::new(Logs::default()));
    let outcome = context.with(|ctx| execute(&ctx, source, input, host, &logs, limits));
    let duration = started.elapsed();
    // Frees the `ctx` functions, and with them their handles on `logs` and the host.
    drop(context);
    drop(runtime);

    let result = if timed_out.load(Ordering::Relaxed) {
        // Whatever the engine reported after the interrupt (an "interrupted" error, a rejected
        // promise, a failed conversion), the cause is the time limit.
        Err(RunError::TimeLimit { limit: limits.time })
    } else {
        match outcome {
            Outcome::Done(text) if text.len() > limits.output_bytes => {
                Err(RunError::OutputTooLarge {
                    size: text.len(),
                    limit_bytes: limits.output_bytes,
                })
            }
            Outcome::Done(text) => {
                serde_json::from_str(&text).map_err(|e| RunError::NotSerializable(e.to_string()))
            }
            Outcome::OutOfMemory => Err(RunError::MemoryLimit {
                limit_bytes: limits.memory_bytes,
            }),
            Outcome::Thrown(t) if t.is("RangeError", "Maximum call stack size exceeded") => {
                Err(RunError::StackLimit {
                    limit_bytes: limits.stack_bytes,
                })
            }
            Outcome::Thrown(mut t) => Err(RunError::Thrown {
                stack: t.stack.take(),
                message: t.describe(),
            }),
            Outcome::Engine(message) => Err(RunError::Engine(message)),
            Outcome::Compile(message) => Err(RunError::Compile(message)),
            Outcome::NoMain => Err(RunError::NoMain),
            Outcome::NeverSettled => Err(RunError::NeverSettled),
            Outcome::NotSerializable(message) => Err(RunError::NotSerializable(message)),
        }
    };
    let output = result?;
    let logs = Rc::try_unwrap(logs)
        .map(RefCell::into_inner)
        .unwrap_or_else(|shared| std::mem::take(&mut *shared.borrow_mut()));
    Ok(RunOutput {
        output,
        logs: logs.lines,
        logs_truncated: logs.truncated,
        duration,
    })
}

/// Errors raised by rquickjs itself rather than by JavaScript code.
fn classify_engine_error(e: &rquickjs::Error, limits: &Limits) -> RunError {
    match e {
        rquickjs::Error::Allocation => RunError::MemoryLimit {
            limit_bytes: limits.memory_bytes,
        },
        other => RunError::Engine(other.to_string()),
    }
}

fn execute<'js>(
    ctx: &Ctx<'js>,
    source: &str,
    input: &Json,
    host: Arc<dyn Host>,
    logs: &Rc<RefCell<Logs>>,
    limits: &Limits,
) -> Outcome {
    let mut options = EvalOptions::default();
    options.filename = Some(SOURCE_NAME.into());
    if let Err(e) = ctx.eval_with_options::<(), _>(source, options) {
        return match caught(ctx, e) {
            Outcome::Thrown(t) if t.name.as_deref() == Some("SyntaxError") => {
                let at = t
                    .stack
                    .as_deref()
                    .and_then(|s| s.lines().find_map(|l| l.trim().strip_prefix("at ")))
                    .map(|loc| format!(" at {loc}"))
                    .unwrap_or_default();
                Outcome::Compile(format!("{}{at}", t.message))
            }
            other => other,
        };
    }
    let main: Function<'js> = match ctx.globals().get::<_, Value<'js>>("main") {
        Ok(v) => match v.into_function() {
            Some(f) => f,
            None => return Outcome::NoMain,
        },
        Err(e) => return caught(ctx, e),
    };
    let ctx_object = match ctx_object(ctx, host, Rc::clone(logs), limits) {
        Ok(o) => o,
        Err(e) => return caught(ctx, e),
    };
    let input = match serde_json::to_string(input)
        .map_err(|e| Outcome::Engine(format!("input is not JSON: {e}")))
        .and_then(|text| ctx.json_parse(text).map_err(|e| caught(ctx, e)))
    {
        Ok(v) => v,
        Err(outcome) => return outcome,
    };

    let returned: Value<'js> = match main.call((input, ctx_object)) {
        Ok(v) => v,
        Err(e) => return caught(ctx, e),
    };
    let value = match returned.try_into_promise() {
        Ok(promise) => match settle(ctx, &promise) {
            Ok(v) => v,
            Err(outcome) => return outcome,
        },
        Err(plain) => {
            drain_jobs(ctx);
            plain
        }
    };
    match ctx.json_stringify(value) {
        Ok(Some(text)) => match text.to_string() {
            Ok(s) => Outcome::Done(s),
            Err(e) => caught(ctx, e),
        },
        // `undefined`, a function or a symbol: nothing to return.
        Ok(None) => Outcome::Done("null".into()),
        Err(e) => match caught(ctx, e) {
            Outcome::Thrown(t) if t.name.as_deref() == Some("TypeError") => {
                Outcome::NotSerializable(t.message)
            }
            other => other,
        },
    }
}

/// Runs promise jobs until `promise` settles, then runs whatever else is queued (so work the
/// function started but did not await still happens, within the time limit).
fn settle<'js>(ctx: &Ctx<'js>, promise: &Promise<'js>) -> Result<Value<'js>, Outcome> {
    while promise.state() == PromiseState::Pending {
        if !ctx.execute_pending_job() {
            return Err(Outcome::NeverSettled);
        }
    }
    drain_jobs(ctx);
    match promise.result::<Value<'js>>() {
        Some(Ok(v)) => Ok(v),
        Some(Err(e)) => Err(caught(ctx, e)),
        None => Err(Outcome::NeverSettled),
    }
}

fn drain_jobs(ctx: &Ctx<'_>) {
    while ctx.execute_pending_job() {}
}

/// Turns an rquickjs error into an outcome, taking the pending JavaScript exception if any.
///
/// Running out of heap shows up in two shapes: an `InternalError: out of memory`, or, when
/// QuickJS cannot even allocate that error object (the usual case when a bomb fills the heap
/// with small objects), a thrown `null`. No other engine path throws `null`, so a `null`
/// reaching the top is read as the memory limit; a function that deliberately throws `null`
/// is reported the same way, which is the price of not misreporting real memory bombs.
fn caught<'js>(ctx: &Ctx<'js>, error: rquickjs::Error) -> Outcome {
    match CaughtError::from_error(ctx, error) {
        CaughtError::Exception(ex)
            if ex.message().as_deref() == Some("out of memory")
                && error_name(&ex).as_deref() == Some("InternalError") =>
        {
            Outcome::OutOfMemory
        }
        CaughtError::Exception(ex) => Outcome::Thrown(Thrown {
            name: error_name(&ex),
            message: ex.message().unwrap_or_default(),
            stack: ex.stack().filter(|s| !s.is_empty()),
        }),
        CaughtError::Value(v) if v.is_null() => Outcome::OutOfMemory,
        CaughtError::Value(v) => Outcome::Thrown(Thrown {
            name: None,
            message: describe(ctx, v),
            stack: None,
        }),
        CaughtError::Error(rquickjs::Error::Allocation) => Outcome::OutOfMemory,
        CaughtError::Error(e) => Outcome::Engine(e.to_string()),
    }
}

fn error_name(ex: &Exception<'_>) -> Option<String> {
    ex.get::<_, Option<Coerced<String>>>("name")
        .ok()
        .flatten()
        .map(|c| c.0)
}

/// A thrown non-Error value (`throw "boom"`, `reject(42)`) as text.
fn describe<'js>(ctx: &Ctx<'js>, v: Value<'js>) -> String {
    if let Some(s) = v.as_string() {
        return s.to_string().unwrap_or_default();
    }
    match ctx.json_stringify(v.clone()) {
        Ok(Some(s)) => s.to_string().unwrap_or_default(),
        _ => v
            .get::<Coerced<String>>()
            .map(|c| c.0)
            .unwrap_or_else(|_| format!("a thrown {}", v.type_name())),
    }
}

/// The `ctx` argument: `query`, `append`, `now` and `log`, nothing else.
fn ctx_object<'js>(
    ctx: &Ctx<'js>,
    host: Arc<dyn Host>,
    logs: Rc<RefCell<Logs>>,
    limits: &Limits,
) -> rquickjs::Result<Object<'js>> {
    let object = Object::new(ctx.clone())?;

    let h = Arc::clone(&host);
    let query = Function::new(
        ctx.clone(),
        move |ctx: Ctx<'js>, filter: Opt<Value<'js>>| -> rquickjs::Result<Value<'js>> {
            let filter = match filter.0 {
                Some(v) if !v.is_undefined() && !v.is_null() => to_json(&ctx, v, "ctx.query")?,
                _ => Json::Object(Default::default()),
            };
            match h.query(filter) {
                Ok(rows) => from_json(&ctx, &Json::Array(rows)),
                Err(e) => Err(Exception::throw_message(&ctx, &format!("ctx.query: {e}"))),
            }
        },
    )?
    .with_name("query")?;
    object.set("query", query)?;

    let h = Arc::clone(&host);
    let append = Function::new(
        ctx.clone(),
        move |ctx: Ctx<'js>, span: Opt<Value<'js>>| -> rquickjs::Result<Value<'js>> {
            let Some(span) = span.0 else {
                return Err(Exception::throw_message(
                    &ctx,
                    "ctx.append: expected a span object",
                ));
            };
            let span = to_json(&ctx, span, "ctx.append")?;
            match h.append(span) {
                Ok(receipt) => from_json(&ctx, &receipt),
                Err(e) => Err(Exception::throw_message(&ctx, &format!("ctx.append: {e}"))),
            }
        },
    )?
    .with_name("append")?;
    object.set("append", append)?;

    let h = host;
    let now = Function::new(ctx.clone(), move || -> String {
        ledger::span::format_time(h.now())
    })?
    .with_name("now")?;
    object.set("now", now)?;

    let (max_lines, max_bytes) = (limits.log_lines, limits.log_bytes);
    let log = Function::new(
        ctx.clone(),
        move |ctx: Ctx<'js>, args: Rest<Value<'js>>| -> rquickjs::Result<()> {
            let parts = args
                .0
                .into_iter()
                .map(|v| log_text(&ctx, v))
                .collect::<rquickjs::Result<Vec<_>>>()?;
            let line = parts.join(" ");
            let mut logs = logs.borrow_mut();
            if logs.truncated
                || logs.lines.len() >= max_lines
                || logs.bytes.saturating_add(line.len()) > max_bytes
            {
                logs.truncated = true;
            } else {
                logs.bytes += line.len();
                logs.lines.push(line);
            }
            Ok(())
        },
    )?
    .with_name("log")?;
    object.set("log", log)?;

    Ok(object)
}

/// One `ctx.log` argument: strings as they are, anything else as JSON, else as `String(v)`.
fn log_text<'js>(ctx: &Ctx<'js>, v: Value<'js>) -> rquickjs::Result<String> {
    if let Some(s) = v.as_string() {
        return s.to_string();
    }
    if v.is_error() {
        return Ok(v.get::<Coerced<String>>()?.0);
    }
    match ctx.json_stringify(v.clone())? {
        Some(s) => s.to_string(),
        None => Ok(v.get::<Coerced<String>>()?.0),
    }
}

/// A JavaScript value handed to the host, as JSON.
fn to_json<'js>(ctx: &Ctx<'js>, v: Value<'js>, what: &str) -> rquickjs::Result<Json> {
    let text = match ctx.json_stringify(v)? {
        Some(s) => s.to_string()?,
        None => {
            return Err(Exception::throw_type(
                ctx,
                &format!("{what}: argument is not JSON"),
            ));
        }
    };
    serde_json::from_str(&text)
        .map_err(|e| Exception::throw_type(ctx, &format!("{what}: argument is not JSON: {e}")))
}

/// A host result handed to JavaScript.
fn from_json<'js>(ctx: &Ctx<'js>, v: &Json) -> rquickjs::Result<Value<'js>> {
    let text = serde_json::to_string(v)
        .map_err(|e| Exception::throw_internal(ctx, &format!("host result is not JSON: {e}")))?;
    ctx.json_parse(text)
}
