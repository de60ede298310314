//! What an apply reports while it runs: [`Event`]s, one per step transition or progress tick.
//! `--json` prints them one object per line (schema: `schemas/events.schema.json`); a terminal
//! gets a live display, anything else plain lines.

use super::report::ApplyReport;
use crate::state::journal::Outcome;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde::Serialize;
use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// One thing that happened during an apply, rollback or resume.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    ApplyStarted {
        apply_id: String,
        /// `apply`, `resume` or `rollback`.
        command: String,
        steps: usize,
        parallelism: usize,
    },
    StepStarted {
        step: usize,
        key: String,
        kind: String,
        target: String,
    },
    StepProgress {
        step: usize,
        key: String,
        percent: u8,
        bytes_processed: u64,
        bytes_total: u64,
    },
    StepDone {
        step: usize,
        key: String,
        duration_ms: u64,
        /// Of `duration_ms`, the time the action took; the rest went to checking the
        /// landscape before and after it.
        action_ms: u64,
    },
    StepSkipped {
        step: usize,
        key: String,
        reason: String,
    },
    StepFailed {
        step: usize,
        key: String,
        error: String,
    },
    RollbackStarted {
        reason: String,
    },
    UndoStarted {
        step: usize,
        key: String,
    },
    UndoDone {
        step: usize,
        key: String,
        duration_ms: u64,
    },
    UndoSkipped {
        step: usize,
        key: String,
        reason: String,
    },
    UndoFailed {
        step: usize,
        key: String,
        error: String,
    },
    RollbackDone {
        undone: usize,
        /// The point of no return or the failed undo where rollback stopped, if it did.
        stopped_at: Option<String>,
    },
    Interrupted {
        reason: String,
    },
    ApplyDone {
        outcome: Outcome,
        duration_ms: u64,
    },
}

/// An event with the time since the command started.
#[derive(Debug, Clone, Serialize)]
pub struct Envelope<'a> {
    pub elapsed_ms: u64,
    #[serde(flatten)]
    pub event: &'a Event,
}

/// Receives events. Called from several tasks at once; must not block for long.
pub type EventSink = Arc<dyn Fn(&Event) + Send + Sync>;

/// A sink that drops everything.
pub fn discard() -> EventSink {
    Arc::new(|_| {})
}

/// A sink that keeps every event (tests).
pub fn collect() -> (EventSink, Arc<Mutex<Vec<Event>>>) {
    let store = Arc::new(Mutex::new(Vec::new()));
    let s = store.clone();
    let sink: EventSink = Arc::new(move |e: &Event| {
        if let Ok(mut v) = s.lock() {
            v.push(e.clone());
        }
    });
    (sink, store)
}

/// Fans one event out to several sinks.
pub fn tee(sinks: Vec<EventSink>) -> EventSink {
    Arc::new(move |e: &Event| sinks.iter().for_each(|s| s(e)))
}

/// One JSON object per line on `out`.
pub fn json_lines<W: Write + Send + 'static>(out: W) -> EventSink {
    let start = Instant::now();
    let out = Mutex::new(out);
    Arc::new(move |e: &Event| {
        let env = Envelope {
            elapsed_ms: start.elapsed().as_millis() as u64,
            event: e,
        };
        if let (Ok(line), Ok(mut w)) = (serde_json::to_string(&env), out.lock()) {
            let _ = writeln!(w, "{line}");
            let _ = w.flush();
        }
    })
}

/// The one-line human text of an event.
pub fn describe(e: &Event) -> String {
    match e {
        Event::ApplyStarted {
            command,
            steps,
            parallelism,
            apply_id,
        } => format!("{command} {apply_id}: {steps} steps, parallelism {parallelism}"),
        Event::StepStarted { key, .. } => format!("{key}: started"),
        Event::StepProgress {
            key,
            percent,
            bytes_processed,
            bytes_total,
            ..
        } => format!(
            "{key}: {percent}% ({} / {} MiB)",
            bytes_processed >> 20,
            bytes_total >> 20
        ),
        Event::StepDone {
            key, duration_ms, ..
        } => format!("{key}: done in {duration_ms} ms"),
        Event::StepSkipped { key, reason, .. } => format!("{key}: skipped ({reason})"),
        Event::StepFailed { key, error, .. } => format!("{key}: FAILED: {error}"),
        Event::RollbackStarted { reason } => format!("rolling back: {reason}"),
        Event::UndoStarted { key, .. } => format!("undo {key}: started"),
        Event::UndoDone {
            key, duration_ms, ..
        } => format!("undo {key}: done in {duration_ms} ms"),
        Event::UndoSkipped { key, reason, .. } => format!("undo {key}: skipped ({reason})"),
        Event::UndoFailed { key, error, .. } => format!("undo {key}: FAILED: {error}"),
        Event::RollbackDone { undone, stopped_at } => match stopped_at {
            Some(s) => format!("rollback stopped at {s} after undoing {undone} steps"),
            None => format!("rollback done: {undone} steps undone"),
        },
        Event::Interrupted { reason } => format!("interrupted: {reason}"),
        Event::ApplyDone {
            outcome,
            duration_ms,
        } => format!(
            "finished: {} in {duration_ms} ms",
            serde_json::to_value(outcome)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default()
        ),
    }
}

/// Plain lines on `out` (not a terminal). Progress ticks are printed at 25% steps only.
pub fn plain_lines<W: Write + Send + 'static>(out: W) -> EventSink {
    let out = Mutex::new(out);
    let last: Mutex<HashMap<usize, u8>> = Mutex::new(HashMap::new());
    Arc::new(move |e: &Event| {
        if let Event::StepProgress { step, percent, .. } = e {
            let Ok(mut last) = last.lock() else { return };
            let bucket = percent / 25;
            if last.get(step) == Some(&bucket) {
                return;
            }
            last.insert(*step, bucket);
        }
        if let Ok(mut w) = out.lock() {
            let _ = writeln!(w, "{}", describe(e));
        }
    })
}

/// A live display on the terminal: one line per running step, a bar for migrations.
pub fn live() -> EventSink {
    let multi = MultiProgress::new();
    let bars: Mutex<HashMap<usize, ProgressBar>> = Mutex::new(HashMap::new());
    let spinner = ProgressStyle::with_template("{spinner} {msg} {elapsed}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner());
    let bar = ProgressStyle::with_template("{msg} [{bar:30}] {percent}% {bytes}/{total_bytes}")
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    Arc::new(move |e: &Event| {
        let Ok(mut bars) = bars.lock() else { return };
        match e {
            Event::StepStarted { step, key, .. } => {
                let pb = multi.add(ProgressBar::new_spinner());
                pb.set_style(spinner.clone());
                pb.set_message(key.clone());
                pb.enable_steady_tick(std::time::Duration::from_millis(120));
                bars.insert(*step, pb);
            }
            Event::StepProgress {
                step,
                bytes_processed,
                bytes_total,
                ..
            } => {
                if let Some(pb) = bars.get(step) {
                    if pb.length().is_none() {
                        pb.set_style(bar.clone());
                    }
                    pb.set_length(*bytes_total);
                    pb.set_position(*bytes_processed);
                }
            }
            Event::StepDone { step, .. } | Event::StepFailed { step, .. } => {
                if let Some(pb) = bars.remove(step) {
                    pb.finish_and_clear();
                }
                let _ = multi.println(describe(e));
            }
            _ => {
                let _ = multi.println(describe(e));
            }
        }
    })
}

/// Renders the final report as text.
pub fn render_report(report: &ApplyReport) -> String {
    report.to_string()
}
