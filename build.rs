//! Rebuilds when a migration changes: `sqlx::migrate!()` embeds the
//! `migrations/<backend>/` folders but cannot tell cargo to watch them on
//! stable Rust (cargo watches a directory's whole tree).
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
