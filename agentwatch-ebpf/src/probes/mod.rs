//! The programs, one file per hook family; each is a thin entry that calls a fallible
//! `try_…` function.
pub mod aead;
pub mod block;
pub mod contact;
pub mod files;
pub mod gate;
pub mod golang;
pub mod process;
pub mod socket;
pub mod syscall;
pub mod tls;
