//! State machines. Each transition the system makes is checked here first and then applied in
//! SQL as `UPDATE … WHERE state = $expected`, so two servers never both make it.

macro_rules! wire_enum {
    ($(#[$m:meta])* $name:ident { $($variant:ident => $s:literal),* $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($variant),* }

        impl $name {
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $s),* }
            }

            /// Parses the wire/storage string, ignoring case (ARM enums are case-insensitive).
            pub fn parse(s: &str) -> Option<Self> {
                [$($name::$variant),*].into_iter().find(|v| v.as_str().eq_ignore_ascii_case(s))
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
