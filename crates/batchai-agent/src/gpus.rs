//! Which of the node's GPUs each task gets, and how a runtime hands them over.
//!
//! Today a task takes the whole node ([`Want::Whole`]): the scheduler places one job per node.
//! The pool already tracks GPUs one by one, so packing several jobs on a node, each on its own
//! GPUs, is a matter of asking for [`Want::Count`] once a cluster allows it: nothing here or in
//! the runtimes assumes a task holds every GPU.
//!
//! GPUs are named by UUID towards Docker (`DeviceRequests`), which stays right whatever order
//! the driver enumerates them in, and by index towards CUDA on the host, with
//! `CUDA_DEVICE_ORDER=PCI_BUS_ID` so CUDA numbers them as `nvidia-smi` (and the node's facts)
//! does: frameworks that parse `CUDA_VISIBLE_DEVICES` as integers keep working.

use std::collections::BTreeMap;

use batchai_core::protocol::Gpu;

/// A task: its job and attempt epoch.
pub type TaskKey = (String, i64);

/// What a task asks of the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// Every GPU of the node, and no other task on any of them.
    Whole,
    /// This many GPUs that no other task holds.
    Count(usize),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GpuError {
    #[error("{wanted} GPUs wanted but {free} of the node's {total} are free")]
    Busy { wanted: usize, free: usize, total: usize },
    #[error("the task already holds GPUs")]
    AlreadyHeld,
}

/// The node's GPUs and who holds which.
#[derive(Debug, Clone, Default)]
pub struct GpuPool {
    gpus: Vec<Gpu>,
    held: BTreeMap<TaskKey, Vec<u32>>,
}

impl GpuPool {
    pub fn new(mut gpus: Vec<Gpu>) -> Self {
        gpus.sort_by_key(|g| g.index);
        Self { gpus, held: BTreeMap::new() }
    }

    /// Whether the node has GPUs at all.
    pub fn any(&self) -> bool {
        !self.gpus.is_empty()
    }

    fn free(&self) -> Vec<&Gpu> {
        self.gpus.iter().filter(|g| !self.held.values().any(|held| held.contains(&g.index))).collect()
    }

    /// Gives `task` GPUs, the lowest free indexes first (neighbours on the bus tend to share a
    /// switch). A node without GPUs gives every task an empty set.
    pub fn allocate(&mut self, task: &TaskKey, want: Want) -> Result<Vec<Gpu>, GpuError> {
        if self.held.contains_key(task) {
            return Err(GpuError::AlreadyHeld);
        }
        let free = self.free();
        let total = self.gpus.len();
        let wanted = match want {
            Want::Whole if free.len() == total => total,
            Want::Whole => return Err(GpuError::Busy { wanted: total, free: free.len(), total }),
            Want::Count(n) if n <= free.len() => n,
            Want::Count(n) => return Err(GpuError::Busy { wanted: n, free: free.len(), total }),
        };
        let given: Vec<Gpu> = free.into_iter().take(wanted).cloned().collect();
        self.held.insert(task.clone(), given.iter().map(|g| g.index).collect());
        Ok(given)
    }

    /// Frees what `task` holds; nothing when it holds nothing.
    pub fn release(&mut self, task: &TaskKey) {
        self.held.remove(task);
    }

    /// The GPUs each task holds, by job.
    pub fn in_use(&self) -> Vec<(String, Vec<Gpu>)> {
        self.held
            .iter()
            .map(|((job, _), indices)| {
                (job.clone(), self.gpus.iter().filter(|g| indices.contains(&g.index)).cloned().collect())
            })
            .collect()
    }
}

/// The variables that limit a host process to `given` when the node has GPUs (`node_has_gpus`);
/// none on a node without any, where there is nothing to hide.
pub fn cuda_env(node_has_gpus: bool, given: &[Gpu]) -> Vec<(String, String)> {
    if !node_has_gpus {
        return Vec::new();
    }
    let visible: Vec<String> = given.iter().map(|g| g.index.to_string()).collect();
    vec![
        ("CUDA_DEVICE_ORDER".to_owned(), "PCI_BUS_ID".to_owned()),
        ("CUDA_VISIBLE_DEVICES".to_owned(), visible.join(",")),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu(index: u32) -> Gpu {
        Gpu { index, uuid: format!("GPU-{index:04}"), model: "Tesla K80".into(), memory_mb: 11_441 }
    }

    fn key(job: &str) -> TaskKey {
        (job.to_owned(), 1)
    }

    #[test]
    fn a_whole_node_task_gets_every_gpu_and_excludes_others_until_released() {
        let mut pool = GpuPool::new(vec![gpu(1), gpu(0)]);
        let given = pool.allocate(&key("a"), Want::Whole).unwrap();
        assert_eq!(given, vec![gpu(0), gpu(1)], "in index order");
        assert_eq!(pool.allocate(&key("a"), Want::Whole), Err(GpuError::AlreadyHeld));
        assert_eq!(pool.allocate(&key("b"), Want::Whole), Err(GpuError::Busy { wanted: 2, free: 0, total: 2 }));
        assert_eq!(pool.allocate(&key("b"), Want::Count(1)), Err(GpuError::Busy { wanted: 1, free: 0, total: 2 }));
        pool.release(&key("a"));
        assert_eq!(pool.allocate(&key("b"), Want::Whole).unwrap().len(), 2);
    }

    #[test]
    fn packed_tasks_get_disjoint_gpus() {
        let mut pool = GpuPool::new((0..4).map(gpu).collect());
        let a = pool.allocate(&key("a"), Want::Count(1)).unwrap();
        let b = pool.allocate(&key("b"), Want::Count(2)).unwrap();
        assert_eq!((a, b), (vec![gpu(0)], vec![gpu(1), gpu(2)]));
        assert_eq!(pool.allocate(&key("c"), Want::Whole), Err(GpuError::Busy { wanted: 4, free: 1, total: 4 }));
        pool.release(&key("a"));
        assert_eq!(pool.allocate(&key("c"), Want::Count(2)).unwrap(), vec![gpu(0), gpu(3)]);
    }

    #[test]
    fn a_node_without_gpus_gives_empty_sets_and_no_cuda_variables() {
        let mut pool = GpuPool::new(Vec::new());
        assert!(!pool.any());
        assert_eq!(pool.allocate(&key("a"), Want::Whole), Ok(Vec::new()));
        assert_eq!(pool.allocate(&key("b"), Want::Whole), Ok(Vec::new()), "nothing to share");
        assert!(cuda_env(false, &[]).is_empty());
    }

    #[test]
    fn host_processes_see_their_gpus_by_bus_order_index() {
        let env = cuda_env(true, &[gpu(2), gpu(3)]);
        assert_eq!(
            env,
            vec![
                ("CUDA_DEVICE_ORDER".to_owned(), "PCI_BUS_ID".to_owned()),
                ("CUDA_VISIBLE_DEVICES".to_owned(), "2,3".to_owned())
            ]
        );
        assert_eq!(cuda_env(true, &[])[1].1, "", "a task given no GPU sees none");
    }
}
