//! Every Redis key and Pub/Sub channel name the core uses.
//!
//! Callers never build these strings themselves. The NS8 schema (reference section 2.4)
//! is kept as-is; the keys marked *beyond NS8* are ours and live under prefixes the
//! agent's ACL user may already write, so no new grant is needed for them.

use crate::AgentId;

/// Results stay this long after a task ends (NS8: 8 h).
pub const RESULT_TTL_SECS: i64 = 8 * 3600;
/// TTL of a running task's context, refreshed by the heartbeat (NS8: 60 s).
pub const RUNNING_CONTEXT_TTL_SECS: i64 = 60;
/// Bound of each agent's event stream (beyond NS8): about this many recent events.
pub const EVENT_STREAM_MAXLEN: u64 = 1000;

/// The task queue: producers `LPUSH`, the agent pops from the right (FIFO).
pub fn tasks(agent: &AgentId) -> String {
    format!("{agent}/tasks")
}

/// Beyond NS8: tasks the agent has taken and not finished. The pop moves a task here
/// atomically, the final result transaction removes it, so a crash cannot lose one.
/// It lives under the private `task/` prefix because task data holds secrets.
pub fn inflight(agent: &AgentId) -> String {
    format!("task/{agent}/inflight")
}

/// Every key of `agent`'s own (`<agent>/*`), as a `SCAN` pattern.
pub fn agent_keys_pattern(agent: &AgentId) -> String {
    format!("{agent}/*")
}

/// Every task key of `agent` (`task/<agent>/*`), as a `SCAN` pattern.
pub fn agent_tasks_pattern(agent: &AgentId) -> String {
    format!("task/{agent}/*")
}

/// A module's name as its administrator set it (NS8's `module/<id>/ui_name`).
pub fn ui_name(agent: &AgentId) -> String {
    format!("{agent}/ui_name")
}

pub fn task_prefix(agent: &AgentId, task_id: &str) -> String {
    format!("task/{agent}/{task_id}")
}

pub fn task_context(agent: &AgentId, task_id: &str) -> String {
    format!("task/{agent}/{task_id}/context")
}

pub fn task_output(agent: &AgentId, task_id: &str) -> String {
    format!("task/{agent}/{task_id}/output")
}

pub fn task_error(agent: &AgentId, task_id: &str) -> String {
    format!("task/{agent}/{task_id}/error")
}

pub fn task_exit_code(agent: &AgentId, task_id: &str) -> String {
    format!("task/{agent}/{task_id}/exit_code")
}

/// Copy of the agent's `state/environment`, refreshed after every task.
pub fn environment(agent: &AgentId) -> String {
    format!("{agent}/environment")
}

pub fn progress_channel(agent: &AgentId, task_id: &str) -> String {
    format!("progress/{agent}/task/{task_id}")
}

/// Beyond NS8: each stderr line of a running task's steps, live (the whole text is
/// stored in the `error` key at the end). Under the progress prefix, so the agent's
/// NS8 ACL already allows it; NS8 clients subscribe to exact progress channels.
pub fn task_log_channel(agent: &AgentId, task_id: &str) -> String {
    format!("progress/{agent}/task/{task_id}/log")
}

/// Pattern matching the progress of every task of one agent.
pub fn progress_pattern(agent: &AgentId) -> String {
    format!("progress/{agent}/task/*")
}

pub fn event_channel(source: &AgentId, name: &str) -> String {
    format!("{source}/event/{name}")
}

/// Every agent listens to all events.
pub const EVENT_PATTERN: &str = "*/event/*";

/// An event name becomes a directory name under the events root: no `/`, not `.`
/// or `..`, not empty.
pub fn is_event_name(name: &str) -> bool {
    !name.is_empty() && !name.contains('/') && name != "." && name != ".."
}

/// Split `<source>/event/<name>` into its parts. `None` for anything else, including
/// a source that is not a valid agent id (nobody could have published it legally).
pub fn parse_event_channel(channel: &str) -> Option<(AgentId, String)> {
    let (source, name) = channel.rsplit_once("/event/")?;
    if !is_event_name(name) {
        return None;
    }
    Some((source.parse().ok()?, name.to_owned()))
}

/// Beyond NS8: the durable copy of the events published by `source`, a bounded stream
/// written by the source agent itself (its ACL already covers `<source>/*`).
pub fn event_stream(source: &AgentId) -> String {
    format!("{source}/events")
}

/// The fields of an [`event_stream`] entry: the event's name and its payload as
/// published. Every reader of the streams (agents, the api-server's audit) uses these.
pub const EVENT_ENTRY_NAME: &str = "name";
pub const EVENT_ENTRY_PAYLOAD: &str = "payload";

/// `SCAN` pattern for all event streams.
pub const EVENT_STREAM_PATTERN: &str = "*/events";

pub fn parse_event_stream(key: &str) -> Option<AgentId> {
    key.strip_suffix("/events")?.parse().ok()
}

/// Beyond NS8: hash `<stream key> -> last handled entry id` of one consuming agent,
/// plus the field [`EVENT_CURSOR_SINCE`].
pub fn event_cursors(agent: &AgentId) -> String {
    format!("{agent}/event_cursors")
}

/// Field of [`event_cursors`]: stream id at the agent's first start. Streams the agent
/// has no cursor for are read from there, so events of a source that appeared while
/// the agent was down are not skipped.
pub const EVENT_CURSOR_SINCE: &str = "*since";

/// Hash `url`, `status`, `testing` of a software repository.
pub fn repository(name: &str) -> String {
    format!("cluster/repository/{name}")
}

/// Hash of a backup destination's public attributes (`name`, `url`, `provider`,
/// `basepath`), NS8's key.
pub fn backup_repository(id: &str) -> String {
    format!("cluster/backup_repository/{id}")
}

/// Hash of a backup destination's sealed secrets (`password`: the restic password,
/// `parameters`: the provider credentials as JSON), which only the cluster opens.
pub fn backup_destination_secrets(id: &str) -> String {
    format!("private/backup_destination/{id}")
}

/// Hash of backup plan `id` (NS8's fields: `name`, `repository`, `schedule`,
/// `schedule_hint`, `retention`, `enabled`, `instances`; ours: the keep rules and the
/// webhook).
pub fn backup_plan(id: u64) -> String {
    format!("cluster/backup/{id}")
}

/// The pattern of every plan's key.
pub const BACKUP_PLAN_PATTERN: &str = "cluster/backup/*";

/// The last plan id given (NS8's counter).
pub const BACKUP_SEQUENCE: &str = "cluster/backup_sequence";

/// Hash of node `n`'s last run of plan `id`: module id → its `RunStatus` JSON (NS8's).
pub fn backup_status(n: u32, id: u64) -> String {
    format!("node/{n}/backup_status/{id}")
}

/// List of plan `id`'s last runs, newest first, each a JSON report of one module's
/// run; trimmed to the last 100.
pub fn backup_runs(id: u64) -> String {
    format!("cluster/backup_runs/{id}")
}

/// List of plan `id`'s last drills, newest first, each a `DrillReport` JSON; trimmed
/// to the last 100.
pub fn backup_drills(id: u64) -> String {
    format!("cluster/backup_drills/{id}")
}

/// String: the task running plan `id`, while it runs (one run at a time).
pub fn backup_lock(id: u64) -> String {
    format!("cluster/backup_lock/{id}")
}

/// Hash `data` (the fetched repodata.json) of a repository, with a TTL.
pub fn repository_cache(name: &str) -> String {
    format!("cluster/repository_cache/{name}")
}

/// Beyond NS8: hash `<kind>:<subject> -> journal` of the sagas (multi-step operations
/// with an undo per step, `agent_runtime::saga`) that `agent` has begun and not yet
/// committed or undone: what its next start undoes.
pub fn sagas(agent: &AgentId) -> String {
    format!("{agent}/sagas")
}

/// The field of saga `kind` about `subject` in [`sagas`].
pub fn saga_field(kind: &str, subject: &str) -> String {
    format!("{kind}:{subject}")
}

/// Beyond NS8: the cluster's UUID, made with its first dump (it names the dump's copies
/// in the destinations).
pub const CLUSTER_UUID: &str = "cluster/uuid";

/// Beyond NS8: hash of the cluster backup's secrets, sealed by the cluster: the dump's
/// `passphrase` and the `retrieved` dump awaiting `restore-cluster`.
pub const CLUSTER_BACKUP: &str = "private/cluster_backup";

/// Beyond NS8: an encrypted dump made for a download, by its random token; it expires.
pub fn cluster_backup_download(token: &str) -> String {
    format!("private/cluster_backup/download/{token}")
}

/// Beyond NS8: hash `module id -> uuid` of the installed modules (`MODULE_UUID` in
/// their environment).
pub const MODULE_UUID: &str = "cluster/module_uuid";

/// A module's flags (`org.nethserver.flags`, plus `rootfull` or `rootless`).
pub fn module_flags(agent: &AgentId) -> String {
    format!("{agent}/flags")
}

/// Beyond NS8: hash `module id -> {"task", "operation"}` of the operations in
/// progress (install, update, removal): one per module at a time.
pub const MODULE_LOCKS: &str = "cluster/module_locks";

/// Counter of the instances of image `name` made so far: the next id is `<name><n+1>`,
/// so an id is never reused.
pub fn module_sequence(name: &str) -> String {
    format!("cluster/module_sequence/{name}")
}

/// String: the first installed instance of `image` on node `n` (NS8's; how a module
/// finds `traefik@node`). Set at install if absent, removed with that instance.
pub fn node_default_instance(n: u32, image: &str) -> String {
    format!("node/{n}/default_instance/{image}")
}

/// String: the first installed instance of `image` in the cluster (NS8's).
pub fn cluster_default_instance(image: &str) -> String {
    format!("cluster/default_instance/{image}")
}

/// `SCAN` patterns of every default-instance key.
pub const DEFAULT_INSTANCE_PATTERNS: [&str; 2] = ["node/*/default_instance/*", "cluster/default_instance/*"];

/// Hash `module id -> node id`: the installed modules.
pub const MODULE_NODE: &str = "cluster/module_node";

/// Beyond NS8 (which keeps a SQLite file on the node): hash `module id -> "start-end
/// ..."` of the `tcp` or `udp` port ranges allocated on node `n`.
pub fn node_ports(n: u32, protocol: &str) -> String {
    format!("node/{n}/{protocol}_ports")
}

/// Hash `module id -> number of ports` from the images' `*-ports-demand` labels.
pub fn ports_demand(protocol: &str) -> String {
    format!("cluster/{protocol}_ports_demand")
}

/// VPN network in CIDR form, set by `create-cluster`; agent identities may call the
/// API only from there or from loopback.
pub const CLUSTER_NETWORK: &str = "cluster/network";

/// Hash: profile of an admin user (`display_name`, `email`, `allowed_networks`, `2fa`),
/// plus, beyond NS8, `password_hash` (argon2id, PHC string) and `token_generation`
/// (sessions issued under another value are void). `2fa` is encrypted by the
/// api-server (`enc1:...`); NS8's clear base32 is still read.
pub fn user(name: &str) -> String {
    format!("user/{name}")
}

/// Beyond NS8: set of SHA-256 hashes of the user's unused 2FA recovery codes.
pub fn user_recovery_codes(name: &str) -> String {
    format!("user/{name}/2fa_recovery")
}

/// `SCAN` pattern of the user profiles (it also matches [`user_recovery_codes`]).
pub const USER_PATTERN: &str = "user/*";

/// Hash `agent id -> "role1,role2"`: the roles a subject (user or agent) holds.
pub fn grants(subject: &str) -> String {
    format!("roles/{subject}")
}

/// Set of the `selector:role` authorizations module `agent` was granted (NS8's key),
/// so that an update asks consent only for new ones.
pub fn module_authorizations(agent: &AgentId) -> String {
    format!("cluster/authorizations/{agent}")
}

/// Set of action glob patterns of `role` on `agent`.
pub fn role(agent: &AgentId, role: &str) -> String {
    format!("{agent}/roles/{role}")
}

/// Roles every agent defines on itself at start, as NS8 does at install.
pub const BUILTIN_ROLES: [(&str, &[&str]); 2] =
    [("owner", &["*"]), ("reader", &["list-*", "get-*", "show-*", "read-*"])];

/// Beyond NS8: a revoked session token, by its `jti`, kept until the token expires.
pub fn revoked_token(jti: &str) -> String {
    format!("private/api/revoked/{jti}")
}

/// Beyond NS8: password attempt counters (hash `failures`, `until`) of a source
/// address (`scope`: an IPv4 address or an IPv6 /64).
pub fn throttle_address(scope: &str) -> String {
    format!("private/api/throttle/addr/{scope}")
}

/// Beyond NS8: password attempt counters of one user name from one source address.
/// The address comes first: whatever a user name holds, it cannot reach another
/// address's counters.
pub fn throttle_user_at(user: &str, scope: &str) -> String {
    format!("private/api/throttle/at/{scope}/{user}")
}

/// Beyond NS8: a one-time `/ws` ticket, by the SHA-256 of its value (the value itself
/// is never stored), holding the session it opens. Short-lived.
pub fn ws_ticket(ticket_hash: &str) -> String {
    format!("private/api/ws_ticket/{ticket_hash}")
}

/// Beyond NS8: the audit trail's trim anchor (hash `seq`, `prev`, `mac`): where the
/// retained chain starts once older records were trimmed, authenticated by the
/// api-server's audit key.
pub const AUDIT_ANCHOR: &str = "private/audit_anchor";

/// Beyond NS8: a TOTP code already accepted for `user`, so it cannot be replayed.
pub fn otp_used(user: &str, code: &str) -> String {
    format!("private/api/otp_used/{user}/{code}")
}

/// Beyond NS8: the api-server's cursor in the cluster's event stream (the last entry
/// id it wrote to the audit trail), so a drill report is audited once, even across
/// its restarts.
pub const AUDIT_EVENTS_CURSOR: &str = "private/api/audit_events_cursor";

/// Beyond NS8: the audit trail, a stream (it replicates to every node, unlike NS8's
/// SQLite file) whose records are hash-chained.
pub const AUDIT_STREAM: &str = "private/audit";

pub fn cluster_ui_name() -> &'static str {
    "cluster/ui_name"
}

/// Every task progress and log channel of every agent (what the api-server relays
/// to `/ws`).
pub const PROGRESS_PATTERN_ALL: &str = "progress/*";

/// Split a [`progress_channel`] or [`task_log_channel`] name into the agent, the task
/// id and whether it is a log line. `None` for anything else.
pub fn parse_progress_channel(channel: &str) -> Option<(AgentId, String, bool)> {
    let (channel, log) = match channel.strip_suffix("/log") {
        Some(c) => (c, true),
        None => (channel, false),
    };
    let rest = channel.strip_prefix("progress/")?;
    let (agent, id) = rest.rsplit_once("/task/")?;
    crate::validate_task_id(id).ok()?;
    Some((agent.parse().ok()?, id.to_owned(), log))
}

/// `SCAN` pattern of the contexts of every task of `agent`.
pub fn task_contexts_pattern(agent: &AgentId) -> String {
    task_context(agent, "*")
}

/// The task id in a [`task_context`] key of `agent`.
pub fn parse_task_context<'k>(agent: &AgentId, key: &'k str) -> Option<&'k str> {
    let rest = key.strip_prefix("task/")?.strip_prefix(&agent.to_string())?.strip_prefix('/')?;
    rest.strip_suffix("/context").filter(|id| !id.contains('/'))
}

/// The user name in a [`user`] key; `None` for the user's other keys
/// ([`user_recovery_codes`]) and anything else.
pub fn parse_user(key: &str) -> Option<&str> {
    key.strip_prefix("user/").filter(|n| !n.is_empty() && !n.contains('/'))
}

/// The subject of a [`grants`] key.
pub fn parse_grants(key: &str) -> Option<&str> {
    key.strip_prefix("roles/")
}

/// `SCAN` patterns of the keys of every node, and of every module.
pub const NODE_KEYS_PATTERN: &str = "node/*";
pub const MODULE_KEYS_PATTERN: &str = "module/*";

/// The node or module whose key (`node/<N>/...`, `module/<id>/...`) this is.
pub fn key_owner(key: &str) -> Option<AgentId> {
    let mut parts = key.splitn(3, '/');
    let (kind, id) = (parts.next()?, parts.next()?);
    match kind {
        "node" => AgentId::node(id).ok(),
        "module" => AgentId::module(id).ok(),
        _ => None,
    }
}

/// Who may read a key besides its writer (reference 2.3 and 2.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Readers {
    /// `cluster/*`, `node/*`, `module/*`: anyone, the anonymous `default` user included.
    Everyone,
    /// `private/agents/*`: every agent (node or module).
    Agents,
    /// `private/nodes/*`: the nodes' agents.
    Nodes,
    /// `task/*`, `user/*`, `roles/*`, `private/*`: the writer, the cluster and the
    /// api-server only.
    Core,
}

/// One concrete key of the schema, with its access policy.
#[derive(Clone, Debug)]
pub struct KeyExample {
    pub key: String,
    /// The agent that writes it; `None` for the core's (cluster and api-server) own.
    pub writer: Option<AgentId>,
    pub readers: Readers,
}

/// Every kind of key of the schema, made with this module's own functions for each of
/// `agents` (and the core's keys once): what the ACL tests try to read and write as
/// each user.
pub fn examples(agents: &[AgentId]) -> Vec<KeyExample> {
    let ex = |key: String, writer: Option<&AgentId>, readers| KeyExample { key, writer: writer.cloned(), readers };
    let mut all = Vec::new();
    for a in agents {
        let w = Some(a);
        all.push(ex(tasks(a), w, Readers::Everyone));
        all.push(ex(environment(a), w, Readers::Everyone));
        all.push(ex(event_stream(a), w, Readers::Everyone));
        all.push(ex(event_cursors(a), w, Readers::Everyone));
        all.push(ex(sagas(a), w, Readers::Everyone));
        all.push(ex(role(a, "owner"), w, Readers::Everyone));
        all.push(ex(inflight(a), w, Readers::Core));
        for key in [task_context(a, "t1"), task_output(a, "t1"), task_error(a, "t1"), task_exit_code(a, "t1")] {
            all.push(ex(key, w, Readers::Core));
        }
        if let AgentId::Node(n) = a {
            all.push(ex(node_ports(*n, "tcp"), w, Readers::Everyone));
            all.push(ex(backup_status(*n, 1), w, Readers::Everyone));
        }
        all.push(ex(grants(&a.to_string()), None, Readers::Core));
    }
    let cluster = Some(&AgentId::Cluster);
    for key in [
        MODULE_NODE.to_owned(),
        MODULE_UUID.to_owned(),
        CLUSTER_NETWORK.to_owned(),
        cluster_ui_name().to_owned(),
        CLUSTER_UUID.to_owned(),
    ] {
        all.push(ex(key, cluster, Readers::Everyone));
    }
    for key in [
        repository("r"),
        repository_cache("r"),
        ports_demand("tcp"),
        backup_repository("d1"),
        backup_plan(1),
        BACKUP_SEQUENCE.to_owned(),
        backup_runs(1),
        backup_lock(1),
    ] {
        all.push(ex(key, cluster, Readers::Everyone));
    }
    all.push(ex("private/agents/backup_destination/restic_password".into(), cluster, Readers::Agents));
    all.push(ex("private/nodes/backup_destination/rclone_conf".into(), cluster, Readers::Nodes));
    for key in [
        user("admin"),
        user_recovery_codes("admin"),
        grants("admin"),
        revoked_token("j1"),
        throttle_address("10.0.0.1"),
        throttle_user_at("admin", "10.0.0.1"),
        ws_ticket("abc"),
        AUDIT_ANCHOR.to_owned(),
        otp_used("admin", "123456"),
        AUDIT_STREAM.to_owned(),
        AUDIT_EVENTS_CURSOR.to_owned(),
        backup_destination_secrets("d1"),
        CLUSTER_BACKUP.to_owned(),
        cluster_backup_download("t1"),
    ] {
        all.push(ex(key, None, Readers::Core));
    }
    all
}

/// Every kind of channel of one agent: its task progress, its steps' log lines, its
/// events. Only the agent publishes on them.
pub fn channel_examples(agent: &AgentId) -> Vec<String> {
    vec![progress_channel(agent, "t1"), task_log_channel(agent, "t1"), event_channel(agent, "something-happened")]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_the_ns8_schema() {
        let m = AgentId::Module("mail1".into());
        let t = "6f0a";
        assert_eq!(tasks(&m), "module/mail1/tasks");
        assert_eq!(task_context(&m, t), "task/module/mail1/6f0a/context");
        assert_eq!(task_output(&m, t), "task/module/mail1/6f0a/output");
        assert_eq!(task_error(&m, t), "task/module/mail1/6f0a/error");
        assert_eq!(task_exit_code(&m, t), "task/module/mail1/6f0a/exit_code");
        assert_eq!(environment(&AgentId::Node(1)), "node/1/environment");
        assert_eq!(progress_channel(&AgentId::Cluster, t), "progress/cluster/task/6f0a");
        assert_eq!(event_channel(&AgentId::Cluster, "module-added"), "cluster/event/module-added");
        assert_eq!(inflight(&AgentId::Node(2)), "task/node/2/inflight");
        assert_eq!(event_stream(&m), "module/mail1/events");
    }

    #[test]
    fn parsers_invert_the_builders() {
        let m = AgentId::Module("mail1".into());
        assert_eq!(parse_progress_channel(&progress_channel(&m, "abc-1")), Some((m.clone(), "abc-1".into(), false)));
        assert_eq!(
            parse_progress_channel(&task_log_channel(&AgentId::Node(2), "abc-1")),
            Some((AgentId::Node(2), "abc-1".into(), true))
        );
        assert!(parse_progress_channel("progress/bogus/task/1").is_none());
        assert!(parse_progress_channel(&event_channel(&m, "y")).is_none());
        assert!(PROGRESS_PATTERN_ALL.strip_suffix('*').is_some_and(|p| progress_channel(&m, "t").starts_with(p)));

        assert_eq!(parse_task_context(&m, &task_context(&m, "t1")), Some("t1"));
        assert_eq!(parse_task_context(&m, &task_output(&m, "t1")), None);
        assert_eq!(parse_task_context(&AgentId::Module("mail".into()), &task_context(&m, "t1")), None);
        assert_eq!(task_contexts_pattern(&m), "task/module/mail1/*/context");

        assert_eq!(parse_user(&user("admin")), Some("admin"));
        assert_eq!(parse_user(&user_recovery_codes("admin")), None);
        assert_eq!(parse_grants(&grants("module/mail1")), Some("module/mail1"));

        assert_eq!(key_owner(&environment(&m)), Some(m.clone()));
        assert_eq!(key_owner(&tasks(&AgentId::Node(3))), Some(AgentId::Node(3)));
        assert_eq!(key_owner(&tasks(&AgentId::Cluster)), None);
        assert_eq!(key_owner("node/x/tasks"), None);
    }

    #[test]
    fn event_channels_round_trip() {
        let (src, name) = parse_event_channel("module/traefik1/event/certificate-changed").unwrap();
        assert_eq!(src, AgentId::Module("traefik1".into()));
        assert_eq!(name, "certificate-changed");
        assert_eq!(parse_event_channel("node/1/event/x").unwrap().0, AgentId::Node(1));
        assert!(parse_event_channel("bogus/event/x").is_none());
        assert!(parse_event_channel("cluster/event/").is_none());
        assert!(parse_event_channel("cluster/event/..").is_none());

        assert!(parse_event_channel("progress/cluster/task/1").is_none());
        assert_eq!(parse_event_stream("node/3/events"), Some(AgentId::Node(3)));
        assert_eq!(parse_event_stream("foo/events"), None);
    }
}
