//! The process: the binaries' command line, `cloudkeys run`'s flags, the kube client, leader election, the watches that feed
//! the caches, the three controllers and what triggers what, the HTTP server.

pub mod client;
pub mod command_line;
pub mod installation;
pub mod rollouts;
pub mod run;
pub mod run_args;
pub mod unreadable;
pub mod watch;
