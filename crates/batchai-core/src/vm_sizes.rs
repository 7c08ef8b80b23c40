//! The catalogue of Azure VM sizes Batch AI clusters asked for: cores, memory and GPUs per
//! node, and the quota family usages report them under, plus the sizes an operator adds in
//! config ([`Catalogue`]). Names compare ignoring case.

use serde::{Deserialize, Serialize};

/// One VM size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmSize {
    pub name: &'static str,
    /// The family as usages name it (`Standard NC Family …`).
    pub family: &'static str,
    pub cores: u32,
    pub memory_mib: u64,
    pub gpus: u32,
}

const fn size(name: &'static str, family: &'static str, cores: u32, memory_gib: u64, gpus: u32) -> VmSize {
    VmSize { name, family, cores, memory_mib: memory_gib * 1024, gpus }
}

/// Families in the order the service listed them in usages.
pub const FAMILIES: &[&str] = &["D", "Dv2", "NC", "NCv2", "NCv3", "ND", "NV"];

pub const CATALOGUE: &[VmSize] = &[
    size("STANDARD_D1", "D", 1, 3, 0),
    size("STANDARD_D2", "D", 2, 7, 0),
    size("STANDARD_D3", "D", 4, 14, 0),
    size("STANDARD_D4", "D", 8, 28, 0),
    size("STANDARD_D11", "D", 2, 14, 0),
    size("STANDARD_D12", "D", 4, 28, 0),
    size("STANDARD_D13", "D", 8, 56, 0),
    size("STANDARD_D14", "D", 16, 112, 0),
    size("STANDARD_D1_V2", "Dv2", 1, 3, 0),
    size("STANDARD_D2_V2", "Dv2", 2, 7, 0),
    size("STANDARD_D3_V2", "Dv2", 4, 14, 0),
    size("STANDARD_D4_V2", "Dv2", 8, 28, 0),
    size("STANDARD_D5_V2", "Dv2", 16, 56, 0),
    size("STANDARD_D11_V2", "Dv2", 2, 14, 0),
    size("STANDARD_D12_V2", "Dv2", 4, 28, 0),
    size("STANDARD_D13_V2", "Dv2", 8, 56, 0),
    size("STANDARD_D14_V2", "Dv2", 16, 112, 0),
    size("STANDARD_D15_V2", "Dv2", 20, 140, 0),
    size("STANDARD_NC6", "NC", 6, 56, 1),
    size("STANDARD_NC12", "NC", 12, 112, 2),
    size("STANDARD_NC24", "NC", 24, 224, 4),
    size("STANDARD_NC24R", "NC", 24, 224, 4),
    size("STANDARD_NC6S_V2", "NCv2", 6, 112, 1),
    size("STANDARD_NC12S_V2", "NCv2", 12, 224, 2),
    size("STANDARD_NC24S_V2", "NCv2", 24, 448, 4),
    size("STANDARD_NC24RS_V2", "NCv2", 24, 448, 4),
    size("STANDARD_NC6S_V3", "NCv3", 6, 112, 1),
    size("STANDARD_NC12S_V3", "NCv3", 12, 224, 2),
    size("STANDARD_NC24S_V3", "NCv3", 24, 448, 4),
    size("STANDARD_NC24RS_V3", "NCv3", 24, 448, 4),
    size("STANDARD_ND6S", "ND", 6, 112, 1),
    size("STANDARD_ND12S", "ND", 12, 224, 2),
    size("STANDARD_ND24S", "ND", 24, 448, 4),
    size("STANDARD_ND24RS", "ND", 24, 448, 4),
    size("STANDARD_NV6", "NV", 6, 56, 1),
    size("STANDARD_NV12", "NV", 12, 112, 2),
    size("STANDARD_NV24", "NV", 24, 224, 4),
];

/// Looks a size up by name, ignoring case.
pub fn find(name: &str) -> Option<&'static VmSize> {
    CATALOGUE.iter().find(|s| s.name.eq_ignore_ascii_case(name))
}

/// A size an operator defines for their own machines (`[[custom_vm_sizes]]` in the config).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomSize {
    pub name: String,
    /// The usages family it counts under (a new one is listed after Azure's).
    pub family: String,
    pub cores: u32,
    pub memory_mib: u64,
    #[serde(default)]
    pub gpus: u32,
}

/// A size's figures, from Azure's catalogue or the operator's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size<'a> {
    pub name: &'a str,
    pub family: &'a str,
    pub cores: u32,
    pub memory_mib: u64,
    pub gpus: u32,
}

/// Azure's sizes and the operator's; an operator's size of the same name wins.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Catalogue {
    pub custom: Vec<CustomSize>,
}

impl Catalogue {
    pub fn find(&self, name: &str) -> Option<Size<'_>> {
        if let Some(c) = self.custom.iter().find(|c| c.name.eq_ignore_ascii_case(name)) {
            return Some(Size {
                name: &c.name,
                family: &c.family,
                cores: c.cores,
                memory_mib: c.memory_mib,
                gpus: c.gpus,
            });
        }
        find(name).map(|v| Size {
            name: v.name,
            family: v.family,
            cores: v.cores,
            memory_mib: v.memory_mib,
            gpus: v.gpus,
        })
    }

    /// Usage families: Azure's in their order, then the operator's new ones.
    pub fn families(&self) -> Vec<&str> {
        let mut out: Vec<&str> = FAMILIES.to_vec();
        for c in &self.custom {
            if !out.contains(&c.family.as_str()) {
                out.push(&c.family);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_sizes_ignoring_case() {
        let nc6 = find("Standard_NC6").unwrap();
        assert_eq!((nc6.cores, nc6.gpus, nc6.family), (6, 1, "NC"));
        assert!(find("STANDARD_NOPE").is_none());
        assert!(CATALOGUE.iter().all(|s| FAMILIES.contains(&s.family)));
    }

    #[test]
    fn operator_sizes_extend_and_override_the_catalogue() {
        let c = Catalogue {
            custom: vec![
                CustomSize {
                    name: "ONPREM_8A100".into(),
                    family: "A100".into(),
                    cores: 128,
                    memory_mib: 1 << 20,
                    gpus: 8,
                },
                CustomSize { name: "STANDARD_NC6".into(), family: "NC".into(), cores: 8, memory_mib: 65536, gpus: 1 },
            ],
        };
        assert_eq!(c.find("onprem_8a100").map(|s| (s.gpus, s.family)), Some((8, "A100")));
        assert_eq!(c.find("Standard_NC6").map(|s| s.cores), Some(8));
        assert_eq!(c.find("STANDARD_D1").map(|s| s.cores), Some(1));
        assert_eq!(c.families().last(), Some(&"A100"));
        assert_eq!(c.families().iter().filter(|f| **f == "NC").count(), 1);
    }
}
