//! `ll-eval`: prompt fixtures run against the chat agent (issue 11). A suite is a YAML file
//! of questions, who asks them and what a good answer must do ([`fixture`], [`assertion`]);
//! the runner asks them of the agent in this process or of a running server ([`target`]),
//! judges each attempt, records the run as `eval_run` / `eval_case` spans ([`runner`]) and
//! prints a table or writes JSON Lines / JUnit ([`report`]). [`gate`] is the same runner as the
//! prompt_eval kernel's evaluator, handed to `serve` by the `logline` binary. The command line is [`cli`];
//! `logline eval` is the same entry point.
#![forbid(unsafe_code)]

pub mod assertion;
pub mod cli;
pub mod fixture;
pub mod gate;
mod js;
pub mod report;
pub mod runner;
pub mod target;
