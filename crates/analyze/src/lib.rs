//! analyze crate (to be filled in).
