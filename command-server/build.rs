//! `sqlx::migrate!` embeds `migrations/` at compile time; without this, a
//! migration added to the directory is missed until the crate rebuilds for
//! another reason.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
