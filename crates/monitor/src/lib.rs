//! monitor crate (to be filled in).
