//! Rebuilds when a migration changes: `sqlx::migrate!()` embeds the
//! `migrations/` folder but cannot tell cargo to watch it on stable Rust.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
