//! How a job ends, decided from what its nodes reported.

use std::ops::Range;

use batchai_core::state::ExecutionState;
use batchai_store::{JobError, PlacedNode};

/// The end of a job: its final state, exit code and errors.
#[derive(Debug, Clone, PartialEq)]
pub struct Ending {
    pub state: ExecutionState,
    pub exit_code: Option<i32>,
    /// `None` keeps the errors already recorded (a terminated job's `JobTerminated`).
    pub errors: Option<Vec<JobError>>,
}

pub const JOB_FAILED: &str = "Job failed with non-zero exit code";

/// Whether a running or terminating job has ended, given its placement's reports.
///
/// A node's part ends when its processes have (a node hosting nothing ends right after job
/// preparation). The first part that fails fails the job at once, and the other nodes are
/// told to stop; the job succeeds when every part ended with 0. The exit code is that of the
/// failing part, else the master's. A terminated job ends failed, with no exit code, once every
/// node has stopped.
///
/// `serving_only` are the ranks whose nodes host nothing but TensorFlow parameter servers
/// (`batchai_core::contract::toolkit::serving_only_ranks`): their parts never end by
/// themselves, so success does not wait for them (it did, and such a job ran forever); they
/// are told to stop with the others. They still fail the job if they fail.
pub fn ending(state: ExecutionState, placement: &[PlacedNode], serving_only: &Range<usize>) -> Option<Ending> {
    let exited = |p: &&PlacedNode| p.phase == "exited";
    let needed = |p: &&PlacedNode| usize::try_from(p.rank).map_or(true, |r| !serving_only.contains(&r));
    match state {
        ExecutionState::Running => {
            if let Some(bad) =
                placement.iter().filter(exited).find(|p| p.exit_code != Some(0) || p.error_code.is_some())
            {
                let error = JobError {
                    code: bad.error_code.clone().unwrap_or_else(|| "JobFailed".into()),
                    message: bad.error_message.clone().unwrap_or_else(|| JOB_FAILED.into()),
                };
                return Some(Ending {
                    state: ExecutionState::Failed,
                    exit_code: bad.exit_code,
                    errors: Some(vec![error]),
                });
            }
            let mut needed = placement.iter().filter(needed).peekable();
            (needed.peek().is_some() && needed.all(|p| exited(&p))).then(|| Ending {
                state: ExecutionState::Succeeded,
                exit_code: placement.first().and_then(|p| p.exit_code),
                errors: None,
            })
        }
        ExecutionState::Terminating => placement.iter().all(|p| exited(&p)).then_some(Ending {
            state: ExecutionState::Failed,
            exit_code: None,
            errors: None,
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(rank: i32, phase: &str, exit: Option<i32>, code: Option<&str>) -> PlacedNode {
        PlacedNode {
            rank,
            node_id: format!("n{rank}"),
            address: "a".into(),
            gpus: 0,
            phase: phase.into(),
            exit_code: exit,
            error_code: code.map(Into::into),
            error_message: code.map(|c| format!("{c} message")),
        }
    }

    const NONE: &Range<usize> = &(0..0);

    #[test]
    fn succeeds_only_when_every_part_exited_zero() {
        let run = ExecutionState::Running;
        assert_eq!(ending(run, &[part(0, "exited", Some(0), None), part(1, "running", None, None)], NONE), None);
        let done = ending(run, &[part(0, "exited", Some(0), None), part(1, "exited", Some(0), None)], NONE).unwrap();
        assert_eq!((done.state, done.exit_code), (ExecutionState::Succeeded, Some(0)));
        assert_eq!(ending(run, &[], NONE), None);
    }

    #[test]
    fn the_first_failing_part_fails_the_job_at_once() {
        let run = ExecutionState::Running;
        let e = ending(run, &[part(0, "running", None, None), part(1, "exited", Some(2), None)], NONE).unwrap();
        assert_eq!((e.state, e.exit_code), (ExecutionState::Failed, Some(2)));
        assert_eq!(e.errors.unwrap()[0], JobError { code: "JobFailed".into(), message: JOB_FAILED.into() });
        let prep = ending(run, &[part(0, "exited", Some(1), Some("JobPreparationFailed"))], NONE).unwrap();
        assert_eq!(prep.errors.unwrap()[0].code, "JobPreparationFailed");
        let killed = ending(run, &[part(0, "exited", None, Some("JobMaxWallClockTimeExceeded"))], NONE).unwrap();
        assert_eq!((killed.state, killed.exit_code), (ExecutionState::Failed, None));
    }

    #[test]
    fn nodes_serving_only_parameter_servers_are_not_waited_for() {
        let run = ExecutionState::Running;
        let serving = &(1..2);
        let parts = [part(0, "exited", Some(0), None), part(1, "running", None, None)];
        let done = ending(run, &parts, serving).unwrap();
        assert_eq!((done.state, done.exit_code), (ExecutionState::Succeeded, Some(0)));
        assert_eq!(ending(run, &[part(0, "running", None, None), part(1, "running", None, None)], serving), None);
        let crashed =
            ending(run, &[part(0, "running", None, None), part(1, "exited", Some(1), None)], serving).unwrap();
        assert_eq!((crashed.state, crashed.exit_code), (ExecutionState::Failed, Some(1)));
    }

    #[test]
    fn a_terminated_job_ends_when_every_node_stopped() {
        let t = ExecutionState::Terminating;
        assert_eq!(ending(t, &[part(0, "exited", None, None), part(1, "running", None, None)], NONE), None);
        let e = ending(t, &[part(0, "exited", None, None), part(1, "exited", Some(0), None)], NONE).unwrap();
        assert_eq!((e.state, e.exit_code, e.errors), (ExecutionState::Failed, None, None));
    }
}
