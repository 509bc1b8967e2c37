//! The registry of migratable state, QEMU's `savevm_state.handlers` list: every entry has a
//! section id (assigned at registration, stable per VM layout), an idstr, an instance id and a
//! version. The source walks it in order in every phase; the destination finds entries by
//! (idstr, instance id) and binds the section ids it reads to them.

use crate::capabilities::Capabilities;
use crate::handler::{DeviceState, LiveHandler};

/// What an entry migrates.
pub enum EntryKind {
    /// Iterative state (START/PART/END sections).
    Live(Box<dyn LiveHandler>),
    /// Device state (one FULL section).
    Device(Box<dyn DeviceState>),
}

/// One registered entry.
pub struct SaveStateEntry {
    /// Section id written by the source.
    pub section_id: u32,
    /// Section idstr.
    pub idstr: String,
    /// Instance id.
    pub instance_id: u32,
    /// Version written / newest accepted.
    pub version_id: u32,
    /// The state.
    pub kind: EntryKind,
    /// Section id the current incoming stream bound to this entry.
    pub load_section_id: Option<u32>,
}

/// The ordered list of entries.
#[derive(Default)]
pub struct Registry {
    entries: Vec<SaveStateEntry>,
    next_section_id: u32,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<_> = self
            .entries
            .iter()
            .map(|e| (&e.idstr, e.instance_id))
            .collect();
        f.debug_struct("Registry").field("entries", &names).finish()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    fn next_instance(&self, idstr: &str) -> u32 {
        self.entries
            .iter()
            .filter(|e| e.idstr == idstr)
            .map(|e| e.instance_id + 1)
            .max()
            .unwrap_or(0)
    }

    fn push(&mut self, idstr: String, instance_id: Option<u32>, version_id: u32, kind: EntryKind) {
        let instance_id = instance_id.unwrap_or_else(|| self.next_instance(&idstr));
        self.entries.push(SaveStateEntry {
            section_id: self.next_section_id,
            idstr,
            instance_id,
            version_id,
            kind,
            load_section_id: None,
        });
        self.next_section_id += 1;
    }

    /// Registers a live handler (instance 0).
    pub fn register_live(&mut self, handler: Box<dyn LiveHandler>) {
        let (idstr, version) = (handler.idstr().to_string(), handler.version_id());
        self.push(idstr, Some(0), version, EntryKind::Live(handler));
    }

    /// Registers a device; `instance_id` None picks the next free instance for that idstr.
    pub fn register_device(
        &mut self,
        idstr: &str,
        instance_id: Option<u32>,
        dev: Box<dyn DeviceState>,
    ) {
        let version = dev.description().version_id;
        self.push(
            idstr.to_string(),
            instance_id,
            version,
            EntryKind::Device(dev),
        );
    }

    /// Entries in registration order.
    pub fn entries(&self) -> &[SaveStateEntry] {
        &self.entries
    }

    /// Mutable entries in registration order.
    pub fn entries_mut(&mut self) -> &mut [SaveStateEntry] {
        &mut self.entries
    }

    /// The live handlers active under `caps`, with their section ids, in order.
    pub(crate) fn active_live<'a>(
        &'a self,
        caps: &'a Capabilities,
    ) -> impl Iterator<Item = (u32, &'a dyn LiveHandler)> + 'a {
        self.entries.iter().filter_map(move |e| match &e.kind {
            EntryKind::Live(h) if h.is_active(caps) => Some((e.section_id, h.as_ref())),
            _ => None,
        })
    }

    /// [`active_live`](Self::active_live), mutable; takes its own `caps`, so the caller's
    /// session stays free for the handlers' calls.
    pub(crate) fn active_live_mut(
        &mut self,
        caps: Capabilities,
    ) -> impl Iterator<Item = (u32, &mut Box<dyn LiveHandler>)> + '_ {
        self.entries
            .iter_mut()
            .filter_map(move |e| match &mut e.kind {
                EntryKind::Live(h) if h.is_active(&caps) => Some((e.section_id, h)),
                _ => None,
            })
    }

    /// Finds an entry by idstr and instance id.
    pub fn find_mut(&mut self, idstr: &str, instance_id: u32) -> Option<&mut SaveStateEntry> {
        self.entries
            .iter_mut()
            .find(|e| e.idstr == idstr && e.instance_id == instance_id)
    }

    /// Finds the entry an incoming section id was bound to.
    pub fn find_by_load_id(&mut self, id: u32) -> Option<&mut SaveStateEntry> {
        self.entries
            .iter_mut()
            .find(|e| e.load_section_id == Some(id))
    }

    /// Forgets incoming section-id bindings (before loading a new stream).
    pub fn reset_load_ids(&mut self) {
        for e in &mut self.entries {
            e.load_section_id = None;
        }
    }
}
