//! `--user` and `--group`: a server started as root, to bind low ports and read its key,
//! goes on as an unprivileged user once its sockets are bound.

use std::ffi::CString;

use anyhow::Context;
use nix::unistd::{Gid, Group, Uid, User};

/// Who the server becomes.
pub struct Identity {
    uid: Uid,
    gid: Gid,
    /// For the supplementary groups; `None` for a uid that names no user.
    user: Option<String>,
    described: String,
}

impl Identity {
    /// Looks up `user` and `group`, each a name or a number; without a group, the user's
    /// own. `None` when neither is given.
    pub fn resolve(user: Option<&str>, group: Option<&str>) -> anyhow::Result<Option<Identity>> {
        if user.is_none() && group.is_none() {
            return Ok(None);
        }
        let account = match user {
            Some(user) => Some(lookup_user(user)?),
            None => None,
        };
        let gid = match (group, &account) {
            (Some(group), _) => lookup_group(group)?,
            (None, Some((_, Some(account)))) => account.gid,
            // Keeping the group it started with would keep root's.
            (None, Some((uid, None))) => {
                anyhow::bail!("--user {uid} names no account, so it has no group: give --group too")
            }
            (None, None) => Gid::effective(),
        };
        let uid = account
            .as_ref()
            .map_or_else(Uid::effective, |(uid, _)| *uid);
        let name = account
            .as_ref()
            .and_then(|(_, account)| account.as_ref())
            .map(|account| account.name.clone());
        let described = format!(
            "user {} (uid {uid}), group {gid}",
            name.as_deref().unwrap_or("-")
        );
        Ok(Some(Identity {
            uid,
            gid,
            user: name,
            described,
        }))
    }

    pub fn uid(&self) -> Uid {
        self.uid
    }

    pub fn gid(&self) -> Gid {
        self.gid
    }

    /// Becomes this user and group, for every thread of the process, and gives up the
    /// supplementary groups root had. Only root can; a server already running as them has
    /// nothing to do.
    pub fn assume(&self) -> anyhow::Result<()> {
        if Uid::effective() == self.uid && Gid::effective() == self.gid {
            return Ok(());
        }
        if !Uid::effective().is_root() {
            anyhow::bail!(
                "--user/--group: only a server started as root can become {}; this one runs as uid {}",
                self.described,
                Uid::effective()
            );
        }
        match &self.user {
            Some(name) => {
                let name = CString::new(name.as_str()).context("a user name with a NUL")?;
                nix::unistd::initgroups(&name, self.gid)
            }
            None => nix::unistd::setgroups(&[self.gid]),
        }
        .context("cannot set the supplementary groups")?;
        // The group first: once the user is not root, it could not change.
        nix::unistd::setgid(self.gid).context("cannot change the group")?;
        nix::unistd::setuid(self.uid).context("cannot change the user")?;
        // As OpenSSH does: a drop that could be undone did not happen.
        if !self.uid.is_root() && nix::unistd::setuid(Uid::from_raw(0)).is_ok() {
            anyhow::bail!("still able to become root after changing user");
        }
        tracing::info!("running as {}", self.described);
        Ok(())
    }
}

/// A user by name or number: its uid, and its account if it has one.
fn lookup_user(user: &str) -> anyhow::Result<(Uid, Option<User>)> {
    if let Ok(number) = user.parse::<u32>() {
        let uid = Uid::from_raw(number);
        let account = User::from_uid(uid).ok().flatten();
        return Ok((uid, account));
    }
    let account = User::from_name(user)
        .with_context(|| format!("cannot look up user {user:?}"))?
        .ok_or_else(|| anyhow::anyhow!("--user: no user {user:?} on this system"))?;
    Ok((account.uid, Some(account)))
}

fn lookup_group(group: &str) -> anyhow::Result<Gid> {
    if let Ok(number) = group.parse::<u32>() {
        return Ok(Gid::from_raw(number));
    }
    let account = Group::from_name(group)
        .with_context(|| format!("cannot look up group {group:?}"))?
        .ok_or_else(|| anyhow::anyhow!("--group: no group {group:?} on this system"))?;
    Ok(account.gid)
}
