//! The audit trail: one JSON line per event, either to the log (target `ferry::audit`) or
//! appended to a file by one writer thread fed through a bounded queue, so a request never
//! waits on the disk. Each replica writes its own trail; ship them with the logs.

use crate::config::AuditConfig;
use crate::metrics::Metrics;
use serde::Serialize;
use std::io::Write;
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;

/// Events the file writer may fall behind by before new ones are dropped (and counted).
const QUEUE: usize = 65_536;

/// How an audited request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// It did what it asked.
    Success,
    /// It was allowed and failed (bad input, a conflict, an outage).
    Failure,
    /// Authentication or authorization refused it.
    Denied,
}

impl Outcome {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Failure => "failure",
            Self::Denied => "denied",
        }
    }
}

/// One audit event.
#[derive(Debug, Clone, Serialize)]
pub struct AuditEvent {
    /// When, RFC 3339 with milliseconds (filled in when recorded).
    pub time: String,
    /// Who: a principal's ARN, `anonymous`, or a worker (`ferry:lifecycle`).
    pub principal: String,
    /// The client's address, for requests.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    /// `registry` (the /v2/ API), `ecr` (the ECR API) or `worker`.
    pub api: &'static str,
    /// The endpoint or operation (`manifest_put`, `PutImage`, `lifecycle`).
    pub operation: &'static str,
    /// The ECR action it needed (`ecr:PutImage`).
    pub action: &'static str,
    /// The repository, when it names one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    /// The tag or digest, when it names one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    /// The HTTP status answered, for requests.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// How it ended.
    pub outcome: Outcome,
    /// Why it failed or was refused, or what a worker did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl AuditEvent {
    /// An event with this outcome and nothing else said yet.
    pub fn new(outcome: Outcome) -> Self {
        Self {
            time: String::new(),
            principal: String::new(),
            client: None,
            api: "",
            operation: "",
            action: "",
            repository: None,
            reference: None,
            status: None,
            outcome,
            detail: None,
        }
    }
}

enum Sink {
    Off,
    Log,
    File(SyncSender<String>),
}

/// Where audit events go. Dropping it waits for the file writer to write what was queued, so
/// a command that exits right after its work (`ferry lifecycle run`) loses no line.
pub struct Audit {
    sink: Sink,
    pulls: bool,
    metrics: Option<Arc<Metrics>>,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Audit {
    fn drop(&mut self) {
        // Closing the queue ends the writer once it has written everything queued.
        self.sink = Sink::Off;
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

impl Audit {
    /// Events to the log, pulls not recorded (the default before start-up reads the config).
    pub fn to_log() -> Self {
        Self { sink: Sink::Log, pulls: false, metrics: None, writer: None }
    }

    /// As `config` says: off, to the log, or appended to a file (opened now, so a path that
    /// cannot be written fails start-up).
    pub fn open(config: &AuditConfig, metrics: Arc<Metrics>) -> std::io::Result<Self> {
        let mut writer = None;
        let sink = match (config.enabled, config.path.as_str()) {
            (false, _) => Sink::Off,
            (true, "") => Sink::Log,
            (true, path) => {
                if let Some(dir) = std::path::Path::new(path).parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir)?;
                }
                let file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
                let (tx, rx) = sync_channel::<String>(QUEUE);
                writer =
                    Some(std::thread::Builder::new().name("ferry-audit".into()).spawn(move || write_lines(file, &rx))?);
                Sink::File(tx)
            }
        };
        Ok(Self { sink, pulls: config.pulls, metrics: Some(metrics), writer })
    }

    /// Whether manifest pulls are recorded.
    pub fn records_pulls(&self) -> bool {
        self.pulls && !matches!(self.sink, Sink::Off)
    }

    /// Records one event (stamped with the time now).
    pub fn record(&self, mut event: AuditEvent) {
        if matches!(self.sink, Sink::Off) {
            return;
        }
        event.time = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
        if let Some(m) = &self.metrics {
            m.audit.events.with_label_values(&[event.outcome.as_str()]).inc();
        }
        let Ok(line) = serde_json::to_string(&event) else { return };
        match &self.sink {
            Sink::Off => {}
            Sink::Log => tracing::info!(target: "ferry::audit", event = %line, "audit"),
            Sink::File(tx) => match tx.try_send(line) {
                Ok(()) => {}
                Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                    if let Some(m) = &self.metrics {
                        m.audit.dropped.inc();
                    }
                }
            },
        }
    }
}

/// The file writer: each line whole, flushed whenever the queue runs dry, until every sender
/// is gone.
fn write_lines(file: std::fs::File, rx: &std::sync::mpsc::Receiver<String>) {
    let mut out = std::io::BufWriter::new(file);
    while let Ok(line) = rx.recv() {
        let mut write = |line: &str| {
            if let Err(e) = out.write_all(line.as_bytes()).and_then(|()| out.write_all(b"\n")) {
                tracing::error!(error = %e, "cannot write the audit file");
            }
        };
        write(&line);
        while let Ok(more) = rx.try_recv() {
            write(&more);
        }
        if let Err(e) = out.flush() {
            tracing::error!(error = %e, "cannot write the audit file");
        }
    }
}
