//! The payloads of events one agent publishes and others handle (reference section
//! 6): typed here, so the publisher and every handler agree on the fields.

use serde::{Deserialize, Serialize};

/// `cluster/event/module-added`: a module was installed.
pub const MODULE_ADDED: &str = "module-added";
/// `cluster/event/module-removed`: a module was removed (its routes, grants... go).
pub const MODULE_REMOVED: &str = "module-removed";

/// The payload of [`MODULE_ADDED`] and [`MODULE_REMOVED`] (NS8's `{module, node}`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleEvent {
    pub module: String,
    pub node: u32,
}

/// `cluster/event/backup-destination-changed`: destinations were added, altered or
/// removed.
pub const BACKUP_DESTINATION_CHANGED: &str = "backup-destination-changed";

/// The payload of [`BACKUP_DESTINATION_CHANGED`] (NS8's).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DestinationsChanged {
    pub destination_ids: Vec<String>,
}

/// `cluster/event/backup-schedule-changed`: plans were added, altered or removed.
pub const BACKUP_SCHEDULE_CHANGED: &str = "backup-schedule-changed";

/// The payload of [`BACKUP_SCHEDULE_CHANGED`] (NS8's: the ids as strings).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchedulesChanged {
    pub backup_ids: Vec<String>,
}

/// `node/<N>/event/backup-status-changed`: a module's run of a plan ended.
pub const BACKUP_STATUS_CHANGED: &str = "backup-status-changed";

/// The payload of [`BACKUP_STATUS_CHANGED`] (NS8's).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupStatusChanged {
    pub node_id: u32,
    pub module_id: String,
    pub backup_id: u64,
}

/// `cluster/event/backup-drill-finished` (beyond NS8): a module's drill ended; the
/// payload is its `DrillReport` with the plan's `backup_id`.
pub const BACKUP_DRILL_FINISHED: &str = "backup-drill-finished";

/// The payload of [`BACKUP_DRILL_FINISHED`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DrillFinished {
    pub backup_id: u64,
    #[serde(flatten)]
    pub report: crate::actions::backup::DrillReport,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ns8s_module_event_shape() {
        let e = ModuleEvent { module: "dokuwiki1".into(), node: 1 };
        let text = serde_json::to_string(&e).unwrap();
        assert_eq!(text, r#"{"module":"dokuwiki1","node":1}"#);
        assert_eq!(serde_json::from_str::<ModuleEvent>(&text).unwrap(), e);
    }
}
