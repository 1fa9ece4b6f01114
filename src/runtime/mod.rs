//! The process: `cloudkeys run`'s flags, the kube client, leader election, the watches that feed
//! the caches, the three controllers and what triggers what, the HTTP server.

pub mod client;
pub mod installation;
pub mod rollouts;
pub mod run;
pub mod run_args;
pub mod unreadable;
pub mod watch;
