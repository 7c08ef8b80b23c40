//! The 2018-05-01 request models of clusters and jobs, as stored and served.
//!
//! A definition is parsed once from the PUT body (unknown fields are ignored, as ARM does),
//! gets the service's defaults filled in, and is stored whole. Responses serve
//! [`redacted`](ClusterSpec::redacted) copies: secrets are write-only.

use serde::{Deserialize, Serialize};

macro_rules! model {
    ($(#[$m:meta])* $name:ident { $($(#[$fm:meta])* $field:ident : $ty:ty),* $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
        #[serde(rename_all = "camelCase")]
        pub struct $name {
            $($(#[$fm])* pub $field: $ty,)*
        }
    };
}

model!(ResourceIdRef { id: String });

model!(KeyVaultSecretReference { source_vault: ResourceIdRef, secret_url: String });

model!(EnvironmentVariable { name: String, value: String });

model!(EnvironmentVariableWithSecretValue {
    name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    value_secret_reference: Option<KeyVaultSecretReference>,
});

model!(UserAccountSettings {
    admin_user_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    admin_user_ssh_public_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    admin_user_password: Option<String>,
});

model!(ManualScaleSettings {
    target_node_count: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    node_deallocation_option: Option<String>,
});

model!(AutoScaleSettings {
    minimum_node_count: i32,
    maximum_node_count: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    initial_node_count: Option<i32>,
});

model!(ScaleSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    manual: Option<ManualScaleSettings>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    auto_scale: Option<AutoScaleSettings>,
});

model!(ImageReference {
    publisher: String,
    offer: String,
    sku: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    virtual_machine_image_id: Option<String>,
});

model!(VirtualMachineConfiguration {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    image_reference: Option<ImageReference>,
});

model!(SetupTask {
    command_line: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    environment_variables: Option<Vec<EnvironmentVariable>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    secrets: Option<Vec<EnvironmentVariableWithSecretValue>>,
    std_out_err_path_prefix: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    std_out_err_path_suffix: Option<String>,
});

model!(AppInsightsReference {
    component: ResourceIdRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    instrumentation_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    instrumentation_key_secret_reference: Option<KeyVaultSecretReference>,
});

model!(PerformanceCountersSettings { app_insights_reference: AppInsightsReference });

model!(AzureStorageCredentialsInfo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    account_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    account_key_secret_reference: Option<KeyVaultSecretReference>,
});

model!(AzureFileShareReference {
    account_name: String,
    azure_file_url: String,
    credentials: AzureStorageCredentialsInfo,
    relative_mount_path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    file_mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    directory_mode: Option<String>,
});

model!(AzureBlobFileSystemReference {
    account_name: String,
    container_name: String,
    credentials: AzureStorageCredentialsInfo,
    relative_mount_path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mount_options: Option<String>,
});

model!(FileServerReference {
    file_server: ResourceIdRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    source_directory: Option<String>,
    relative_mount_path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mount_options: Option<String>,
});

model!(UnmanagedFileSystemReference { mount_command: String, relative_mount_path: String });

model!(MountVolumes {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    azure_file_shares: Option<Vec<AzureFileShareReference>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    azure_blob_file_systems: Option<Vec<AzureBlobFileSystemReference>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    file_servers: Option<Vec<FileServerReference>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    unmanaged_file_systems: Option<Vec<UnmanagedFileSystemReference>>,
});

model!(NodeSetup {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    setup_task: Option<SetupTask>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mount_volumes: Option<MountVolumes>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    performance_counters_settings: Option<PerformanceCountersSettings>,
});

model!(
    /// `ClusterBaseProperties`: what a cluster PUT carries.
    ClusterSpec {
        vm_size: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        vm_priority: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        scale_settings: Option<ScaleSettings>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        virtual_machine_configuration: Option<VirtualMachineConfiguration>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        node_setup: Option<NodeSetup>,
        user_account_settings: UserAccountSettings,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        subnet: Option<ResourceIdRef>,
    }
);

model!(
    /// `ClusterUpdateProperties`: the PATCH body's properties.
    ClusterUpdate {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        scale_settings: Option<ScaleSettings>,
    }
);

model!(SshConfiguration {
    #[serde(default, rename = "publicIPsToAllow", skip_serializing_if = "Option::is_none")]
    public_ips_to_allow: Option<Vec<String>>,
    user_account_settings: UserAccountSettings,
});

model!(DataDisks {
    #[serde(rename = "diskSizeInGB")]
    disk_size_in_gb: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    caching_type: Option<String>,
    disk_count: i32,
    storage_account_type: String,
});

model!(
    /// Read-only `mountSettings` of a file server: where its export is.
    MountSettings {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mount_point: Option<String>,
        #[serde(default, rename = "fileServerPublicIP", skip_serializing_if = "Option::is_none")]
        file_server_public_ip: Option<String>,
        #[serde(default, rename = "fileServerInternalIP", skip_serializing_if = "Option::is_none")]
        file_server_internal_ip: Option<String>,
    }
);

model!(
    /// The operator's declaration a file server was created from (`batchai admin file-server
    /// declare`): what nodes mount. Stored with the file server, never served.
    DeclaredExport {
        /// `host:/path` (NFS) or an absolute local path.
        export: String,
        /// Options for `mount -o`; empty for the defaults.
        #[serde(default)]
        mount_options: String,
    }
);

model!(
    /// `FileServerBaseProperties`: what a file server PUT carries, plus what the service fills
    /// in (`mountSettings`) and the declaration it was created from (stored, never served).
    FileServerSpec {
        vm_size: String,
        ssh_configuration: SshConfiguration,
        data_disks: DataDisks,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        subnet: Option<ResourceIdRef>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mount_settings: Option<MountSettings>,
        #[serde(default, rename = "x-batchai-declared", skip_serializing_if = "Option::is_none")]
        declared: Option<DeclaredExport>,
    }
);

model!(PrivateRegistryCredentials {
    username: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    password: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    password_secret_reference: Option<KeyVaultSecretReference>,
});

model!(ImageSourceRegistry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    server_url: Option<String>,
    image: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    credentials: Option<PrivateRegistryCredentials>,
});

model!(ContainerSettings {
    image_source_registry: ImageSourceRegistry,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    shm_size: Option<String>,
});

model!(CntkSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    language_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    config_file_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    python_script_file_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    python_interpreter_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    command_line_args: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    process_count: Option<i32>,
});

model!(TensorFlowSettings {
    python_script_file_path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    python_interpreter_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    master_command_line_args: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    worker_command_line_args: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    parameter_server_command_line_args: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    worker_count: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    parameter_server_count: Option<i32>,
});

model!(PyTorchSettings {
    python_script_file_path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    python_interpreter_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    command_line_args: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    process_count: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    communication_backend: Option<String>,
});

model!(CaffeSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    config_file_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    python_script_file_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    python_interpreter_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    command_line_args: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    process_count: Option<i32>,
});

model!(
    /// Shared by caffe2, chainer and horovod (same fields; caffe2 has no processCount and
    /// rejects it in validation).
    PythonScriptSettings {
        python_script_file_path: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        python_interpreter_path: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        command_line_args: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        process_count: Option<i32>,
    }
);

model!(CustomMpiSettings {
    command_line: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    process_count: Option<i32>,
});

model!(CustomToolkitSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    command_line: Option<String>,
});

model!(JobPreparation { command_line: String });

model!(InputDirectory { id: String, path: String });

model!(OutputDirectory {
    id: String,
    path_prefix: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    path_suffix: Option<String>,
});

model!(JobConstraints {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_wall_clock_time: Option<String>,
});

model!(
    /// `JobBaseProperties`: what a job PUT carries.
    JobSpec {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        scheduling_priority: Option<String>,
        cluster: ResourceIdRef,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mount_volumes: Option<MountVolumes>,
        node_count: i32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        container_settings: Option<ContainerSettings>,
        #[serde(default, rename = "cntkSettings", skip_serializing_if = "Option::is_none")]
        cntk_settings: Option<CntkSettings>,
        #[serde(default, rename = "pyTorchSettings", skip_serializing_if = "Option::is_none")]
        py_torch_settings: Option<PyTorchSettings>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tensor_flow_settings: Option<TensorFlowSettings>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        caffe_settings: Option<CaffeSettings>,
        #[serde(default, rename = "caffe2Settings", skip_serializing_if = "Option::is_none")]
        caffe2_settings: Option<PythonScriptSettings>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        chainer_settings: Option<PythonScriptSettings>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        custom_toolkit_settings: Option<CustomToolkitSettings>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        custom_mpi_settings: Option<CustomMpiSettings>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        horovod_settings: Option<PythonScriptSettings>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        job_preparation: Option<JobPreparation>,
        std_out_err_path_prefix: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        input_directories: Option<Vec<InputDirectory>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        output_directories: Option<Vec<OutputDirectory>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        environment_variables: Option<Vec<EnvironmentVariable>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        secrets: Option<Vec<EnvironmentVariableWithSecretValue>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        constraints: Option<JobConstraints>,
    }
);

/// The toolkit a job uses, derived from which settings object it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolType {
    Cntk,
    PyTorch,
    TensorFlow,
    Caffe,
    Caffe2,
    Chainer,
    Custom,
    CustomMpi,
    Horovod,
}

impl ToolType {
    /// The wire string. Custom MPI is `mpi`, the value of the spec revision that
    /// azure-mgmt-batchai 2.0.0 (and the live service's CLI) were generated from; PyTorch is
    /// `pytorch`, which the service returned although the enum lacks it.
    pub fn as_str(self) -> &'static str {
        match self {
            ToolType::Cntk => "cntk",
            ToolType::PyTorch => "pytorch",
            ToolType::TensorFlow => "tensorflow",
            ToolType::Caffe => "caffe",
            ToolType::Caffe2 => "caffe2",
            ToolType::Chainer => "chainer",
            ToolType::Custom => "custom",
            ToolType::CustomMpi => "mpi",
            ToolType::Horovod => "horovod",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        use ToolType::*;
        [Cntk, PyTorch, TensorFlow, Caffe, Caffe2, Chainer, Custom, CustomMpi, Horovod]
            .into_iter()
            .find(|t| t.as_str() == s)
    }
}

pub const DEFAULT_MAX_WALL_CLOCK: &str = "P7D";

fn default_image() -> ImageReference {
    ImageReference {
        publisher: "Canonical".into(),
        offer: "UbuntuServer".into(),
        sku: "16.04-LTS".into(),
        version: Some("latest".into()),
        virtual_machine_image_id: None,
    }
}

fn mount_defaults(m: &mut MountVolumes) {
    for share in m.azure_file_shares.iter_mut().flatten() {
        share.file_mode.get_or_insert_with(|| "0777".into());
        share.directory_mode.get_or_insert_with(|| "0777".into());
    }
}

fn redact_mounts(m: &mut MountVolumes) {
    for share in m.azure_file_shares.iter_mut().flatten() {
        share.credentials.account_key = None;
    }
    for blob in m.azure_blob_file_systems.iter_mut().flatten() {
        blob.credentials.account_key = None;
    }
}

fn redact_secrets(secrets: &mut Option<Vec<EnvironmentVariableWithSecretValue>>) {
    for s in secrets.iter_mut().flatten() {
        s.value = None;
    }
}

impl ClusterSpec {
    /// Fills in what the service returned on GET although the client did not send it.
    /// `setup_suffix` is the generated `stdOutErrPathSuffix` of the setup task.
    pub fn apply_defaults(&mut self, setup_suffix: &str) {
        self.vm_priority = Some(self.vm_priority.take().unwrap_or_else(|| "dedicated".into()).to_lowercase());
        let scale = self.scale_settings.get_or_insert(ScaleSettings {
            manual: Some(ManualScaleSettings { target_node_count: 0, node_deallocation_option: None }),
            auto_scale: None,
        });
        scale_defaults(scale);
        let vm = self.virtual_machine_configuration.get_or_insert_with(Default::default);
        vm.image_reference.get_or_insert_with(default_image);
        if let Some(setup) = &mut self.node_setup {
            if let Some(task) = &mut setup.setup_task {
                task.std_out_err_path_suffix = Some(setup_suffix.to_owned());
            }
            if let Some(m) = &mut setup.mount_volumes {
                mount_defaults(m);
            }
        }
    }

    /// A copy fit to be served: no password, storage key or secret value.
    pub fn redacted(&self) -> Self {
        let mut c = self.clone();
        c.user_account_settings.admin_user_password = None;
        if let Some(setup) = &mut c.node_setup {
            if let Some(task) = &mut setup.setup_task {
                redact_secrets(&mut task.secrets);
            }
            if let Some(m) = &mut setup.mount_volumes {
                redact_mounts(m);
            }
            if let Some(p) = &mut setup.performance_counters_settings {
                p.app_insights_reference.instrumentation_key = None;
            }
        }
        c
    }
}

/// Lower-cases the enum-like strings and fills the scale defaults.
pub fn scale_defaults(scale: &mut ScaleSettings) {
    if let Some(m) = &mut scale.manual {
        m.node_deallocation_option =
            Some(m.node_deallocation_option.take().unwrap_or_else(|| "requeue".into()).to_lowercase());
    }
    if let Some(a) = &mut scale.auto_scale {
        a.initial_node_count.get_or_insert(0);
    }
}

impl FileServerSpec {
    /// Fills in what the service returned on GET although the client did not send it.
    pub fn apply_defaults(&mut self) {
        let caching = self.data_disks.caching_type.take().unwrap_or_else(|| "none".into());
        self.data_disks.caching_type = Some(caching.to_lowercase());
    }

    /// A copy fit to be served: no password, no declaration.
    pub fn redacted(&self) -> Self {
        let mut f = self.clone();
        f.ssh_configuration.user_account_settings.admin_user_password = None;
        f.declared = None;
        f
    }
}

impl JobSpec {
    /// The toolkits present, in spec order; validation requires exactly one.
    pub fn tool_types(&self) -> Vec<ToolType> {
        let present = [
            (self.cntk_settings.is_some(), ToolType::Cntk),
            (self.py_torch_settings.is_some(), ToolType::PyTorch),
            (self.tensor_flow_settings.is_some(), ToolType::TensorFlow),
            (self.caffe_settings.is_some(), ToolType::Caffe),
            (self.caffe2_settings.is_some(), ToolType::Caffe2),
            (self.chainer_settings.is_some(), ToolType::Chainer),
            (self.custom_toolkit_settings.is_some(), ToolType::Custom),
            (self.custom_mpi_settings.is_some(), ToolType::CustomMpi),
            (self.horovod_settings.is_some(), ToolType::Horovod),
        ];
        present.into_iter().filter_map(|(p, t)| p.then_some(t)).collect()
    }

    pub fn apply_defaults(&mut self) {
        self.scheduling_priority =
            Some(self.scheduling_priority.take().unwrap_or_else(|| "normal".into()).to_lowercase());
        let c = self.constraints.get_or_insert_with(Default::default);
        c.max_wall_clock_time.get_or_insert_with(|| DEFAULT_MAX_WALL_CLOCK.into());
        if let Some(m) = &mut self.mount_volumes {
            mount_defaults(m);
        }
    }

    pub fn redacted(&self) -> Self {
        let mut j = self.clone();
        redact_secrets(&mut j.secrets);
        if let Some(m) = &mut j.mount_volumes {
            redact_mounts(m);
        }
        if let Some(c) = &mut j.container_settings
            && let Some(cred) = &mut c.image_source_registry.credentials
        {
            cred.password = None;
        }
        j
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn cluster_defaults_and_redaction() {
        let mut c: ClusterSpec = serde_json::from_value(json!({
            "vmSize": "STANDARD_NC6",
            "scaleSettings": {"manual": {"targetNodeCount": 1}},
            "nodeSetup": {"mountVolumes": {"azureFileShares": [{"accountName": "a",
                "azureFileUrl": "https://a.file.core.windows.net/s", "credentials": {"accountKey": "K"},
                "relativeMountPath": "afs"}]},
                "setupTask": {"commandLine": "true", "stdOutErrPathPrefix": "$AZ_BATCHAI_MOUNT_ROOT/afs",
                    "secrets": [{"name": "S", "value": "v"}]}},
            "userAccountSettings": {"adminUserName": "u", "adminUserPassword": "p"},
            "unknownField": 1
        }))
        .unwrap();
        c.apply_defaults("sub/rg/workspaces/w/clusters/c/uuid");
        let out = serde_json::to_value(c.redacted()).unwrap();
        assert_eq!(out["vmPriority"], "dedicated");
        assert_eq!(out["scaleSettings"]["manual"]["nodeDeallocationOption"], "requeue");
        assert_eq!(out["virtualMachineConfiguration"]["imageReference"]["sku"], "16.04-LTS");
        let share = &out["nodeSetup"]["mountVolumes"]["azureFileShares"][0];
        assert_eq!(share["credentials"], json!({}));
        assert_eq!(share["fileMode"], "0777");
        assert_eq!(out["userAccountSettings"], json!({"adminUserName": "u"}));
        assert_eq!(out["nodeSetup"]["setupTask"]["secrets"], json!([{"name": "S"}]));
        assert_eq!(out["nodeSetup"]["setupTask"]["stdOutErrPathSuffix"], "sub/rg/workspaces/w/clusters/c/uuid");
        let text = out.to_string();
        for secret in ["\"K\"", "\"p\"", "\"v\""] {
            assert!(!text.contains(secret), "{secret} leaked in {text}");
        }
    }

    #[test]
    fn file_server_defaults_and_redaction() {
        let mut f: FileServerSpec = serde_json::from_value(json!({
            "vmSize": "STANDARD_D2",
            "sshConfiguration": {"publicIPsToAllow": ["10.0.0.0/8"],
                "userAccountSettings": {"adminUserName": "u", "adminUserPassword": "pw"}},
            "dataDisks": {"diskSizeInGB": 10, "diskCount": 2, "storageAccountType": "Standard_LRS"}
        }))
        .unwrap();
        f.apply_defaults();
        f.declared = Some(DeclaredExport { export: "nfs:/export".into(), mount_options: "hard".into() });
        let stored = serde_json::to_value(&f).unwrap();
        assert_eq!(stored["x-batchai-declared"]["export"], "nfs:/export");
        let back: FileServerSpec = serde_json::from_value(stored).unwrap();
        assert_eq!(back, f, "the stored form reads back");
        let out = serde_json::to_value(f.redacted()).unwrap();
        assert_eq!(out["dataDisks"]["cachingType"], "none");
        assert_eq!(out["dataDisks"]["diskSizeInGB"], 10);
        assert_eq!(out["sshConfiguration"]["publicIPsToAllow"], json!(["10.0.0.0/8"]));
        assert_eq!(out["sshConfiguration"]["userAccountSettings"], json!({"adminUserName": "u"}));
        assert!(out.get("x-batchai-declared").is_none(), "{out}");
    }

    #[test]
    fn job_defaults_tooltype_and_redaction() {
        let mut j: JobSpec = serde_json::from_value(json!({
            "cluster": {"id": "x"}, "nodeCount": 1, "stdOutErrPathPrefix": "/tmp",
            "customToolkitSettings": {"commandLine": "echo hi"},
            "secrets": [{"name": "S", "value": "hush"}],
            "containerSettings": {"imageSourceRegistry": {"image": "i", "credentials": {"username": "u", "password": "pw"}}}
        }))
        .unwrap();
        j.apply_defaults();
        assert_eq!(j.tool_types(), vec![ToolType::Custom]);
        let out = serde_json::to_value(j.redacted()).unwrap();
        assert_eq!(out["schedulingPriority"], "normal");
        assert_eq!(out["constraints"]["maxWallClockTime"], "P7D");
        assert!(!out.to_string().contains("hush"));
        assert!(!out.to_string().contains("pw"));
    }
}
