//! `docker run -u`: a user spec (`name`, `uid`, `name:group`, `uid:gid`)
//! resolved against the image's `/etc/passwd` and `/etc/group` as dockerd
//! does, with the user's supplementary groups and home. Pure: takes the
//! files' contents.

use super::spec::ProcessUser;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecUser {
    pub user: ProcessUser,
    pub home: String,
}

struct Passwd<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

struct Group<'a> {
    name: &'a str,
    gid: u32,
    members: Vec<&'a str>,
}

fn passwd_entries(text: &str) -> impl Iterator<Item = Passwd<'_>> {
    text.lines().filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() < 7 || l.trim_start().starts_with('#') {
            return None;
        }
        Some(Passwd {
            name: f[0],
            uid: f[2].parse().ok()?,
            gid: f[3].parse().ok()?,
            home: f[5],
        })
    })
}

fn group_entries(text: &str) -> impl Iterator<Item = Group<'_>> {
    text.lines().filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() < 4 || l.trim_start().starts_with('#') {
            return None;
        }
        Some(Group {
            name: f[0],
            gid: f[2].parse().ok()?,
            members: f[3].split(',').filter(|m| !m.is_empty()).collect(),
        })
    })
}

/// Resolves `spec` (empty means root) against `passwd` and `group`.
pub fn resolve(spec: &str, passwd: &str, group: &str) -> Result<ExecUser, String> {
    let (u, g) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let mut out = ExecUser {
        user: ProcessUser::default(),
        home: "/".to_owned(),
    };
    let mut name = None;
    if u.is_empty() {
        if let Some(p) = passwd_entries(passwd).find(|p| p.uid == 0) {
            out.home = p.home.to_owned();
            name = Some(p.name);
        }
    } else if let Ok(uid) = u.parse::<u32>() {
        out.user.uid = uid;
        if let Some(p) = passwd_entries(passwd).find(|p| p.uid == uid) {
            out.user.gid = p.gid;
            out.home = p.home.to_owned();
            name = Some(p.name);
        }
    } else {
        let p = passwd_entries(passwd)
            .find(|p| p.name == u)
            .ok_or_else(|| {
                format!("unable to find user {u}: no matching entries in passwd file")
            })?;
        out.user.uid = p.uid;
        out.user.gid = p.gid;
        out.home = p.home.to_owned();
        name = Some(p.name);
    }
    match g {
        Some("") | None => {}
        Some(g) => {
            if let Ok(gid) = g.parse::<u32>() {
                out.user.gid = gid;
            } else {
                out.user.gid = group_entries(group)
                    .find(|e| e.name == g)
                    .map(|e| e.gid)
                    .ok_or_else(|| {
                        format!("unable to find group {g}: no matching entries in group file")
                    })?;
            }
        }
    }
    if let Some(name) = name {
        let mut extra: Vec<u32> = group_entries(group)
            .filter(|e| e.members.contains(&name) && e.gid != out.user.gid)
            .map(|e| e.gid)
            .collect();
        extra.sort_unstable();
        extra.dedup();
        out.user.additional_gids = extra;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
        nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n\
        www-data:x:33:33:www-data:/var/www:/usr/sbin/nologin\n";
    const GROUP: &str = "root:x:0:\nnogroup:x:65534:\nwww-data:x:33:\nadm:x:4:www-data\n";

    #[test]
    fn names_numbers_and_groups() {
        let r = resolve("", PASSWD, GROUP).expect("root");
        assert_eq!((r.user.uid, r.user.gid, r.home.as_str()), (0, 0, "/root"));
        let r = resolve("www-data", PASSWD, GROUP).expect("name");
        assert_eq!((r.user.uid, r.user.gid), (33, 33));
        assert_eq!(r.user.additional_gids, vec![4]);
        let r = resolve("1234:5678", PASSWD, GROUP).expect("numbers");
        assert_eq!((r.user.uid, r.user.gid, r.home.as_str()), (1234, 5678, "/"));
        let r = resolve("nobody:nogroup", PASSWD, GROUP).expect("group name");
        assert_eq!(r.user.gid, 65534);
        assert_eq!(
            resolve("ghost", PASSWD, GROUP),
            Err("unable to find user ghost: no matching entries in passwd file".to_owned())
        );
        assert!(resolve("root:ghosts", PASSWD, GROUP).is_err());
        assert_eq!(resolve("33", "", "").expect("no files").user.uid, 33);
    }
}
