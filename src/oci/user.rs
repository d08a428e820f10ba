//! The identity the container process runs as: from the security context
//! or the image's `User`, resolved against the rootfs' /etc/passwd and /etc/group.

use std::io;
use std::path::Path;

use k8s_cri::v1::{LinuxContainerSecurityContext, SupplementalGroupsPolicy};
use oci_spec::image::ImageConfiguration;

use super::SpecError;

/// The resolved user; `additional_gids` starts with the primary gid, as containerd reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    /// The passwd name of `uid`, when the rootfs has one.
    pub username: Option<String>,
}

struct Passwd {
    name: String,
    uid: u32,
    gid: u32,
}

struct Group {
    name: String,
    gid: u32,
    members: Vec<String>,
}

pub fn resolve(
    rootfs: &Path,
    image: &ImageConfiguration,
    sc: &LinuxContainerSecurityContext,
) -> Result<Identity, SpecError> {
    // As containerd: a group alone would silently pair with the image's user.
    if sc.run_as_group.is_some() && sc.run_as_user.is_none() && sc.run_as_username.is_empty() {
        return Err(SpecError::User {
            user: String::new(),
            reason: "runAsGroup is set without runAsUser or runAsUsername".into(),
        });
    }
    let spec = if !sc.run_as_username.is_empty() {
        sc.run_as_username.clone()
    } else if let Some(u) = &sc.run_as_user {
        id("runAsUser", u.value)?.to_string()
    } else {
        image.config().as_ref().and_then(|c| c.user().clone()).unwrap_or_default()
    };
    let err = |reason: String| SpecError::User { user: spec.clone(), reason };
    let passwd = read_db(rootfs, "/etc/passwd", parse_passwd)?;
    let groups = read_db(rootfs, "/etc/group", parse_group)?;

    let (user_part, group_part) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec.as_str(), None),
    };
    let user_part = if user_part.is_empty() { "0" } else { user_part };
    let entry = match user_part.parse::<u32>() {
        Ok(uid) => passwd.iter().find(|p| p.uid == uid),
        Err(_) => Some(
            passwd
                .iter()
                .find(|p| p.name == user_part)
                .ok_or_else(|| err(format!("no user {user_part:?} in the image's /etc/passwd")))?,
        ),
    };
    let uid = match entry {
        Some(p) => p.uid,
        None => user_part.parse::<u32>().map_err(|e| err(e.to_string()))?,
    };
    let mut gid = match group_part.filter(|g| !g.is_empty()) {
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => {
                groups
                    .iter()
                    .find(|gr| gr.name == g)
                    .ok_or_else(|| err(format!("no group {g:?} in the image's /etc/group")))?
                    .gid
            }
        },
        None => entry.map(|p| p.gid).unwrap_or(0),
    };
    if let Some(g) = &sc.run_as_group {
        gid = id("runAsGroup", g.value)?;
    }

    let mut additional = vec![gid];
    let strict = sc.supplemental_groups_policy == SupplementalGroupsPolicy::Strict as i32;
    if let (false, Some(p)) = (strict, entry) {
        additional.extend(groups.iter().filter(|g| g.members.contains(&p.name)).map(|g| g.gid));
    }
    for g in &sc.supplemental_groups {
        additional.push(id("supplementalGroups", *g)?);
    }
    let mut seen = std::collections::HashSet::new();
    additional.retain(|g| seen.insert(*g));
    Ok(Identity { uid, gid, additional_gids: additional, username: entry.map(|p| p.name.clone()) })
}

fn id(field: &str, value: i64) -> Result<u32, SpecError> {
    u32::try_from(value)
        .ok()
        .filter(|v| *v != u32::MAX)
        .ok_or_else(|| SpecError::User { user: value.to_string(), reason: format!("{field} is out of range") })
}

fn read_db<T>(rootfs: &Path, path: &str, parse: fn(&str) -> Option<T>) -> Result<Vec<T>, SpecError> {
    let host = crate::rootpath::resolve_in_root(rootfs, Path::new(path))
        .map_err(|e| SpecError::io(format!("resolving {path}"), e))?;
    match std::fs::read(&host) {
        Ok(bytes) => Ok(String::from_utf8_lossy(&bytes).lines().filter_map(parse).collect()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(SpecError::io(format!("reading {}", host.display()), e)),
    }
}

fn parse_passwd(line: &str) -> Option<Passwd> {
    let f: Vec<&str> = line.split(':').collect();
    if f.len() < 4 || f[0].is_empty() || f[0].starts_with('#') {
        return None;
    }
    Some(Passwd { name: f[0].to_string(), uid: f[2].parse().ok()?, gid: f[3].parse().ok()? })
}

fn parse_group(line: &str) -> Option<Group> {
    let f: Vec<&str> = line.split(':').collect();
    if f.len() < 3 || f[0].is_empty() || f[0].starts_with('#') {
        return None;
    }
    let members = f.get(3).map(|m| m.split(',').filter(|s| !s.is_empty()).map(str::to_string).collect());
    Some(Group { name: f[0].to_string(), gid: f[2].parse().ok()?, members: members.unwrap_or_default() })
}
