//! [`FdSets`]: QEMU's file-descriptor sets behind `add-fd`, `remove-fd` and `query-fdsets`.
//!
//! Unlike `getfd` names (per connection, [`crate::fds::FdTable`]), fd sets belong to the
//! process (the backend owns them): a manager adds descriptors on one connection and QEMU
//! lets block devices and character devices open them as `/dev/fdset/N`. livemig opens no
//! such path from the monitor (its disks are given on the command line, and QEMU 7.2's
//! migration URIs take no fd-set paths), so here the sets are kept, listed and removed with
//! QEMU's semantics and texts, for managers that pass descriptors this way.
//!
//! ```text
//!  sendmsg({"execute":"add-fd","arguments":{"fdset-id":1}}, SCM_RIGHTS=[fd])
//!    → {"return": {"fdset-id": 1, "fd": 23}}        23: the descriptor number in livemig
//!  {"execute":"query-fdsets"} → [{"fdset-id": 1, "fds": [{"fd": 23}]}]
//!  {"execute":"remove-fd","arguments":{"fdset-id":1}} → closes 23, forgets set 1
//! ```
//! Sets and descriptors are bounded so a client cannot make the monitor hoard descriptors.

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Mutex, MutexGuard};

use serde_json::{json, Value};

use crate::backend::CommandError;

/// Descriptors kept in all sets together.
pub const MAX_FDSET_FDS: usize = 256;

#[derive(Debug)]
struct SetFd {
    fd: OwnedFd,
    opaque: Option<String>,
}

/// The process's fd sets (QEMU's `mon_fdsets`), ordered by id.
#[derive(Debug, Default)]
pub struct FdSets {
    sets: Mutex<BTreeMap<i64, Vec<SetFd>>>,
}

impl FdSets {
    /// No sets.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<i64, Vec<SetFd>>> {
        self.sets.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `add-fd`: adds `fd` to set `fdset_id` (created if needed) or to a new set with the
    /// lowest free id; returns the set id and the descriptor's number.
    pub fn add(
        &self,
        fd: OwnedFd,
        fdset_id: Option<i64>,
        opaque: Option<String>,
    ) -> Result<(i64, i32), CommandError> {
        let mut sets = self.lock();
        if fdset_id.is_some_and(|id| id < 0) {
            return Err(CommandError::generic(
                "Parameter 'fdset-id' expects a non-negative value",
            ));
        }
        if sets.values().map(Vec::len).sum::<usize>() >= MAX_FDSET_FDS {
            return Err(CommandError::generic(format!(
                "Too many descriptors in fd sets (at most {MAX_FDSET_FDS})"
            )));
        }
        let id = fdset_id.unwrap_or_else(|| {
            // The first gap in the ids, counting from 0.
            let mut next = 0;
            for &k in sets.keys() {
                if k != next {
                    break;
                }
                next += 1;
            }
            next
        });
        let raw = fd.as_raw_fd();
        sets.entry(id).or_default().push(SetFd { fd, opaque });
        Ok((id, raw))
    }

    /// `remove-fd`: closes descriptor `fd` of set `fdset_id`, or the whole set; an empty set
    /// disappears.
    pub fn remove(&self, fdset_id: i64, fd: Option<i64>) -> Result<(), CommandError> {
        let mut sets = self.lock();
        let not_found = || {
            let name = match fd {
                Some(fd) => format!("fdset-id:{fdset_id}, fd:{fd}"),
                None => format!("fdset-id:{fdset_id}"),
            };
            CommandError::generic(format!("File descriptor named '{name}' not found"))
        };
        let set = sets.get_mut(&fdset_id).ok_or_else(not_found)?;
        match fd {
            Some(fd) => {
                let i = set
                    .iter()
                    .position(|f| i64::from(f.fd.as_raw_fd()) == fd)
                    .ok_or_else(not_found)?;
                set.remove(i);
            }
            None => set.clear(),
        }
        if set.is_empty() {
            sets.remove(&fdset_id);
        }
        Ok(())
    }

    /// The `query-fdsets` reply (QEMU lists the sets from the highest id down).
    pub fn query(&self) -> Value {
        let sets = self.lock();
        let list: Vec<Value> = sets
            .iter()
            .rev()
            .map(|(id, fds)| {
                let fds: Vec<Value> = fds
                    .iter()
                    .map(|f| match &f.opaque {
                        Some(o) => json!({"fd": f.fd.as_raw_fd(), "opaque": o}),
                        None => json!({"fd": f.fd.as_raw_fd()}),
                    })
                    .collect();
                json!({"fdset-id": id, "fds": fds})
            })
            .collect();
        Value::Array(list)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file() -> OwnedFd {
        tempfile::tempfile().unwrap().into()
    }

    #[test]
    fn ids_fill_gaps_and_remove_forgets_empty_sets() {
        let s = FdSets::new();
        assert_eq!(s.add(file(), None, None).unwrap().0, 0);
        assert_eq!(s.add(file(), Some(2), Some("x".into())).unwrap().0, 2);
        assert_eq!(s.add(file(), None, None).unwrap().0, 1);
        let (_, fd) = s.add(file(), Some(2), None).unwrap();
        assert_eq!(
            s.add(file(), Some(-1), None).unwrap_err().desc,
            "Parameter 'fdset-id' expects a non-negative value"
        );
        let q = s.query();
        assert_eq!(q[0]["fdset-id"], 2);
        assert_eq!(q[0]["fds"][0]["opaque"], "x");
        s.remove(2, Some(fd.into())).unwrap();
        assert_eq!(
            s.remove(2, Some(fd.into())).unwrap_err().desc,
            format!("File descriptor named 'fdset-id:2, fd:{fd}' not found")
        );
        s.remove(2, None).unwrap();
        assert_eq!(
            s.remove(2, None).unwrap_err().desc,
            "File descriptor named 'fdset-id:2' not found"
        );
        assert_eq!(s.query().as_array().unwrap().len(), 2);
    }
}
