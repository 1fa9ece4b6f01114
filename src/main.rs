use std::process::ExitCode;

// jemalloc: no per-allocation header and finer size classes than glibc's malloc, which counts
// for the many small, long-lived objects of the caches (docs/design.md, Scale).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

// Freed pages go back to the system at once instead of after jemalloc's default 10 s: a burst of
// reconciles leaves megabytes of transient status patches and Events behind, which otherwise
// stay resident (8 MiB of 72 at 11,000 AccessKeys, docs/design.md, Scale). `_RJEM_MALLOC_CONF` in the
// environment still overrides it. A thin pointer to a C string, as jemalloc reads it.
#[export_name = "_rjem_malloc_conf"]
pub static MALLOC_CONF: &[u8; 34] = b"dirty_decay_ms:0,muzzy_decay_ms:0\0";

#[tokio::main]
async fn main() -> ExitCode {
    cloudkeys::runtime::command_line::cloudkeys().await
}
