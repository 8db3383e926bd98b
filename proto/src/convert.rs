//! Conversions between generated wire types and `arachne_shared` types. Incoming messages are validated here,
//! so a malformed peer message becomes an [`Error::Invalid`] naming the field instead of a panic further in.

use arachne_shared::cluster::{
    Assignment, BlobChunk, HeldTask, Leftover, MasterToWorker, ProcessStart, Registration, TaskEnd,
    TaskReport, WorkerEnvelope, WorkerToMaster,
};
use arachne_shared::files::{FileEntry, Manifest, is_sha256};
use arachne_shared::node::NodeMetrics;
use arachne_shared::spider::{RunSettings, validate_relative_path};
use arachne_shared::{
    ItemRecord, LogLine, LogStream, TaskId, TaskOutcome, from_micros, from_millis, to_millis,
};

use crate::pb::{self, master_message, worker_message};
use crate::{Error, Result};

fn missing(field: &str) -> Error {
    Error::Invalid(format!("missing field `{field}`"))
}

fn task_id(field: &str, value: &str) -> Result<TaskId> {
    value
        .parse()
        .map_err(|err| Error::Invalid(format!("`{field}` is not a task id ({value:?}): {err}")))
}

/// Each of `items` converted, or the first failure.
fn each<T, U>(items: Vec<T>, convert: impl FnMut(T) -> Result<U>) -> Result<Vec<U>> {
    items.into_iter().map(convert).collect()
}

impl TryFrom<pb::WorkerMessage> for WorkerToMaster {
    type Error = Error;

    fn try_from(message: pb::WorkerMessage) -> Result<Self> {
        Ok(match message.msg.ok_or_else(|| missing("msg"))? {
            worker_message::Msg::Register(r) => {
                if r.name.is_empty() {
                    return Err(missing("register.name"));
                }
                WorkerToMaster::Register(Registration {
                    name: r.name,
                    max_runners: r.max_runners,
                    version: r.version,
                    labels: r.labels.into_iter().collect(),
                    running: each(r.running, |held| {
                        let task_id = task_id("register.running.task_id", &held.task_id)?;
                        Ok(HeldTask {
                            task_id,
                            lease: held.lease,
                        })
                    })?,
                    leftovers: each(r.leftovers, |left| {
                        let task_id = task_id("register.leftovers.task_id", &left.task_id)?;
                        Ok(Leftover {
                            task_id,
                            pids: left.pids,
                        })
                    })?,
                    cached_versions: each(r.cached_versions, |version| {
                        match is_sha256(&version) {
                            true => Ok(version),
                            false => Err(Error::Invalid(format!(
                                "`register.cached_versions` holds {version:?}, not a version hash"
                            ))),
                        }
                    })?,
                })
            }
            worker_message::Msg::Heartbeat(h) => WorkerToMaster::Heartbeat {
                beat: h.beat,
                metrics: NodeMetrics {
                    cpu_percent: h.cpu_percent,
                    memory_used_bytes: h.memory_used_bytes,
                    memory_total_bytes: h.memory_total_bytes,
                    disk_used_bytes: h.disk_used_bytes,
                    disk_total_bytes: h.disk_total_bytes,
                    running: h.running,
                },
            },
            worker_message::Msg::TaskStarted(s) => WorkerToMaster::TaskStarted {
                task_id: task_id("task_started.task_id", &s.task_id)?,
                lease: s.lease,
                pid: s.pid,
                at: from_micros(s.at_us),
            },
            worker_message::Msg::Logs(batch) => WorkerToMaster::Logs {
                task_id: task_id("logs.task_id", &batch.task_id)?,
                lease: batch.lease,
                lines: batch
                    .lines
                    .into_iter()
                    .map(|line| LogLine {
                        seq: line.seq,
                        stream: match pb::LogStream::try_from(line.stream) {
                            Ok(pb::LogStream::Stderr) => LogStream::Stderr,
                            Ok(pb::LogStream::System) => LogStream::System,
                            _ => LogStream::Stdout,
                        },
                        text: line.text,
                        at: from_millis(line.at_ms),
                    })
                    .collect(),
            },
            worker_message::Msg::Items(batch) => WorkerToMaster::Items {
                task_id: task_id("items.task_id", &batch.task_id)?,
                lease: batch.lease,
                items: batch
                    .items
                    .into_iter()
                    .map(|item| {
                        let bad = || {
                            Error::Invalid(format!(
                                "items[seq={}].json is not a JSON object",
                                item.seq
                            ))
                        };
                        // Validates the text without decoding it into a map.
                        let raw = serde_json::value::RawValue::from_string(item.json)
                            .map_err(|_| bad())?;
                        ItemRecord::new(item.seq, raw).map_err(|_| bad())
                    })
                    .collect::<Result<_>>()?,
            },
            worker_message::Msg::Report(r) => WorkerToMaster::Report(TaskReport {
                task_id: task_id("report.task_id", &r.task_id)?,
                lease: r.lease,
                status: r
                    .status_json
                    .map(|json| serde_json::from_str(&json))
                    .transpose()
                    .map_err(|e| Error::Invalid(format!("report.status_json: {e}")))?,
                errors: r
                    .errors_json
                    .iter()
                    .map(|json| serde_json::from_str(json))
                    .collect::<Result<_, _>>()
                    .map_err(|e| Error::Invalid(format!("report.errors_json: {e}")))?,
                errors_before: r.errors_before,
                at: from_millis(r.at_ms),
            }),
            worker_message::Msg::TaskEnded(e) => {
                let outcome = match pb::Outcome::try_from(e.outcome) {
                    Ok(pb::Outcome::Finished) => TaskOutcome::Finished,
                    Ok(pb::Outcome::Error) => TaskOutcome::Error {
                        exit_code: e.exit_code,
                        signal: e.signal,
                        message: e.message,
                    },
                    Ok(pb::Outcome::Cancelled) => TaskOutcome::Cancelled { reason: e.message },
                    Ok(pb::Outcome::Abnormal) => TaskOutcome::Abnormal { reason: e.message },
                    _ => {
                        return Err(Error::Invalid(format!(
                            "task_ended.outcome {} is unknown",
                            e.outcome
                        )));
                    }
                };
                WorkerToMaster::TaskEnded(TaskEnd {
                    task_id: task_id("task_ended.task_id", &e.task_id)?,
                    lease: e.lease,
                    outcome,
                    at: from_millis(e.at_ms),
                    peak_rss_bytes: e.peak_rss_bytes,
                    started: e.started.map(|s| ProcessStart {
                        pid: s.pid,
                        at: from_micros(s.at_us),
                    }),
                })
            }
            worker_message::Msg::TaskRefused(r) => WorkerToMaster::TaskRefused {
                task_id: task_id("task_refused.task_id", &r.task_id)?,
                lease: r.lease,
                reason: r.reason,
            },
        })
    }
}

impl From<WorkerToMaster> for pb::WorkerMessage {
    fn from(message: WorkerToMaster) -> Self {
        let msg = match message {
            WorkerToMaster::Register(r) => worker_message::Msg::Register(pb::Register {
                name: r.name,
                max_runners: r.max_runners,
                version: r.version,
                labels: r.labels.into_iter().collect(),
                running: r
                    .running
                    .iter()
                    .map(|held| pb::HeldTask {
                        task_id: held.task_id.to_string(),
                        lease: held.lease,
                    })
                    .collect(),
                leftovers: r
                    .leftovers
                    .into_iter()
                    .map(|left| pb::Leftover {
                        task_id: left.task_id.to_string(),
                        pids: left.pids,
                    })
                    .collect(),
                cached_versions: r.cached_versions,
            }),
            WorkerToMaster::Heartbeat { beat, metrics: m } => {
                worker_message::Msg::Heartbeat(pb::Heartbeat {
                    beat,
                    running: m.running,
                    cpu_percent: m.cpu_percent,
                    memory_used_bytes: m.memory_used_bytes,
                    memory_total_bytes: m.memory_total_bytes,
                    disk_used_bytes: m.disk_used_bytes,
                    disk_total_bytes: m.disk_total_bytes,
                })
            }
            WorkerToMaster::TaskStarted {
                task_id,
                lease,
                pid,
                at,
            } => worker_message::Msg::TaskStarted(pb::TaskStarted {
                task_id: task_id.to_string(),
                lease,
                pid,
                at_us: at.timestamp_micros(),
            }),
            WorkerToMaster::Logs {
                task_id,
                lease,
                lines,
            } => worker_message::Msg::Logs(pb::LogBatch {
                task_id: task_id.to_string(),
                lease,
                lines: lines
                    .into_iter()
                    .map(|line| pb::LogLine {
                        seq: line.seq,
                        stream: match line.stream {
                            LogStream::Stdout => pb::LogStream::Stdout,
                            LogStream::Stderr => pb::LogStream::Stderr,
                            LogStream::System => pb::LogStream::System,
                        } as i32,
                        text: line.text,
                        at_ms: to_millis(line.at),
                    })
                    .collect(),
            }),
            WorkerToMaster::Items {
                task_id,
                lease,
                items,
            } => worker_message::Msg::Items(pb::ItemBatch {
                task_id: task_id.to_string(),
                lease,
                items: items
                    .into_iter()
                    .map(|item| pb::Item {
                        seq: item.seq,
                        json: item.data.get().to_owned(),
                    })
                    .collect(),
            }),
            WorkerToMaster::Report(TaskReport {
                task_id,
                lease,
                status,
                errors,
                errors_before,
                at,
            }) => {
                // Payloads are plain data, so serialising them cannot fail.
                worker_message::Msg::Report(pb::TaskReport {
                    task_id: task_id.to_string(),
                    lease,
                    status_json: status
                        .as_ref()
                        .map(|s| serde_json::to_string(s).expect("status serialises")),
                    errors_json: errors
                        .iter()
                        .map(|e| serde_json::to_string(e).expect("error serialises"))
                        .collect(),
                    at_ms: to_millis(at),
                    errors_before,
                })
            }
            WorkerToMaster::TaskEnded(TaskEnd {
                task_id,
                lease,
                outcome,
                at,
                peak_rss_bytes,
                started,
            }) => {
                let (outcome, exit_code, signal, message) = match outcome {
                    TaskOutcome::Finished => (pb::Outcome::Finished, Some(0), None, String::new()),
                    TaskOutcome::Error {
                        exit_code,
                        signal,
                        message,
                    } => (pb::Outcome::Error, exit_code, signal, message),
                    TaskOutcome::Cancelled { reason } => {
                        (pb::Outcome::Cancelled, None, None, reason)
                    }
                    TaskOutcome::Abnormal { reason } => (pb::Outcome::Abnormal, None, None, reason),
                };
                worker_message::Msg::TaskEnded(pb::TaskEnded {
                    task_id: task_id.to_string(),
                    lease,
                    outcome: outcome as i32,
                    exit_code,
                    signal,
                    message,
                    at_ms: to_millis(at),
                    peak_rss_bytes,
                    started: started.map(|s| pb::ProcessStart {
                        pid: s.pid,
                        at_us: s.at.timestamp_micros(),
                    }),
                })
            }
            WorkerToMaster::TaskRefused {
                task_id,
                lease,
                reason,
            } => worker_message::Msg::TaskRefused(pb::TaskRefused {
                task_id: task_id.to_string(),
                lease,
                reason,
            }),
        };
        pb::WorkerMessage {
            seq: 0,
            msg: Some(msg),
        }
    }
}

impl TryFrom<pb::WorkerMessage> for WorkerEnvelope {
    type Error = Error;

    fn try_from(message: pb::WorkerMessage) -> Result<Self> {
        let seq = message.seq;
        Ok(WorkerEnvelope {
            seq,
            message: WorkerToMaster::try_from(message)?,
        })
    }
}

impl From<WorkerEnvelope> for pb::WorkerMessage {
    fn from(envelope: WorkerEnvelope) -> Self {
        pb::WorkerMessage {
            seq: envelope.seq,
            ..envelope.message.into()
        }
    }
}

impl TryFrom<pb::MasterMessage> for MasterToWorker {
    type Error = Error;

    fn try_from(message: pb::MasterMessage) -> Result<Self> {
        Ok(match message.msg.ok_or_else(|| missing("msg"))? {
            master_message::Msg::Registered(r) => MasterToWorker::Registered {
                lease_ms: r.lease_ms,
            },
            master_message::Msg::Heard(h) => MasterToWorker::Heard { beat: h.beat },
            master_message::Msg::Assign(a) => MasterToWorker::Assign(Assignment {
                task_id: task_id("assign.task_id", &a.task_id)?,
                lease: a.lease,
                spider_id: a.spider_id.parse().map_err(|err| {
                    Error::Invalid(format!("`assign.spider_id` is not a spider id: {err}"))
                })?,
                spider_name: a.spider_name,
                version: a.version,
                command_line: a.command_line,
                settings: RunSettings {
                    env: a.env.into_iter().collect(),
                    timeout_secs: a.timeout_secs,
                    memory_limit_mib: a.memory_limit_mib,
                    cancel_grace_secs: a.cancel_grace_secs,
                    ..RunSettings::default()
                },
            }),
            master_message::Msg::SetMaxRunners(m) => MasterToWorker::SetMaxRunners {
                max_runners: m.max_runners,
            },
            master_message::Msg::Cancel(c) => MasterToWorker::Cancel {
                task_id: task_id("cancel.task_id", &c.task_id)?,
                reason: c.reason,
            },
            master_message::Msg::Ack(a) => MasterToWorker::Ack { seq: a.seq },
            master_message::Msg::Forget(f) => MasterToWorker::Forget {
                versions: f.versions,
            },
        })
    }
}

impl From<MasterToWorker> for pb::MasterMessage {
    fn from(message: MasterToWorker) -> Self {
        let msg = match message {
            MasterToWorker::Registered { lease_ms } => {
                master_message::Msg::Registered(pb::Registered { lease_ms })
            }
            MasterToWorker::Heard { beat } => master_message::Msg::Heard(pb::Heard { beat }),
            MasterToWorker::Forget { versions } => {
                master_message::Msg::Forget(pb::Forget { versions })
            }
            MasterToWorker::Assign(a) => master_message::Msg::Assign(pb::AssignTask {
                task_id: a.task_id.to_string(),
                lease: a.lease,
                spider_id: a.spider_id.to_string(),
                spider_name: a.spider_name,
                version: a.version,
                command_line: a.command_line,
                env: a.settings.env.into_iter().collect(),
                timeout_secs: a.settings.timeout_secs,
                memory_limit_mib: a.settings.memory_limit_mib,
                cancel_grace_secs: a.settings.cancel_grace_secs,
            }),
            MasterToWorker::SetMaxRunners { max_runners } => {
                master_message::Msg::SetMaxRunners(pb::SetMaxRunners { max_runners })
            }
            MasterToWorker::Cancel { task_id, reason } => {
                master_message::Msg::Cancel(pb::CancelTask {
                    task_id: task_id.to_string(),
                    reason,
                })
            }
            MasterToWorker::Ack { seq } => master_message::Msg::Ack(pb::Ack { seq }),
        };
        pb::MasterMessage { msg: Some(msg) }
    }
}

impl From<pb::BlobChunk> for BlobChunk {
    fn from(c: pb::BlobChunk) -> Self {
        BlobChunk {
            sha256: c.sha256,
            data: c.data,
            last: c.last,
        }
    }
}

impl From<BlobChunk> for pb::BlobChunk {
    fn from(c: BlobChunk) -> Self {
        pb::BlobChunk {
            sha256: c.sha256,
            data: c.data,
            last: c.last,
        }
    }
}

impl From<&FileEntry> for pb::FileEntry {
    fn from(f: &FileEntry) -> Self {
        pb::FileEntry {
            path: f.path.clone(),
            size: f.size,
            mode: f.mode,
            sha256: f.sha256.clone(),
        }
    }
}

impl From<&Manifest> for pb::ManifestReply {
    fn from(m: &Manifest) -> Self {
        pb::ManifestReply {
            files: m.files.iter().map(pb::FileEntry::from).collect(),
        }
    }
}

impl TryFrom<pb::ManifestReply> for Manifest {
    type Error = Error;

    /// Checks what the rest of the worker relies on: safe relative paths, each once, and content names.
    fn try_from(reply: pb::ManifestReply) -> Result<Self> {
        let mut files = Vec::with_capacity(reply.files.len());
        for f in reply.files {
            validate_relative_path(&f.path)
                .map_err(|e| Error::Invalid(format!("manifest: {e}")))?;
            if !is_sha256(&f.sha256) {
                return Err(Error::Invalid(format!(
                    "manifest: {} has no valid sha256",
                    f.path
                )));
            }
            files.push(FileEntry {
                path: f.path,
                size: f.size,
                mode: f.mode & 0o777,
                sha256: f.sha256,
            });
        }
        let manifest = Manifest::new(files);
        if let Some(pair) = manifest.files.windows(2).find(|w| w[0].path == w[1].path) {
            return Err(Error::Invalid(format!(
                "manifest: {} is listed twice",
                pair[0].path
            )));
        }
        Ok(manifest)
    }
}

#[cfg(test)]
mod tests {
    use arachne_shared::SpiderId;
    use chrono::Utc;

    use super::*;

    fn round_trip_worker(message: WorkerToMaster) {
        let wire = pb::WorkerMessage::from(message.clone());
        assert_eq!(WorkerToMaster::try_from(wire).unwrap(), message);
    }

    #[test]
    fn worker_messages_survive_the_wire() {
        let task_id = TaskId::new();
        // Millisecond precision is what the wire keeps.
        let at = from_millis(to_millis(Utc::now()));
        round_trip_worker(WorkerToMaster::Register(Registration {
            name: "n1".into(),
            max_runners: 4,
            version: "0.1.0".into(),
            labels: [("region".to_owned(), "eu".to_owned())].into(),
            running: vec![HeldTask { task_id, lease: 3 }],
            leftovers: vec![Leftover {
                task_id,
                pids: vec![12, 13],
            }],
            cached_versions: vec!["a".repeat(64)],
        }));
        round_trip_worker(WorkerToMaster::Heartbeat {
            beat: 9,
            metrics: NodeMetrics {
                cpu_percent: 12.5,
                memory_used_bytes: 1,
                memory_total_bytes: 2,
                disk_used_bytes: 3,
                disk_total_bytes: 4,
                running: 5,
            },
        });
        round_trip_worker(WorkerToMaster::TaskRefused {
            task_id,
            lease: 2,
            reason: "no free runner slot".into(),
        });
        let envelope = WorkerEnvelope {
            seq: 77,
            message: WorkerToMaster::TaskStarted {
                task_id,
                lease: 4,
                pid: 1,
                at,
            },
        };
        let wire = pb::WorkerMessage::from(envelope.clone());
        assert_eq!(WorkerEnvelope::try_from(wire).unwrap(), envelope);
        // A start keeps microseconds: it is compared with a creation often less than a millisecond earlier.
        let started_at = from_micros(Utc::now().timestamp_micros());
        round_trip_worker(WorkerToMaster::TaskStarted {
            task_id,
            lease: 4,
            pid: 42,
            at: started_at,
        });
        round_trip_worker(WorkerToMaster::Logs {
            task_id,
            lease: 4,
            lines: vec![LogLine {
                seq: 1,
                stream: LogStream::Stderr,
                text: "é".into(),
                at,
            }],
        });
        round_trip_worker(WorkerToMaster::Items {
            task_id,
            lease: 4,
            items: vec![ItemRecord::from_object(
                7,
                serde_json::json!({"a": [1]}).as_object().unwrap(),
            )],
        });
        round_trip_worker(WorkerToMaster::Report(TaskReport {
            task_id,
            lease: 4,
            status: Some(arachne_shared::ipc::StatusPayload {
                progress: Some(0.5),
                message: None,
                stats: None,
            }),
            errors: vec![arachne_shared::ipc::ErrorPayload {
                message: "e".into(),
                fatal: true,
                extra: Default::default(),
            }],
            errors_before: 3,
            at,
        }));
        for outcome in [
            TaskOutcome::Finished,
            TaskOutcome::Error {
                exit_code: Some(3),
                signal: None,
                message: "exit status 3".into(),
            },
            TaskOutcome::Cancelled {
                reason: "cancelled by user".into(),
            },
            TaskOutcome::Abnormal {
                reason: "lost".into(),
            },
        ] {
            for started in [
                None,
                Some(ProcessStart {
                    pid: 42,
                    at: started_at,
                }),
            ] {
                round_trip_worker(WorkerToMaster::TaskEnded(TaskEnd {
                    task_id,
                    lease: 4,
                    outcome: outcome.clone(),
                    at,
                    peak_rss_bytes: Some(4096),
                    started,
                }));
            }
        }
    }

    #[test]
    fn master_messages_survive_the_wire() {
        let message = MasterToWorker::Assign(Assignment {
            task_id: TaskId::new(),
            lease: 5,
            spider_id: SpiderId::new(),
            spider_name: "s".into(),
            version: "v".into(),
            command_line: "python3 main.py".into(),
            settings: RunSettings {
                env: [("K".to_owned(), "v".to_owned())].into(),
                timeout_secs: Some(3),
                memory_limit_mib: None,
                cancel_grace_secs: Some(1),
                ..RunSettings::default()
            },
        });
        for message in [
            MasterToWorker::Ack { seq: 9 },
            MasterToWorker::Registered { lease_ms: 10_000 },
            MasterToWorker::Heard { beat: 12 },
            MasterToWorker::Forget {
                versions: vec!["b".repeat(64)],
            },
        ] {
            assert_eq!(
                MasterToWorker::try_from(pb::MasterMessage::from(message.clone())).unwrap(),
                message
            );
        }
        assert_eq!(
            MasterToWorker::try_from(pb::MasterMessage::from(message.clone())).unwrap(),
            message
        );
    }

    #[test]
    fn malformed_messages_name_the_field() {
        let err = WorkerToMaster::try_from(pb::WorkerMessage { seq: 0, msg: None }).unwrap_err();
        assert!(err.to_string().contains("`msg`"), "{err}");
        let err = WorkerToMaster::try_from(pb::WorkerMessage {
            seq: 0,
            msg: Some(worker_message::Msg::Items(pb::ItemBatch {
                task_id: TaskId::new().to_string(),
                lease: 1,
                items: vec![pb::Item {
                    seq: 1,
                    json: "[1]".into(),
                }],
            })),
        })
        .unwrap_err();
        assert!(err.to_string().contains("items[seq=1]"), "{err}");
        let err = WorkerToMaster::try_from(pb::WorkerMessage {
            seq: 0,
            msg: Some(worker_message::Msg::Heartbeat(pb::Heartbeat::default())),
        });
        assert!(err.is_ok());
        let err = WorkerToMaster::try_from(pb::WorkerMessage {
            seq: 0,
            msg: Some(worker_message::Msg::TaskStarted(pb::TaskStarted {
                task_id: "nope".into(),
                pid: 1,
                ..Default::default()
            })),
        })
        .unwrap_err();
        assert!(err.to_string().contains("task_started.task_id"), "{err}");
    }
}
