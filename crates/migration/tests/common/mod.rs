pub mod disks;
pub mod guest;
