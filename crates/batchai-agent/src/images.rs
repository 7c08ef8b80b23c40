//! The operator's image map (`[[image_map]]` in the agent's config): which image a job's
//! `containerSettings` image becomes on this node, or that the job runs on the host instead.
//!
//! The executor applies it to every process of a job (job preparation, each toolkit process),
//! so the runtimes only ever see the image to run: an old public image redirected to a local or
//! mirrored one, or no container at all when the map says [`HOST`] (a machine without Docker
//! runs the job's processes as it runs those of jobs without `containerSettings`).

/// The map's special target: jobs whose image maps to it run their processes on the host,
/// without a container.
pub const HOST: &str = "host";

/// Redirects image names, in order, first match wins: an operator maps the public images of old
/// job definitions to local or mirrored ones, or to [`HOST`]. A pattern ending in `*` matches any
/// name that starts with the rest; a replacement ending in `*` gets what the `*` matched.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageMap(pub Vec<(String, String)>);

impl ImageMap {
    /// The image `image` becomes on this node (itself when no pattern matches); [`HOST`] when
    /// the map sends it to the host.
    pub fn resolve(&self, image: &str) -> String {
        self.lookup(image).unwrap_or_else(|| image.to_owned())
    }

    /// The container image `image` runs in on this node; `None` when the map sends it to the
    /// host. Only the operator's map can: a job that itself names an image `host` still gets
    /// a container.
    pub fn container_image(&self, image: &str) -> Option<String> {
        match self.lookup(image) {
            Some(replacement) if replacement == HOST => None,
            Some(replacement) => Some(replacement),
            None => Some(image.to_owned()),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// What the first matching pattern makes of `image`.
    fn lookup(&self, image: &str) -> Option<String> {
        self.0.iter().find_map(|(pattern, replacement)| {
            let rest = match pattern.strip_suffix('*') {
                Some(prefix) => image.strip_prefix(prefix)?,
                None => (image == pattern).then_some("")?,
            };
            Some(match replacement.strip_suffix('*') {
                Some(base) => format!("{base}{rest}"),
                None => replacement.clone(),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_image_map_redirects_exact_names_and_prefixes_first_match_wins() {
        let map = ImageMap(vec![
            ("microsoft/cntk:2.1-gpu-python3.5-cuda8.0-cudnn6.0".into(), "batchai/python:test".into()),
            ("tensorflow/tensorflow:*".into(), "mirror.local/tensorflow:*".into()),
            ("*".into(), "batchai/busybox:test".into()),
        ]);
        assert_eq!(map.resolve("microsoft/cntk:2.1-gpu-python3.5-cuda8.0-cudnn6.0"), "batchai/python:test");
        assert_eq!(map.resolve("tensorflow/tensorflow:1.8.0-gpu"), "mirror.local/tensorflow:1.8.0-gpu");
        assert_eq!(map.resolve("ubuntu"), "batchai/busybox:test");
        assert_eq!(ImageMap::default().resolve("ubuntu:18.04"), "ubuntu:18.04");
    }

    #[test]
    fn images_mapped_to_host_run_without_a_container() {
        let map = ImageMap(vec![
            ("microsoft/cntk:*".into(), HOST.into()),
            ("tensorflow/tensorflow:*".into(), "mirror.local/tensorflow:*".into()),
        ]);
        assert_eq!(map.resolve("microsoft/cntk:2.0-cpu-python3.5"), HOST);
        assert_eq!(map.container_image("microsoft/cntk:2.0-cpu-python3.5"), None);
        assert_eq!(
            map.container_image("tensorflow/tensorflow:1.8.0").as_deref(),
            Some("mirror.local/tensorflow:1.8.0")
        );
        assert_eq!(map.container_image("ubuntu").as_deref(), Some("ubuntu"), "unmapped images stay");
        assert_eq!(
            ImageMap::default().container_image(HOST).as_deref(),
            Some(HOST),
            "a job cannot put itself on the host"
        );
    }
}
