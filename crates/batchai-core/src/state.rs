//! State machines. Each transition the system makes is checked here first and then applied in
//! SQL as `UPDATE … WHERE state = $expected`, so two servers never both make it.

macro_rules! wire_enum {
    ($(#[$m:meta])* $name:ident { $($variant:ident => $s:literal),* $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($variant),* }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [Self] = &[$($name::$variant),*];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $s),* }
            }

            /// Parses the wire/storage string, ignoring case (ARM enums are case-insensitive).
            pub fn parse(s: &str) -> Option<Self> {
                Self::ALL.iter().copied().find(|v| v.as_str().eq_ignore_ascii_case(s))
            }
        }
    };
}

wire_enum!(
    /// `provisioningState` of every resource.
    ProvisioningState { Creating => "creating", Succeeded => "succeeded", Failed => "failed", Deleting => "deleting" }
);

wire_enum!(
    /// `executionState` of a job.
    ExecutionState {
        Queued => "queued",
        Running => "running",
        Terminating => "terminating",
        Succeeded => "succeeded",
        Failed => "failed",
    }
);

wire_enum!(
    /// `allocationState` of a cluster.
    AllocationState { Steady => "steady", Resizing => "resizing" }
);

wire_enum!(
    /// Status of a long-running operation as pollers read it.
    OperationStatus { InProgress => "InProgress", Succeeded => "Succeeded", Failed => "Failed", Canceled => "Canceled" }
);

wire_enum!(
    /// `schedulingPriority`.
    Priority { Low => "low", Normal => "normal", High => "high" }
);

wire_enum!(
    /// A registered node. `free` nodes belong to no cluster; the others are counted in their
    /// cluster's `nodeStateCounts`.
    NodeState {
        Free => "free",
        Preparing => "preparing",
        Idle => "idle",
        Running => "running",
        Leaving => "leaving",
        Unusable => "unusable",
    }
);

impl NodeState {
    pub fn can_become(self, next: Self) -> bool {
        use NodeState::*;
        matches!(
            (self, next),
            // Allocated to a cluster, or lost while free.
            (Free, Preparing | Unusable)
                // Setup done or failed; released before it finished; lost.
                | (Preparing, Idle | Unusable | Free)
                // Placed; released by scale-down; lost.
                | (Idle, Running | Free | Unusable)
                // Its job ended; scale-down waits for the job; lost.
                | (Running, Idle | Leaving | Free | Unusable)
                | (Leaving, Free | Unusable)
                // A lost node syncs again: prepared anew for its cluster, or back to the pool.
                | (Unusable, Preparing | Free)
        )
    }
}

impl ProvisioningState {
    pub fn can_become(self, next: Self) -> bool {
        use ProvisioningState::*;
        matches!((self, next), (Creating, Succeeded | Failed | Deleting) | (Succeeded | Failed, Deleting))
    }
}

impl ExecutionState {
    pub fn is_terminal(self) -> bool {
        matches!(self, ExecutionState::Succeeded | ExecutionState::Failed)
    }

    pub fn can_become(self, next: Self) -> bool {
        use ExecutionState::*;
        matches!(
            (self, next),
            (Queued, Running | Terminating | Failed)
                | (Running, Succeeded | Failed | Terminating | Queued)
                | (Terminating, Failed | Succeeded)
        )
    }
}

impl OperationStatus {
    pub fn is_terminal(self) -> bool {
        self != OperationStatus::InProgress
    }
}

impl Priority {
    /// Higher runs first; stored as this number so the queue sorts in SQL.
    pub fn rank(self) -> i32 {
        match self {
            Priority::Low => 0,
            Priority::Normal => 1,
            Priority::High => 2,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_transitions() {
        use ExecutionState::*;
        assert!(Queued.can_become(Running));
        assert!(Queued.can_become(Failed));
        assert!(Running.can_become(Queued), "requeue after node loss");
        assert!(!Succeeded.can_become(Running));
        assert!(!Failed.can_become(Queued));
        assert!(!Queued.can_become(Succeeded));
    }

    #[test]
    fn node_transitions() {
        use NodeState::*;
        assert!(Free.can_become(Preparing));
        assert!(Idle.can_become(Running));
        assert!(Running.can_become(Idle));
        assert!(Unusable.can_become(Preparing), "a lost node that comes back is prepared again");
        assert!(!Free.can_become(Running), "only idle nodes of a cluster take jobs");
        assert!(!Leaving.can_become(Running));
        assert!(!Unusable.can_become(Running));
    }

    #[test]
    fn provisioning_transitions() {
        use ProvisioningState::*;
        assert!(Creating.can_become(Succeeded));
        assert!(Succeeded.can_become(Deleting));
        assert!(!Deleting.can_become(Succeeded));
        assert!(!Succeeded.can_become(Creating));
    }

    #[test]
    fn parse_ignores_case() {
        assert_eq!(Priority::parse("HIGH"), Some(Priority::High));
        assert_eq!(OperationStatus::parse("inprogress"), Some(OperationStatus::InProgress));
        assert_eq!(ExecutionState::parse("nope"), None);
    }
}
