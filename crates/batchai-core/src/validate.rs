//! Request validation. Every failure is a 400 whose `target` names the field, so a script author
//! sees which part of a long job definition is wrong.

use std::collections::HashSet;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::contract::volumes;
use crate::error::{ApiError, ErrorCode};
use crate::ids::{Kind, ResourceRef};
use crate::models::*;
use crate::state::Priority;

/// Parses a JSON body, reporting the path of the first bad field as `target`.
///
/// Stricter than serde's defaults in two ways a client can trip over: trailing data after the
/// JSON value is refused, and so is an array where an object belongs (derived deserializers
/// would read it positionally into the struct's fields).
pub fn parse_json<T: DeserializeOwned + Serialize>(body: &[u8], root: &str) -> Result<T, ApiError> {
    let target_of = |path: &str| match (root.is_empty(), path) {
        (true, p) => p.to_owned(),
        (false, ".") => root.to_owned(),
        (false, p) => format!("{root}.{p}"),
    };
    let input: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::new(ErrorCode::InvalidRequestContent, format!("The request content is not valid JSON: {e}"))
            .with_target(target_of("."))
    })?;
    let parsed: T = serde_path_to_error::deserialize(&input).map_err(|e| {
        let target = target_of(&e.path().to_string());
        ApiError::new(ErrorCode::InvalidParameter, format!("The request content is invalid: {}", e.into_inner()))
            .with_target(target)
    })?;
    let understood = serde_json::to_value(&parsed).map_err(|_| ApiError::internal())?;
    same_shape(&input, &understood, "").map_err(|path| {
        let path = if path.is_empty() { ".".to_owned() } else { path };
        ApiError::new(ErrorCode::InvalidParameter, "The request content is invalid: expected an object, got an array")
            .with_target(target_of(&path))
    })?;
    Ok(parsed)
}

/// Checks that every object the model understood was an object in the input (and every
/// array an array); returns the path of the first mismatch.
fn same_shape(input: &Value, understood: &Value, path: &str) -> Result<(), String> {
    let join = |k: &str| if path.is_empty() { k.to_owned() } else { format!("{path}.{k}") };
    match understood {
        Value::Object(fields) => {
            let Value::Object(given) = input else { return Err(path.to_owned()) };
            for (k, v) in fields {
                if let Some(g) = given.get(k) {
                    same_shape(g, v, &join(k))?;
                }
            }
            Ok(())
        }
        Value::Array(items) => {
            let Value::Array(given) = input else { return Err(path.to_owned()) };
            for (i, (g, v)) in given.iter().zip(items).enumerate() {
                same_shape(g, v, &format!("{path}[{i}]"))?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn need(ok: bool, target: &str, msg: impl Into<String>) -> Result<(), ApiError> {
    if ok { Ok(()) } else { Err(ApiError::invalid(target, msg)) }
}

fn non_empty(s: &str, target: &str) -> Result<(), ApiError> {
    need(!s.trim().is_empty(), target, format!("{target} must not be empty"))
}

fn one_of(value: &str, allowed: &[&str], target: &str) -> Result<(), ApiError> {
    need(
        allowed.iter().any(|a| a.eq_ignore_ascii_case(value)),
        target,
        format!("'{value}' is not a valid value for {target}; allowed: {}", allowed.join(", ")),
    )
}

fn positive(v: Option<i32>, target: &str) -> Result<(), ApiError> {
    match v {
        Some(n) if n < 1 => Err(ApiError::invalid(target, format!("{target} must be at least 1, got {n}"))),
        _ => Ok(()),
    }
}

/// A mount path relative to the mount root: one or more plain segments.
fn relative_path(p: &str, target: &str) -> Result<(), ApiError> {
    let ok = !p.is_empty()
        && !p.starts_with('/')
        && !p.contains('\\')
        && p.split('/').all(|s| !s.is_empty() && s != "." && s != "..");
    need(ok, target, format!("{target} must be a relative path without '..', got '{p}'"))
}

/// Env var names as a shell accepts them.
fn env_name(name: &str, target: &str) -> Result<(), ApiError> {
    let mut chars = name.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    need(ok, target, format!("'{name}' is not a valid environment variable name"))
}

fn env_and_secrets(
    env: &Option<Vec<EnvironmentVariable>>,
    secrets: &Option<Vec<EnvironmentVariableWithSecretValue>>,
    base: &str,
) -> Result<(), ApiError> {
    let mut seen = HashSet::new();
    for (i, e) in env.iter().flatten().enumerate() {
        let t = format!("{base}environmentVariables[{i}].name");
        env_name(&e.name, &t)?;
        need(seen.insert(e.name.clone()), &t, format!("environment variable '{}' is given twice", e.name))?;
    }
    for (i, s) in secrets.iter().flatten().enumerate() {
        let t = format!("{base}secrets[{i}]");
        env_name(&s.name, &format!("{t}.name"))?;
        need(
            seen.insert(s.name.clone()),
            &format!("{t}.name"),
            format!("environment variable '{}' is given twice", s.name),
        )?;
        need(
            s.value.is_some() != s.value_secret_reference.is_some(),
            &t,
            "exactly one of value and valueSecretReference must be given",
        )?;
    }
    Ok(())
}

fn storage_credentials(c: &AzureStorageCredentialsInfo, target: &str) -> Result<(), ApiError> {
    need(
        c.account_key.is_some() != c.account_key_secret_reference.is_some(),
        target,
        "exactly one of accountKey and accountKeySecretReference must be given",
    )
}

fn mount_volumes(m: &MountVolumes, base: &str) -> Result<(), ApiError> {
    let mut paths = HashSet::new();
    let mut add = |p: &str, t: String| -> Result<(), ApiError> {
        relative_path(p, &t)?;
        need(paths.insert(p.to_owned()), &t, format!("relativeMountPath '{p}' is used twice"))
    };
    for (i, s) in m.azure_file_shares.iter().flatten().enumerate() {
        let t = format!("{base}azureFileShares[{i}]");
        non_empty(&s.account_name, &format!("{t}.accountName"))?;
        need(
            s.azure_file_url.starts_with("https://") || s.azure_file_url.starts_with("http://"),
            &format!("{t}.azureFileUrl"),
            "azureFileUrl must be an http(s) URL such as https://<account>.file.core.windows.net/<share>",
        )?;
        storage_credentials(&s.credentials, &format!("{t}.credentials"))?;
        for (mode, name) in [(&s.file_mode, "fileMode"), (&s.directory_mode, "directoryMode")] {
            if let Some(mode) = mode {
                let ok = (1..=4).contains(&mode.len()) && mode.chars().all(|c| ('0'..='7').contains(&c));
                need(ok, &format!("{t}.{name}"), format!("'{mode}' is not an octal file mode"))?;
            }
        }
        add(&s.relative_mount_path, format!("{t}.relativeMountPath"))?;
    }
    for (i, b) in m.azure_blob_file_systems.iter().flatten().enumerate() {
        let t = format!("{base}azureBlobFileSystems[{i}]");
        non_empty(&b.account_name, &format!("{t}.accountName"))?;
        non_empty(&b.container_name, &format!("{t}.containerName"))?;
        storage_credentials(&b.credentials, &format!("{t}.credentials"))?;
        add(&b.relative_mount_path, format!("{t}.relativeMountPath"))?;
    }
    for (i, f) in m.file_servers.iter().flatten().enumerate() {
        let t = format!("{base}fileServers[{i}]");
        ResourceRef::parse_id(&f.file_server.id, Kind::FileServer)
            .map_err(|e| ApiError::invalid(format!("{t}.fileServer.id"), e))?;
        if let Some(source) = &f.source_directory {
            volumes::source_directory(source).map_err(|e| ApiError::invalid(format!("{t}.sourceDirectory"), e))?;
        }
        if let Some(options) = &f.mount_options {
            volumes::check_mount_options(options).map_err(|e| ApiError::invalid(format!("{t}.mountOptions"), e))?;
        }
        add(&f.relative_mount_path, format!("{t}.relativeMountPath"))?;
    }
    for (i, u) in m.unmanaged_file_systems.iter().flatten().enumerate() {
        let t = format!("{base}unmanagedFileSystems[{i}]");
        non_empty(&u.mount_command, &format!("{t}.mountCommand"))?;
        add(&u.relative_mount_path, format!("{t}.relativeMountPath"))?;
    }
    Ok(())
}

/// Exactly one of manual / autoScale, with sane counts.
pub fn scale_settings(s: &ScaleSettings, base: &str) -> Result<(), ApiError> {
    let t = format!("{base}scaleSettings");
    match (&s.manual, &s.auto_scale) {
        (Some(m), None) => {
            need(
                m.target_node_count >= 0,
                &format!("{t}.manual.targetNodeCount"),
                "targetNodeCount must be 0 or more",
            )?;
            if let Some(o) = &m.node_deallocation_option {
                one_of(
                    o,
                    &["requeue", "terminate", "waitforjobcompletion"],
                    &format!("{t}.manual.nodeDeallocationOption"),
                )?;
            }
            Ok(())
        }
        (None, Some(a)) => {
            let t = format!("{t}.autoScale");
            need(a.minimum_node_count >= 0, &format!("{t}.minimumNodeCount"), "minimumNodeCount must be 0 or more")?;
            need(
                a.maximum_node_count >= a.minimum_node_count.max(1),
                &format!("{t}.maximumNodeCount"),
                "maximumNodeCount must be at least 1 and not below minimumNodeCount",
            )?;
            if let Some(init) = a.initial_node_count {
                need(init >= 0, &format!("{t}.initialNodeCount"), "initialNodeCount must be 0 or more")?;
            }
            Ok(())
        }
        (Some(_), Some(_)) => Err(ApiError::invalid(&t, "Only one of manual and autoScale can be specified")),
        (None, None) => Err(ApiError::invalid(&t, "At least one of manual and autoScale must be specified")),
    }
}

pub fn cluster(c: &ClusterSpec) -> Result<(), ApiError> {
    let p = "properties.";
    non_empty(&c.vm_size, "properties.vmSize")?;
    if let Some(v) = &c.vm_priority {
        one_of(v, &["dedicated", "lowpriority"], "properties.vmPriority")?;
    }
    if let Some(s) = &c.scale_settings {
        scale_settings(s, p)?;
    }
    let u = &c.user_account_settings;
    non_empty(&u.admin_user_name, "properties.userAccountSettings.adminUserName")?;
    need(
        u.admin_user_password.is_some() || u.admin_user_ssh_public_key.is_some(),
        "properties.userAccountSettings",
        "adminUserPassword or adminUserSshPublicKey must be given",
    )?;
    if let Some(img) = c.virtual_machine_configuration.as_ref().and_then(|v| v.image_reference.as_ref()) {
        let t = "properties.virtualMachineConfiguration.imageReference";
        non_empty(&img.publisher, &format!("{t}.publisher"))?;
        non_empty(&img.offer, &format!("{t}.offer"))?;
        non_empty(&img.sku, &format!("{t}.sku"))?;
    }
    if let Some(setup) = &c.node_setup {
        if let Some(task) = &setup.setup_task {
            let t = "properties.nodeSetup.setupTask.";
            non_empty(&task.command_line, &format!("{t}commandLine"))?;
            non_empty(&task.std_out_err_path_prefix, &format!("{t}stdOutErrPathPrefix"))?;
            env_and_secrets(&task.environment_variables, &task.secrets, t)?;
        }
        if let Some(m) = &setup.mount_volumes {
            mount_volumes(m, "properties.nodeSetup.mountVolumes.")?;
        }
    }
    Ok(())
}

/// The file server references of `m` with the field naming each (`<base>fileServers[i].fileServer.id`).
pub fn file_server_refs<'a>(m: Option<&'a MountVolumes>, base: &str) -> Vec<(&'a str, String)> {
    let refs = m.and_then(|m| m.file_servers.as_ref()).into_iter().flatten();
    refs.enumerate()
        .map(|(i, f)| (f.file_server.id.as_str(), format!("{base}fileServers[{i}].fileServer.id")))
        .collect()
}

/// A file server PUT (`FileServerBaseProperties`).
pub fn file_server(f: &FileServerSpec) -> Result<(), ApiError> {
    non_empty(&f.vm_size, "properties.vmSize")?;
    let ssh = &f.ssh_configuration;
    let t = "properties.sshConfiguration";
    let u = &ssh.user_account_settings;
    non_empty(&u.admin_user_name, &format!("{t}.userAccountSettings.adminUserName"))?;
    need(
        u.admin_user_password.is_some() || u.admin_user_ssh_public_key.is_some(),
        &format!("{t}.userAccountSettings"),
        "adminUserPassword or adminUserSshPublicKey must be given",
    )?;
    if let Some(ips) = &ssh.public_ips_to_allow {
        need(ips.len() <= 400, &format!("{t}.publicIPsToAllow"), "at most 400 entries are allowed")?;
        for (i, ip) in ips.iter().enumerate() {
            non_empty(ip, &format!("{t}.publicIPsToAllow[{i}]"))?;
        }
    }
    let d = &f.data_disks;
    let t = "properties.dataDisks";
    need(d.disk_size_in_gb >= 1, &format!("{t}.diskSizeInGB"), "diskSizeInGB must be at least 1")?;
    need(d.disk_count >= 1, &format!("{t}.diskCount"), "diskCount must be at least 1")?;
    one_of(&d.storage_account_type, &["Standard_LRS", "Premium_LRS"], &format!("{t}.storageAccountType"))?;
    if let Some(c) = &d.caching_type {
        one_of(c, &["none", "readonly", "readwrite"], &format!("{t}.cachingType"))?;
    }
    if let Some(subnet) = &f.subnet {
        non_empty(&subnet.id, "properties.subnet.id")?;
    }
    Ok(())
}

/// Validates a job and returns its toolkit and parsed cluster reference.
pub fn job(j: &JobSpec) -> Result<(ToolType, ResourceRef, Priority, u64), ApiError> {
    let cluster = ResourceRef::parse_id(&j.cluster.id, Kind::Cluster)
        .map_err(|e| ApiError::invalid("properties.cluster.id", e))?;
    need(j.node_count >= 1, "properties.nodeCount", format!("nodeCount must be at least 1, got {}", j.node_count))?;
    let priority = match &j.scheduling_priority {
        None => Priority::Normal,
        Some(p) => Priority::parse(p).ok_or_else(|| {
            ApiError::invalid("properties.schedulingPriority", format!("'{p}' is not one of low, normal, high"))
        })?,
    };
    non_empty(&j.std_out_err_path_prefix, "properties.stdOutErrPathPrefix")?;
    let tools = j.tool_types();
    let tool = match tools.as_slice() {
        [one] => *one,
        [] => {
            return Err(ApiError::invalid(
                "properties",
                "Exactly one toolkit settings object must be given (cntkSettings, pyTorchSettings, tensorFlowSettings, \
                 caffeSettings, caffe2Settings, chainerSettings, customToolkitSettings, customMpiSettings, horovodSettings)",
            ));
        }
        many => {
            let names: Vec<_> = many.iter().map(|t| t.as_str()).collect();
            return Err(ApiError::invalid(
                "properties",
                format!("Only one toolkit settings object can be given; got {}", names.join(", ")),
            ));
        }
    };
    toolkit(j, tool)?;
    if let Some(c) = &j.container_settings {
        non_empty(&c.image_source_registry.image, "properties.containerSettings.imageSourceRegistry.image")?;
        if let Some(cred) = &c.image_source_registry.credentials {
            let t = "properties.containerSettings.imageSourceRegistry.credentials";
            non_empty(&cred.username, &format!("{t}.username"))?;
            need(
                cred.password.is_some() != cred.password_secret_reference.is_some(),
                t,
                "exactly one of password and passwordSecretReference must be given",
            )?;
        }
    }
    if let Some(p) = &j.job_preparation {
        non_empty(&p.command_line, "properties.jobPreparation.commandLine")?;
    }
    let mut ids = HashSet::new();
    for (i, d) in j.input_directories.iter().flatten().enumerate() {
        let t = format!("properties.inputDirectories[{i}]");
        env_name(&format!("X{}", d.id), &format!("{t}.id"))?;
        need(
            ids.insert(format!("in:{}", d.id)),
            &format!("{t}.id"),
            format!("input directory id '{}' is used twice", d.id),
        )?;
        non_empty(&d.path, &format!("{t}.path"))?;
    }
    for (i, d) in j.output_directories.iter().flatten().enumerate() {
        let t = format!("properties.outputDirectories[{i}]");
        env_name(&format!("X{}", d.id), &format!("{t}.id"))?;
        need(
            !d.id.eq_ignore_ascii_case("stdouterr"),
            &format!("{t}.id"),
            "'stdouterr' is reserved for the job's logs",
        )?;
        need(
            ids.insert(format!("out:{}", d.id)),
            &format!("{t}.id"),
            format!("output directory id '{}' is used twice", d.id),
        )?;
        non_empty(&d.path_prefix, &format!("{t}.pathPrefix"))?;
        if let Some(s) = &d.path_suffix {
            need(!s.split('/').any(|seg| seg == ".."), &format!("{t}.pathSuffix"), "pathSuffix must not contain '..'")?;
        }
    }
    env_and_secrets(&j.environment_variables, &j.secrets, "properties.")?;
    if let Some(m) = &j.mount_volumes {
        mount_volumes(m, "properties.mountVolumes.")?;
    }
    let wall = j.constraints.as_ref().and_then(|c| c.max_wall_clock_time.as_deref()).unwrap_or(DEFAULT_MAX_WALL_CLOCK);
    let secs = parse_duration(wall).filter(|s| *s > 0).ok_or_else(|| {
        ApiError::invalid(
            "properties.constraints.maxWallClockTime",
            format!("'{wall}' is not a positive ISO-8601 duration such as PT1H or P7D"),
        )
    })?;
    Ok((tool, cluster, priority, secs))
}

fn toolkit(j: &JobSpec, tool: ToolType) -> Result<(), ApiError> {
    match tool {
        ToolType::Cntk => {
            let s = j.cntk_settings.as_ref().expect("tool type derived from presence");
            let t = "properties.cntkSettings";
            positive(s.process_count, &format!("{t}.processCount"))?;
            let python = match s.language_type.as_deref() {
                Some(l) => {
                    one_of(l, &["BrainScript", "Python"], &format!("{t}.languageType"))?;
                    l.eq_ignore_ascii_case("python")
                }
                None => s.python_script_file_path.is_some(),
            };
            if python {
                need(s.python_script_file_path.is_some(), t, "pythonScriptFilePath is required for Python CNTK jobs")?;
                need(
                    s.config_file_path.is_none(),
                    &format!("{t}.configFilePath"),
                    "configFilePath is only for BrainScript",
                )
            } else {
                need(s.config_file_path.is_some(), t, "configFilePath is required for BrainScript CNTK jobs")?;
                need(
                    s.python_script_file_path.is_none() && s.python_interpreter_path.is_none(),
                    t,
                    "pythonScriptFilePath and pythonInterpreterPath are only for Python CNTK jobs",
                )
            }
        }
        ToolType::Caffe => {
            let s = j.caffe_settings.as_ref().expect("tool type derived from presence");
            let t = "properties.caffeSettings";
            positive(s.process_count, &format!("{t}.processCount"))?;
            need(
                s.config_file_path.is_some() != s.python_script_file_path.is_some(),
                t,
                "exactly one of configFilePath and pythonScriptFilePath must be given",
            )?;
            need(
                s.python_interpreter_path.is_none() || s.python_script_file_path.is_some(),
                &format!("{t}.pythonInterpreterPath"),
                "pythonInterpreterPath needs pythonScriptFilePath",
            )
        }
        ToolType::TensorFlow => {
            let s = j.tensor_flow_settings.as_ref().expect("tool type derived from presence");
            let t = "properties.tensorFlowSettings";
            non_empty(&s.python_script_file_path, &format!("{t}.pythonScriptFilePath"))?;
            positive(s.worker_count, &format!("{t}.workerCount"))?;
            positive(s.parameter_server_count, &format!("{t}.parameterServerCount"))?;
            need(
                s.parameter_server_count.unwrap_or(0) <= j.node_count,
                &format!("{t}.parameterServerCount"),
                "parameterServerCount must not exceed nodeCount",
            )
        }
        ToolType::PyTorch => {
            let s = j.py_torch_settings.as_ref().expect("tool type derived from presence");
            let t = "properties.pyTorchSettings";
            non_empty(&s.python_script_file_path, &format!("{t}.pythonScriptFilePath"))?;
            positive(s.process_count, &format!("{t}.processCount"))?;
            match &s.communication_backend {
                Some(b) => one_of(b, &["TCP", "Gloo", "MPI", "NCCL"], &format!("{t}.communicationBackend")),
                None => Ok(()),
            }
        }
        ToolType::Caffe2 | ToolType::Chainer | ToolType::Horovod => {
            let (s, t) = match tool {
                ToolType::Caffe2 => (j.caffe2_settings.as_ref(), "properties.caffe2Settings"),
                ToolType::Chainer => (j.chainer_settings.as_ref(), "properties.chainerSettings"),
                _ => (j.horovod_settings.as_ref(), "properties.horovodSettings"),
            };
            let s = s.expect("tool type derived from presence");
            non_empty(&s.python_script_file_path, &format!("{t}.pythonScriptFilePath"))?;
            if tool == ToolType::Caffe2 {
                need(s.process_count.is_none(), &format!("{t}.processCount"), "caffe2Settings has no processCount")
            } else {
                positive(s.process_count, &format!("{t}.processCount"))
            }
        }
        ToolType::CustomMpi => {
            let s = j.custom_mpi_settings.as_ref().expect("tool type derived from presence");
            non_empty(&s.command_line, "properties.customMpiSettings.commandLine")?;
            positive(s.process_count, "properties.customMpiSettings.processCount")
        }
        ToolType::Custom => Ok(()),
    }
}

/// Seconds of an ISO-8601 duration (`P7D`, `PT1H30M`, `P1W`, `PT0.5S`) or of the .NET
/// TimeSpan form the spec's default uses (`7.00:00:00`, `01:30:00`).
pub fn parse_duration(s: &str) -> Option<u64> {
    let s = s.trim();
    if let Some(rest) = s.strip_prefix('P').or_else(|| s.strip_prefix('p')) {
        let mut secs = 0f64;
        let mut in_time = false;
        let mut num = String::new();
        let mut any = false;
        for c in rest.chars() {
            match c {
                '0'..='9' | '.' => num.push(c),
                'T' | 't' if num.is_empty() && !in_time => in_time = true,
                _ => {
                    let n: f64 = num.parse().ok()?;
                    num.clear();
                    any = true;
                    secs += n * match (c.to_ascii_uppercase(), in_time) {
                        ('W', false) => 604_800.0,
                        ('D', false) => 86_400.0,
                        ('H', true) => 3_600.0,
                        ('M', true) => 60.0,
                        ('S', true) => 1.0,
                        _ => return None,
                    };
                }
            }
        }
        if !num.is_empty() || !any || !secs.is_finite() || secs > 1e12 {
            return None;
        }
        return Some(secs.ceil() as u64);
    }
    // [d.]hh:mm:ss[.fff]
    let (days, clock) = match s.split_once('.') {
        Some((d, rest)) if rest.contains(':') && !d.contains(':') => (d.parse::<u64>().ok()?, rest),
        _ => (0, s),
    };
    let parts: Vec<&str> = clock.split(':').collect();
    if parts.len() != 3 {
        return None;
    }
    let h: u64 = parts[0].parse().ok()?;
    let m: u64 = parts[1].parse().ok()?;
    let sec: f64 = parts[2].parse().ok()?;
    if m >= 60 || !(0.0..60.0).contains(&sec) {
        return None;
    }
    Some(days.checked_mul(86_400)? + h * 3_600 + m * 60 + sec.ceil() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn job_json(extra: serde_json::Value) -> Vec<u8> {
        let mut base = json!({
            "cluster": {"id": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.BatchAI/workspaces/w/clusters/c"},
            "nodeCount": 1, "stdOutErrPathPrefix": "$AZ_BATCHAI_MOUNT_ROOT/afs",
        });
        for (k, v) in extra.as_object().unwrap() {
            base[k] = v.clone();
        }
        serde_json::to_vec(&base).unwrap()
    }

    fn check_job(extra: serde_json::Value) -> Result<ToolType, ApiError> {
        let j: JobSpec = parse_json(&job_json(extra), "properties")?;
        job(&j).map(|(t, ..)| t)
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("P7D"), Some(604_800));
        assert_eq!(parse_duration("PT1H30M"), Some(5_400));
        assert_eq!(parse_duration("P1DT1S"), Some(86_401));
        assert_eq!(parse_duration("7.00:00:00"), Some(604_800));
        assert_eq!(parse_duration("01:00:00"), Some(3_600));
        assert_eq!(parse_duration("PT0.5S"), Some(1));
        for bad in ["", "P", "PT", "7 days", "P1H", "PT1D", "1:2", "00:61:00"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn exactly_one_toolkit() {
        assert_eq!(check_job(json!({"customToolkitSettings": {"commandLine": "true"}})).unwrap(), ToolType::Custom);
        let none = check_job(json!({})).unwrap_err();
        assert_eq!(none.target.as_deref(), Some("properties"));
        let two = check_job(json!({"customToolkitSettings": {}, "cntkSettings": {"pythonScriptFilePath": "a.py"}}))
            .unwrap_err();
        assert!(two.message.contains("cntk"), "{}", two.message);
    }

    #[test]
    fn targets_name_the_field() {
        let e = check_job(json!({"nodeCount": 0, "customToolkitSettings": {}})).unwrap_err();
        assert_eq!(e.target.as_deref(), Some("properties.nodeCount"));
        let e = check_job(json!({"nodeCount": "one"})).unwrap_err();
        assert_eq!(e.target.as_deref(), Some("properties.nodeCount"));
        let e = check_job(json!({"pyTorchSettings": {}})).unwrap_err();
        assert_eq!(e.target.as_deref(), Some("properties.pyTorchSettings"));
        assert!(e.message.contains("pythonScriptFilePath"), "{}", e.message);
        let e = check_job(json!({"customToolkitSettings": {}, "schedulingPriority": "urgent"})).unwrap_err();
        assert_eq!(e.target.as_deref(), Some("properties.schedulingPriority"));
        let e = check_job(json!({"customToolkitSettings": {}, "constraints": {"maxWallClockTime": "forever"}}))
            .unwrap_err();
        assert_eq!(e.target.as_deref(), Some("properties.constraints.maxWallClockTime"));
        let e = check_job(json!({"customToolkitSettings": {}, "secrets": [{"name": "A"}]})).unwrap_err();
        assert_eq!(e.target.as_deref(), Some("properties.secrets[0]"));
    }

    #[test]
    fn toolkit_rules() {
        assert!(check_job(json!({"cntkSettings": {"configFilePath": "c.cntk"}})).is_ok());
        assert!(
            check_job(json!({"cntkSettings": {"languageType": "BrainScript", "pythonScriptFilePath": "a"}})).is_err()
        );
        assert!(check_job(json!({"caffeSettings": {"configFilePath": "s", "pythonScriptFilePath": "a"}})).is_err());
        assert!(check_job(json!({"caffe2Settings": {"pythonScriptFilePath": "a", "processCount": 2}})).is_err());
        assert!(
            check_job(json!({"tensorFlowSettings": {"pythonScriptFilePath": "a", "parameterServerCount": 2}})).is_err()
        );
        assert!(
            check_job(json!({"pyTorchSettings": {"pythonScriptFilePath": "a", "communicationBackend": "gloo"}}))
                .is_ok()
        );
        assert!(check_job(json!({"customMpiSettings": {"commandLine": "x", "processCount": 0}})).is_err());
    }

    #[test]
    fn cluster_rules() {
        let ok = json!({"vmSize": "STANDARD_NC6", "scaleSettings": {"manual": {"targetNodeCount": 1}},
            "userAccountSettings": {"adminUserName": "u", "adminUserPassword": "p"}});
        let c: ClusterSpec = serde_json::from_value(ok.clone()).unwrap();
        assert!(cluster(&c).is_ok());
        let mut both = ok.clone();
        both["scaleSettings"]["autoScale"] = json!({"minimumNodeCount": 0, "maximumNodeCount": 1});
        let c: ClusterSpec = serde_json::from_value(both).unwrap();
        assert_eq!(cluster(&c).unwrap_err().target.as_deref(), Some("properties.scaleSettings"));
        let mut bad_mount = ok;
        bad_mount["nodeSetup"] = json!({"mountVolumes": {"azureFileShares": [{"accountName": "a",
            "azureFileUrl": "https://a/s", "credentials": {"accountKey": "k"}, "relativeMountPath": "../x"}]}});
        let c: ClusterSpec = serde_json::from_value(bad_mount).unwrap();
        assert_eq!(
            cluster(&c).unwrap_err().target.as_deref(),
            Some("properties.nodeSetup.mountVolumes.azureFileShares[0].relativeMountPath")
        );
    }

    #[test]
    fn file_server_rules() {
        let ok = json!({"vmSize": "STANDARD_D2", "dataDisks": {"diskSizeInGB": 10, "diskCount": 2,
            "storageAccountType": "Standard_LRS"},
            "sshConfiguration": {"userAccountSettings": {"adminUserName": "u", "adminUserPassword": "p"}}});
        let f: FileServerSpec = serde_json::from_value(ok.clone()).unwrap();
        assert!(file_server(&f).is_ok());
        for (patch, target) in [
            (json!({"vmSize": ""}), "properties.vmSize"),
            (
                json!({"dataDisks": {"diskSizeInGB": 0, "diskCount": 1, "storageAccountType": "Standard_LRS"}}),
                "properties.dataDisks.diskSizeInGB",
            ),
            (
                json!({"dataDisks": {"diskSizeInGB": 1, "diskCount": 1, "storageAccountType": "Ultra"}}),
                "properties.dataDisks.storageAccountType",
            ),
            (
                json!({"dataDisks": {"diskSizeInGB": 1, "diskCount": 1, "storageAccountType": "Premium_LRS",
                "cachingType": "sometimes"}}),
                "properties.dataDisks.cachingType",
            ),
            (
                json!({"sshConfiguration": {"userAccountSettings": {"adminUserName": "u"}}}),
                "properties.sshConfiguration.userAccountSettings",
            ),
        ] {
            let mut body = ok.clone();
            for (k, v) in patch.as_object().unwrap() {
                body[k] = v.clone();
            }
            let f: FileServerSpec = serde_json::from_value(body).unwrap();
            assert_eq!(file_server(&f).unwrap_err().target.as_deref(), Some(target));
        }
        let e = parse_json::<FileServerSpec>(br#"{"vmSize": "x", "dataDisks": {}}"#, "properties").unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidParameter);
    }

    #[test]
    fn file_server_references_are_checked() {
        let fs = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.BatchAI/workspaces/w/fileServers/nfs";
        let check = |reference: serde_json::Value| {
            let j: JobSpec = parse_json(
                &job_json(json!({"customToolkitSettings": {}, "mountVolumes": {"fileServers": [reference]}})),
                "properties",
            )
            .unwrap();
            job(&j).map(|_| ()).map_err(|e| e.target.unwrap_or_default())
        };
        assert_eq!(
            check(json!({"fileServer": {"id": fs}, "relativeMountPath": "nfs", "sourceDirectory": "/a/b",
            "mountOptions": "ro"})),
            Ok(())
        );
        let base = "properties.mountVolumes.fileServers[0]";
        assert_eq!(
            check(json!({"fileServer": {"id": "nfs"}, "relativeMountPath": "n"})),
            Err(format!("{base}.fileServer.id"))
        );
        assert_eq!(
            check(json!({"fileServer": {"id": fs}, "relativeMountPath": "n", "sourceDirectory": "../x"})),
            Err(format!("{base}.sourceDirectory"))
        );
        assert_eq!(
            check(json!({"fileServer": {"id": fs}, "relativeMountPath": "n", "mountOptions": "a b"})),
            Err(format!("{base}.mountOptions"))
        );
        let m: MountVolumes = serde_json::from_value(json!({"fileServers": [{"fileServer": {"id": fs},
            "relativeMountPath": "n"}]}))
        .unwrap();
        assert_eq!(file_server_refs(Some(&m), "properties.mountVolumes."), vec![(fs, format!("{base}.fileServer.id"))]);
    }

    #[test]
    fn malformed_json_is_request_content_error() {
        let e = parse_json::<JobSpec>(b"{\"nodeCount\": ", "properties").unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidRequestContent);
        let e = parse_json::<Value>(b"{\"location\":\"eastus\"} x", "").unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidRequestContent, "trailing data");
    }

    #[test]
    fn arrays_are_not_objects() {
        let e = parse_json::<ScaleSettings>(br#"[{"targetNodeCount": 5}]"#, "properties.scaleSettings").unwrap_err();
        assert_eq!(e.target.as_deref(), Some("properties.scaleSettings"));
        let e = parse_json::<ScaleSettings>(br#"{"manual": [5]}"#, "properties.scaleSettings").unwrap_err();
        assert_eq!(e.target.as_deref(), Some("properties.scaleSettings.manual"));
        let ok = parse_json::<ScaleSettings>(br#"{"manual": {"targetNodeCount": 5}, "extra": [1]}"#, "").unwrap();
        assert_eq!(ok.manual.map(|m| m.target_node_count), Some(5));
    }
}
