pub mod disks;
