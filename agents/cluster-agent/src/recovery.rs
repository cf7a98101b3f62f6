//! At start: the installs, updates and removals a crash of this agent cut short (their
//! tasks were just closed as interrupted), found in the saga journal and undone,
//! rolled back or finished as their own failure would have. Work on a node that is
//! not running stays journaled, and holds its module, until a later start.

use agent_runtime::ActionContext;
use agent_runtime::saga::Sagas;

use crate::{install, locks, removal, update};

pub async fn recover(ctx: ActionContext, sagas: Sagas) {
    let pending = match sagas.pending(&ctx).await {
        Ok(p) => p,
        Err(e) => return tracing::error!("{e}: the work a restart cut short is not finished"),
    };
    let held: Vec<(String, String)> = pending.iter().map(|j| (j.subject.clone(), j.task.clone())).collect();
    locks::reset(&ctx, &held).await;
    for journal in pending {
        let (kind, id) = (journal.kind.clone(), journal.subject.clone());
        let what = match kind.as_str() {
            install::KIND => "undone, nothing of it is left",
            update::KIND => "rolled back (the snapshot put back, if the node had taken one)",
            removal::KIND => "the removal was finished",
            _ => "undone",
        };
        let cleanup = sagas.recover(&ctx, journal).await;
        if cleanup.is_clean() {
            locks::release(&ctx, &id).await;
            tracing::warn!("{kind} of {id} was cut short by a restart of this agent: {what}");
        } else {
            tracing::error!(
                "{kind} of {id} was cut short by a restart of this agent, and finishing it failed: {}",
                cleanup.problems.join("; ")
            );
        }
    }
}
